//! Optional readiness report on this node's Node object: a label, an annotation, and
//! removal (or re-addition) of a NoSchedule readiness taint.

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

pub const STATUS_ANNOTATION: &str = "afs.csi.auristor.com/kmod-status";
const FIELD_MANAGER: &str = "kmod-manager";

/// Taints after the change (pure): without `key` when ready, with a NoSchedule `key`
/// taint otherwise. Other taints are kept in order.
pub fn desired_taints(current: &[Taint], key: &str, ready: bool) -> Vec<Taint> {
    let mut out: Vec<Taint> = current.iter().filter(|t| t.key != key).cloned().collect();
    if !ready {
        out.push(Taint {
            key: key.to_owned(),
            effect: "NoSchedule".to_owned(),
            value: None,
            time_added: None,
        });
    }
    out
}

#[derive(Clone)]
pub struct NodeReporter {
    api: Api<Node>,
    node: String,
    label: String,
    taint: String,
}

impl std::fmt::Debug for NodeReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeReporter")
            .field("node", &self.node)
            .field("label", &self.label)
            .field("taint", &self.taint)
            .finish()
    }
}

impl NodeReporter {
    pub fn new(client: kube::Client, node: String, label: String, taint: String) -> Self {
        Self {
            api: Api::all(client),
            node,
            label,
            taint,
        }
    }

    /// `None` (with a log line) when no kubeconfig / in-cluster config is available.
    pub async fn connect(node: String, label: String, taint: String) -> Option<Self> {
        let config = match kube::Config::infer().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "no kubeconfig or in-cluster config; node readiness not reported");
                return None;
            }
        };
        match kube::Client::try_from(config) {
            Ok(client) => Some(Self::new(client, node, label, taint)),
            Err(e) => {
                warn!(error = %e, "cannot build a Kubernetes client; node readiness not reported");
                None
            }
        }
    }

    /// Sets the label/annotation and the taint; retries on write conflicts.
    pub async fn report(&self, ready: bool, detail: &str) -> Result<(), kube::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let node = self.api.get(&self.node).await?;
            let current = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let taints = desired_taints(&current, &self.taint, ready);
            let patch = json!({
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "labels": { &self.label: if ready { "true" } else { "false" } },
                    "annotations": { STATUS_ANNOTATION: detail },
                },
                "spec": { "taints": taints },
            });
            match self
                .api
                .patch(
                    &self.node,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    info!(node = %self.node, ready, "node readiness reported");
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use std::time::Duration;

    fn node_json(rv: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": rv, "labels": {"keep": "me"}},
            "spec": {"taints": [
                {"key": "afs.csi.auristor.com/kmod-not-ready", "effect": "NoSchedule"},
                {"key": "other", "effect": "NoExecute"}
            ]}
        }))
        .expect("json")
    }

    fn respond(status: StatusCode, body: Vec<u8>) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("response")
    }

    /// Scripted API server: GET, PATCH -> 409 (someone else wrote), GET, PATCH -> 200.
    #[tokio::test]
    async fn reports_ready_removes_taint_and_retries_conflicts() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let reporter = NodeReporter::new(
            kube::Client::new(svc, "default"),
            "n1".into(),
            "afs.csi.auristor.com/kmod-ready".into(),
            "afs.csi.auristor.com/kmod-not-ready".into(),
        );
        let server = tokio::spawn(async move {
            for (rv, status) in [("7", StatusCode::CONFLICT), ("8", StatusCode::OK)] {
                let (req, send) = handle.next_request().await.expect("GET");
                assert_eq!(req.method(), Method::GET);
                assert_eq!(req.uri().path(), "/api/v1/nodes/n1");
                send.send_response(respond(StatusCode::OK, node_json(rv)));
                let (req, send) = handle.next_request().await.expect("PATCH");
                assert_eq!(req.method(), Method::PATCH);
                assert_eq!(
                    req.headers().get("content-type").map(|v| v.as_bytes()),
                    Some(&b"application/merge-patch+json"[..])
                );
                let body = req.into_body().collect_bytes().await.expect("body");
                let v: serde_json::Value = serde_json::from_slice(&body).expect("patch json");
                assert_eq!(
                    v["metadata"]["resourceVersion"], rv,
                    "optimistic concurrency"
                );
                assert_eq!(
                    v["metadata"]["labels"]["afs.csi.auristor.com/kmod-ready"],
                    "true"
                );
                assert_eq!(
                    v["metadata"]["annotations"][STATUS_ANNOTATION],
                    "kafs loaded"
                );
                assert_eq!(
                    v["spec"]["taints"],
                    json!([{"key": "other", "effect": "NoExecute"}])
                );
                let reply = if status == StatusCode::CONFLICT {
                    serde_json::to_vec(&json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "the object has been modified", "reason": "Conflict", "code": 409
                    }))
                    .expect("json")
                } else {
                    node_json("9")
                };
                send.send_response(respond(status, reply));
            }
        });
        tokio::time::timeout(Duration::from_secs(1), reporter.report(true, "kafs loaded"))
            .await
            .expect("no timeout")
            .expect("reported");
        server.await.expect("mock server assertions");
    }

    fn t(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        }
    }

    #[test]
    fn taints() {
        let cur = [t("a"), t("k"), t("node.kubernetes.io/unschedulable")];
        let ready = desired_taints(&cur, "k", true);
        assert_eq!(
            ready.iter().map(|x| x.key.as_str()).collect::<Vec<_>>(),
            ["a", "node.kubernetes.io/unschedulable"]
        );
        let not_ready = desired_taints(&ready, "k", false);
        assert_eq!(not_ready.len(), 3);
        assert_eq!(
            desired_taints(&not_ready, "k", false).len(),
            3,
            "idempotent"
        );
    }
}
