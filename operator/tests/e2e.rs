//! End-to-end against a real API server: set `AFS_E2E_KUBECONFIG` to a kubeconfig of a
//! bare control plane (kube-apiserver + kube-controller-manager with the daemonset,
//! garbage-collector and namespace controllers; NO kubelet, NO scheduler). The test
//! creates Node objects, plays kubelet (binds DaemonSet pods, patches pod status,
//! reports the module ready, registers the driver, finishes terminating pods) and runs
//! the operator in-process. Without the variable every test here skips with a message.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

#[path = "common/kubelet.rs"]
mod kubelet;

use std::sync::Arc;
use std::time::{Duration, Instant};

use afs_operator::crd::SpecialResource;
use afs_operator::labels;
use afs_operator::metrics::Metrics;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::storage::v1::CSINode;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::{Value, json};

use kubelet::Kubelet;

const MANAGER: &str = "afs-e2e";

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One test run's names, so runs never collide and cleanup finds everything.
struct Run {
    client: Client,
    id: String,
}

impl Run {
    fn group(&self) -> String {
        format!("e2e-{}", self.id)
    }
    fn node(&self, i: usize) -> String {
        format!("e2e-{}-n{i}", self.id)
    }
    fn sr_name(&self, suffix: &str) -> String {
        format!("e2e-{}-{suffix}", self.id)
    }
    fn apps(&self) -> String {
        format!("e2e-{}-apps", self.id)
    }

    async fn install_crd(&self) {
        let crds = Api::<CustomResourceDefinition>::all(self.client.clone());
        crds.patch(
            "specialresources.afs.csi.auristor.com",
            &apply(),
            &Patch::Apply(SpecialResource::crd()),
        )
        .await
        .unwrap();
        wait_for(
            "the CRD to be established",
            Duration::from_secs(30),
            || async {
                crds.get("specialresources.afs.csi.auristor.com")
                    .await
                    .is_ok_and(|c| {
                        c.status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            },
        )
        .await;
    }

    async fn create_node(&self, i: usize) {
        let name = self.node(i);
        let labels = json!({"e2e-group": self.group(), "kubernetes.io/hostname": name});
        kubelet::create_node(&self.client, &name, labels).await;
    }

    fn sr(&self, suffix: &str, version: &str) -> Value {
        json!({
            "apiVersion": "afs.csi.auristor.com/v1alpha1",
            "kind": "SpecialResource",
            "metadata": {"name": self.sr_name(suffix)},
            "spec": {
                "namespace": self.sr_name(suffix),
                "nodeSelector": {"e2e-group": self.group()},
                "kmod": {"module": "kafs", "version": version,
                    "kernelMappings": [{"regexp": "6\\.1\\..*", "containerImage": "registry.example/kmod:${KERNEL_FULL_VERSION}"}]},
                "csi": {"image": "registry.example/afs-csi", "version": "1.0.0", "cacheManager": "kafs"},
                "rollout": {"maxUnavailable": 1, "podNonInterruptLabels": {"matchLabels": {"critical": "true"}}}
            }
        })
    }

    async fn apply_sr(&self, sr: &Value) {
        let api = Api::<SpecialResource>::all(self.client.clone());
        let name = sr["metadata"]["name"].as_str().unwrap();
        api.patch(name, &apply(), &Patch::Apply(sr)).await.unwrap();
    }

    async fn sr_status(&self, suffix: &str) -> Value {
        let api = Api::<SpecialResource>::all(self.client.clone());
        api.get_opt(&self.sr_name(suffix))
            .await
            .unwrap()
            .and_then(|s| s.status)
            .map(|s| serde_json::to_value(s).unwrap())
            .unwrap_or(Value::Null)
    }

    async fn nodes(&self) -> Vec<Node> {
        Api::<Node>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!("e2e-group={}", self.group())))
            .await
            .unwrap()
            .items
    }

    async fn afs_pod(&self, name: &str, node: &str, labels: Value) {
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.apps());
        kubelet::create_afs_pod(&pods, name, node, labels).await;
    }

    async fn cleanup(&self) {
        let srs = Api::<SpecialResource>::all(self.client.clone());
        for suffix in ["g1", "overlap"] {
            let _ = srs
                .delete(&self.sr_name(suffix), &DeleteParams::default())
                .await;
        }
        // The operator never deletes an SR's namespace (it may hold the user's maps).
        for namespace in [self.apps(), self.sr_name("g1"), self.sr_name("overlap")] {
            let _ = Api::<Namespace>::all(self.client.clone())
                .delete(&namespace, &DeleteParams::default())
                .await;
        }
        for i in 1..=4 {
            let _ = Api::<Node>::all(self.client.clone())
                .delete(&self.node(i), &DeleteParams::default())
                .await;
            let _ = Api::<CSINode>::all(self.client.clone())
                .delete(&self.node(i), &DeleteParams::default())
                .await;
        }
    }
}

fn cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn taints(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect()
}

fn state(node: &Node) -> String {
    node.labels()
        .get(labels::UPGRADE_STATE_LABEL)
        .cloned()
        .unwrap_or_default()
}

