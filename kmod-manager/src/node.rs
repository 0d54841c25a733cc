//! Optional readiness report on this node's Node object: a label, an annotation, and
//! removal (or re-addition) of a NoSchedule readiness taint; and, while the daemon
//! serves, usage annotations (published CSI volumes, what keeps the module in use)
//! written only when they change.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{info, warn};

use crate::guard::Usage;

pub const STATUS_ANNOTATION: &str = "afs.csi.auristor.com/kmod-status";
/// Number of published (mounted) CSI targets of our driver on the node, in decimal.
pub const PUBLISHED_VOLUMES_ANNOTATION: &str = "afs.csi.auristor.com/published-volumes";
/// What keeps the module in use, for humans: `no`, or e.g. `2 CSI targets, 1 mount, refcount 3`.
pub const IN_USE_ANNOTATION: &str = "afs.csi.auristor.com/kmod-in-use";
const FIELD_MANAGER: &str = "kmod-manager";

/// The usage annotations and their values (pure).
pub fn usage_annotations(usage: &Usage) -> [(&'static str, String); 2] {
    [
        (PUBLISHED_VOLUMES_ANNOTATION, usage.csi_targets.to_string()),
        (IN_USE_ANNOTATION, usage.to_string()),
    ]
}

/// The merge patch of the usage annotations whose value differs from what was last
/// written (pure): `None` when nothing changed. With `last == None` (nothing known to
/// be written) every usage annotation is in the patch.
pub fn usage_patch(last: Option<&Usage>, now: &Usage) -> Option<Value> {
    let old = last.map(usage_annotations);
    let mut changed = serde_json::Map::new();
    for (i, (key, value)) in usage_annotations(now).into_iter().enumerate() {
        if old.as_ref().is_none_or(|old| old[i].1 != value) {
            changed.insert(key.to_owned(), Value::String(value));
        }
    }
    (!changed.is_empty()).then(|| json!({ "metadata": { "annotations": changed } }))
}

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

    /// Sets the label, the status annotation, the usage annotations and the taint;
    /// retries on write conflicts. With `usage == None` (unknown) the usage annotations
    /// are removed rather than left stale.
    pub async fn report(
        &self,
        ready: bool,
        detail: &str,
        usage: Option<&Usage>,
    ) -> Result<(), kube::Error> {
        let mut annotations = serde_json::Map::new();
        annotations.insert(STATUS_ANNOTATION.to_owned(), detail.into());
        match usage {
            Some(u) => annotations.extend(
                usage_annotations(u)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Value::String(v))),
            ),
            None => annotations.extend(
                [PUBLISHED_VOLUMES_ANNOTATION, IN_USE_ANNOTATION]
                    .map(|k| (k.to_owned(), Value::Null)),
            ),
        }
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
                    "annotations": annotations,
                },
                "spec": { "taints": taints },
            });
            match self.merge_patch(&patch).await {
                Ok(()) => {
                    info!(node = %self.node, ready, "node readiness reported");
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn merge_patch(&self, patch: &serde_json::Value) -> Result<(), kube::Error> {
        self.api
            .patch(
                &self.node,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Merge(patch),
            )
            .await
            .map(drop)
    }

    /// Until `stop` turns true (or its sender is gone): every `interval`, `observe` the
    /// usage and write the usage annotations that differ from `last` (what the Node is
    /// known to carry). Nothing is written while nothing changes. A failed observation
    /// (`None`) or write is logged and retried at the next tick; never fatal. Returns
    /// promptly on stop, even in the middle of an observation or a write, with what
    /// was last written.
    pub async fn watch_usage<F, Fut>(
        &self,
        mut last: Option<Usage>,
        interval: Duration,
        mut observe: F,
        mut stop: watch::Receiver<bool>,
    ) -> Option<Usage>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<Usage>>,
    {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let stopped = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => true,
                () = self.usage_round(&mut ticks, &mut last, &mut observe) => false,
            };
            if stopped {
                return last;
            }
        }
    }

    async fn usage_round<F, Fut>(
        &self,
        ticks: &mut Interval,
        last: &mut Option<Usage>,
        observe: &mut F,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<Usage>>,
    {
        ticks.tick().await;
        let Some(now) = observe().await else {
            return;
        };
        let Some(patch) = usage_patch(last.as_ref(), &now) else {
            return;
        };
        match self.merge_patch(&patch).await {
            Ok(()) => {
                info!(node = %self.node, published_volumes = now.csi_targets, in_use = %now, "node usage annotations updated");
                *last = Some(now);
            }
            Err(e) => {
                warn!(node = %self.node, error = %e, "node usage annotations not updated; retrying at the next check");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::ModuleUse;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn usage(csi_targets: usize, mounts: usize, refcount: i64) -> Usage {
        Usage {
            module: ModuleUse::Loaded {
                refcount,
                holders: vec![],
            },
            csi_targets,
            mounts,
        }
    }

    fn reporter(svc: tower_test::mock::Mock<Request<Body>, Response<Body>>) -> NodeReporter {
        NodeReporter::new(
            kube::Client::new(svc, "default"),
            "n1".into(),
            "afs.csi.auristor.com/kmod-ready".into(),
            "afs.csi.auristor.com/kmod-not-ready".into(),
        )
    }

    fn status_body(code: u16, reason: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": reason, "reason": reason, "code": code
        }))
        .expect("json")
    }

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
        let reporter = reporter(svc);
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
                    v["metadata"]["annotations"],
                    json!({
                        STATUS_ANNOTATION: "kafs loaded",
                        PUBLISHED_VOLUMES_ANNOTATION: "2",
                        IN_USE_ANNOTATION: "2 CSI targets, 3 mounts, refcount 4",
                    })
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
        tokio::time::timeout(
            Duration::from_secs(1),
            reporter.report(true, "kafs loaded", Some(&usage(2, 3, 4))),
        )
        .await
        .expect("no timeout")
        .expect("reported");
        server.await.expect("mock server assertions");
    }

    /// Unknown usage at a report: the usage annotations are removed, not left stale.
    #[tokio::test]
    async fn report_without_usage_removes_usage_annotations() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let reporter = reporter(svc);
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("GET");
            send.send_response(respond(StatusCode::OK, node_json("7")));
            let (req, send) = handle.next_request().await.expect("PATCH");
            let body = req.into_body().collect_bytes().await.expect("body");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("patch json");
            assert_eq!(
                v["metadata"]["annotations"],
                json!({
                    STATUS_ANNOTATION: "kafs kept: in use",
                    PUBLISHED_VOLUMES_ANNOTATION: null,
                    IN_USE_ANNOTATION: null,
                })
            );
            assert_eq!(
                v["metadata"]["labels"]["afs.csi.auristor.com/kmod-ready"],
                "false"
            );
            send.send_response(respond(StatusCode::OK, node_json("8")));
        });
        tokio::time::timeout(
            Duration::from_secs(1),
            reporter.report(false, "kafs kept: in use", None),
        )
        .await
        .expect("no timeout")
        .expect("reported");
        server.await.expect("mock server assertions");
    }

    #[test]
    fn usage_patch_only_on_change() {
        let idle = usage(0, 0, 0);
        let busy = usage(2, 1, 3);
        // Nothing known on the Node: everything is written.
        assert_eq!(
            usage_patch(None, &idle),
            Some(json!({"metadata": {"annotations": {
                PUBLISHED_VOLUMES_ANNOTATION: "0",
                IN_USE_ANNOTATION: "no",
            }}}))
        );
        // Steady state: nothing.
        assert_eq!(usage_patch(Some(&idle), &idle), None);
        assert_eq!(usage_patch(Some(&busy), &busy.clone()), None);
        // A volume published: both values change.
        assert_eq!(
            usage_patch(Some(&idle), &busy),
            Some(json!({"metadata": {"annotations": {
                PUBLISHED_VOLUMES_ANNOTATION: "2",
                IN_USE_ANNOTATION: "2 CSI targets, 1 mount, refcount 3",
            }}}))
        );
        // Only the refcount moved: only the summary is written.
        assert_eq!(
            usage_patch(Some(&busy), &usage(2, 1, 4)),
            Some(json!({"metadata": {"annotations": {
                IN_USE_ANNOTATION: "2 CSI targets, 1 mount, refcount 4",
            }}}))
        );
        // Back to idle.
        assert_eq!(
            usage_patch(Some(&busy), &idle),
            Some(json!({"metadata": {"annotations": {
                PUBLISHED_VOLUMES_ANNOTATION: "0",
                IN_USE_ANNOTATION: "no",
            }}}))
        );
    }

    /// Requests the mock API server received: method, path, JSON body.
    type Seen = Arc<Mutex<Vec<(Method, String, serde_json::Value)>>>;

    /// Records every request; PATCHes are answered with the scripted statuses in turn.
    fn recording_server(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        statuses: Vec<StatusCode>,
    ) -> (Seen, tokio::task::JoinHandle<()>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = tokio::spawn(async move {
            let mut statuses = statuses.into_iter();
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().clone();
                let path = req.uri().path().to_owned();
                assert_eq!(
                    req.headers().get("content-type").map(|v| v.as_bytes()),
                    Some(&b"application/merge-patch+json"[..])
                );
                let body = req.into_body().collect_bytes().await.expect("body");
                let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                log.lock().expect("lock").push((method, path, v));
                let status = statuses.next().unwrap_or(StatusCode::OK);
                let reply = if status.is_success() {
                    node_json("9")
                } else {
                    status_body(status.as_u16(), "InternalError")
                };
                send.send_response(respond(status, reply));
            }
        });
        (seen, server)
    }

    /// Steady state writes nothing; only changes are written, one minimal merge patch
    /// each (no GET, no resourceVersion); a failed write is retried at the next tick;
    /// a failed observation writes nothing.
    #[tokio::test]
    async fn usage_loop_writes_only_changes() {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let reporter = reporter(svc);
        // The PATCH of the first change fails (500), the retry and the rest succeed.
        let (seen, server) = recording_server(
            handle,
            vec![StatusCode::INTERNAL_SERVER_ERROR, StatusCode::OK],
        );
        let idle = usage(0, 0, 0);
        let busy = usage(1, 2, 1);
        let busier = usage(1, 2, 2);
        // None: the observation failed.
        let script = vec![
            Some(idle.clone()),   // as written at start: nothing
            Some(idle.clone()),   // nothing
            Some(busy.clone()),   // PATCH both -> 500
            Some(busy.clone()),   // PATCH both again -> 200
            Some(busy.clone()),   // nothing
            None,                 // nothing
            Some(busy.clone()),   // nothing
            Some(busier.clone()), // PATCH in-use only
            Some(busier.clone()), // nothing
            Some(busier.clone()), // nothing
        ];
        let calls = Arc::new(Mutex::new(0usize));
        let (stop_tx, stop_rx) = watch::channel(false);
        let counter = calls.clone();
        let observe = move || {
            let mut n = counter.lock().expect("lock");
            let r = script.get(*n).cloned();
            *n += 1;
            if *n >= script.len() {
                let _ = stop_tx.send(true);
            }
            std::future::ready(r.flatten())
        };
        let last = tokio::time::timeout(
            Duration::from_secs(5),
            reporter.watch_usage(Some(idle), Duration::from_millis(1), observe, stop_rx),
        )
        .await
        .expect("the loop stops");
        assert_eq!(last, Some(busier));
        assert_eq!(*calls.lock().expect("lock"), 10, "one observation per tick");
        drop(reporter);
        server.await.expect("mock server assertions");
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 3, "requests: {seen:?}");
        for (method, path, _) in seen.iter() {
            assert_eq!(
                (method, path.as_str()),
                (&Method::PATCH, "/api/v1/nodes/n1")
            );
        }
        let both = json!({"metadata": {"annotations": {
            PUBLISHED_VOLUMES_ANNOTATION: "1",
            IN_USE_ANNOTATION: "1 CSI target, 2 mounts, refcount 1",
        }}});
        assert_eq!(seen[0].2, both);
        assert_eq!(seen[1].2, both);
        assert_eq!(
            seen[2].2,
            json!({"metadata": {"annotations": {
                IN_USE_ANNOTATION: "1 CSI target, 2 mounts, refcount 2",
            }}})
        );
    }

    /// Shutdown cancels the loop even while a write hangs.
    #[tokio::test]
    async fn usage_loop_stops_during_a_hanging_write() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let reporter = reporter(svc);
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("PATCH");
            assert_eq!(req.method(), Method::PATCH);
            // The write never completes; shutdown comes meanwhile.
            stop_tx.send(true).expect("loop alive");
            (handle, send)
        });
        let last = tokio::time::timeout(
            Duration::from_secs(5),
            reporter.watch_usage(
                Some(usage(0, 0, 0)),
                Duration::from_millis(1),
                || std::future::ready(Some(usage(1, 1, 1))),
                stop_rx,
            ),
        )
        .await
        .expect("stopped although the write hangs");
        assert_eq!(last, Some(usage(0, 0, 0)), "the hung write is not counted");
        drop(server.await.expect("server"));
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