/// The whole story on a real API server: placement and readiness taint, overlap
/// refusal, a rolling update with budget 1 (admin-cordoned node, non-interruptible
/// pod), and deletion node by node.
#[tokio::test]
async fn end_to_end_on_a_bare_control_plane() {
    let Some((client, _)) = kubelet::e2e_client().await else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let id = format!("{:x}", std::process::id() ^ clock.subsec_nanos());
    let run = Arc::new(Run {
        client: client.clone(),
        id,
    });
    run.install_crd().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(afs_operator::controller::run(
        client.clone(),
        Arc::new(Metrics::default()),
        async {
            let _ = stopped.await;
        },
    ));
    let kubelet = {
        let kubelet = Kubelet {
            client: client.clone(),
            node_selector: format!("e2e-group={}", run.group()),
        };
        tokio::spawn(async move {
            loop {
                kubelet.pass().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let result = tokio::spawn(scenario(run.clone())).await;
    kubelet.abort();
    if result.is_err() {
        run.cleanup().await;
    }
    let _ = stop.send(());
    let _ = operator.await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn scenario(run: Arc<Run>) {
    let c = run.client.clone();
    for i in 1..=4 {
        run.create_node(i).await;
    }
    run.apply_sr(&run.sr("g1", "1.0.0")).await;
    wait_for(
        "the SR to be Ready on 4 nodes",
        Duration::from_secs(90),
        || async {
            let s = run.sr_status("g1").await;
            s["state"] == "Ready" && s["readyNodes"] == "4/4"
        },
    )
    .await;
    for node in run.nodes().await {
        assert!(
            !taints(&node).contains(&labels::READINESS_TAINT.to_owned()),
            "{}: readiness taint removed",
            node.name_any()
        );
        assert!(node.labels().contains_key(labels::KERNEL_LABEL));
    }

    // Overlap: a second SR on the same nodes is refused and deploys nothing.
    run.apply_sr(&run.sr("overlap", "9.0.0")).await;
    wait_for(
        "the overlapping SR to be refused",
        Duration::from_secs(30),
        || async { run.sr_status("overlap").await["state"] == "Conflict" },
    )
    .await;
    let message = run.sr_status("overlap").await["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(&run.sr_name("g1")) && message.contains(&run.node(1)),
        "{message}"
    );
    let daemon_sets = Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(
        c.clone(),
        &run.sr_name("overlap"),
    );
    assert!(
        daemon_sets
            .list(&ListParams::default())
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(true)
    );
    Api::<SpecialResource>::all(c.clone())
        .delete(&run.sr_name("overlap"), &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the refused SR to go", Duration::from_secs(30), || async {
        Api::<SpecialResource>::all(c.clone())
            .get_opt(&run.sr_name("overlap"))
            .await
            .unwrap()
            .is_none()
    })
    .await;

    // Rolling update: n2 is cordoned by the admin, n1 runs an AFS pod, n3 a
    // non-interruptible one.
    let apps: Namespace =
        serde_json::from_value(json!({"metadata": {"name": run.apps()}})).unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &apps)
        .await
        .unwrap();
    run.afs_pod("web", &run.node(1), json!({"app": "web"}))
        .await;
    run.afs_pod(
        "job",
        &run.node(3),
        json!({"app": "job", "critical": "true"}),
    )
    .await;
    let nodes = Api::<Node>::all(c.clone());
    nodes
        .patch(
            &run.node(2),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let old_revision = run.sr_status("g1").await["revision"].clone();
    run.apply_sr(&run.sr("g1", "1.1.0")).await;
    wait_for(
        "the operator to see the new revision",
        Duration::from_secs(30),
        || async { run.sr_status("g1").await["revision"] != old_revision },
    )
    .await;

    let pods = Api::<Pod>::namespaced(c.clone(), &run.apps());
    let started = Instant::now();
    let mut job_done = false;
    let mut admin_uncordoned = false;
    loop {
        let group = run.nodes().await;
        let unavailable = group.iter().filter(|n| cordoned(n)).count();
        assert!(
            unavailable <= 1,
            "maxUnavailable 1 exceeded: {:?}",
            group
                .iter()
                .map(|n| (n.name_any(), state(n), cordoned(n)))
                .collect::<Vec<_>>()
        );
        let job = pods.get_opt("job").await.unwrap();
        if !job_done {
            assert!(
                job.as_ref()
                    .is_some_and(|j| j.metadata.deletion_timestamp.is_none()),
                "the non-interruptible pod is never evicted"
            );
        }
        let n2 = group.iter().find(|n| n.name_any() == run.node(2)).unwrap();
        if state(n2) == "upgrade-done" && !admin_uncordoned {
            assert!(cordoned(n2), "the admin's cordon is kept after the upgrade");
            nodes
                .patch(
                    &run.node(2),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"unschedulable": false}})),
                )
                .await
                .unwrap();
            admin_uncordoned = true;
        }
        if admin_uncordoned && !job_done && started.elapsed() > Duration::from_secs(10) {
            // The job ends by itself.
            pods.delete(
                "job",
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            job_done = true;
        }
        let status = run.sr_status("g1").await;
        if group.iter().all(|n| state(n) == "upgrade-done") && status["state"] == "Ready" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "rollout did not finish: {status} {:?}",
            group
                .iter()
                .map(|n| (n.name_any(), state(n)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        pods.get_opt("web").await.unwrap().is_none(),
        "the AFS pod on n1 was evicted"
    );
    for node in run.nodes().await {
        assert!(!cordoned(&node), "{}: uncordoned", node.name_any());
    }

    // Deletion: nothing uses AFS any more; the SR goes with everything it made.
    Api::<SpecialResource>::all(c.clone())
        .delete(&run.sr_name("g1"), &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the SR to be deleted", Duration::from_secs(90), || async {
        Api::<SpecialResource>::all(c.clone())
            .get_opt(&run.sr_name("g1"))
            .await
            .unwrap()
            .is_none()
    })
    .await;
    for node in run.nodes().await {
        let ours: Vec<&String> = node
            .labels()
            .keys()
            .filter(|k| k.starts_with("afs.csi.auristor.com/"))
            .collect();
        assert!(
            ours.is_empty() && taints(&node).is_empty(),
            "{}: {ours:?} {:?}",
            node.name_any(),
            taints(&node)
        );
    }
    run.cleanup().await;
}
