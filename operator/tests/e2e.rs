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
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::CSIDriver;
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
                "csi": {"image": "registry.example/afs-csi", "version": "1.0.0", "cacheManager": "kafs", "allowedCells": ["example.com"]},
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

/// One test at a time: each runs an operator in-process, and two operators would both
/// reconcile every SR of the cluster.
static ONE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The whole story on a real API server: placement and readiness taint, overlap
/// refusal, a rolling update with budget 1 (admin-cordoned node, non-interruptible
/// pod), and deletion node by node.
#[tokio::test]
async fn end_to_end_on_a_bare_control_plane() {
    let Some((client, _)) = kubelet::e2e_client().await else {
        return;
    };
    let _one = ONE_OPERATOR.lock().await;
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

/// The API server's answer to a write it refuses: (HTTP code, message).
fn refused(result: Result<SpecialResource, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        Ok(sr) => panic!("admitted: {:?}", sr.spec),
        Err(other) => panic!("not an API refusal: {other}"),
    }
}

/// Issue 12, cases 11 and 13 on a real API server: the CRD's CEL rules refuse shared
/// and system namespaces and changes of the namespace and driver name; the operator
/// refuses a namespace it did not create (and leaves it unlabelled) and another
/// vendor's CSIDriver (and leaves it intact, also after the SR is deleted).
#[tokio::test]
async fn trust_boundary_on_a_bare_control_plane() {
    let Some((client, _)) = kubelet::e2e_client().await else {
        return;
    };
    let _one = ONE_OPERATOR.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let id = format!("t{:x}", std::process::id() ^ clock.subsec_nanos());
    let run = Arc::new(Run {
        client: client.clone(),
        id,
    });
    run.install_crd().await;

    // Admission first, without an operator: nothing here is ever deployed.
    admission(&run).await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(afs_operator::controller::run(
        client.clone(),
        Arc::new(Metrics::default()),
        async {
            let _ = stopped.await;
        },
    ));
    let result = tokio::spawn(refusals(run.clone())).await;
    let _ = stop.send(());
    let _ = operator.await;
    let srs = Api::<SpecialResource>::all(client.clone());
    for suffix in ["imm", "tenant", "vendor"] {
        let _ = srs
            .delete(&run.sr_name(suffix), &DeleteParams::default())
            .await;
    }
    for namespace in [
        run.sr_name("imm"),
        run.sr_name("tenant"),
        run.sr_name("vendor"),
    ] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&namespace, &DeleteParams::default())
            .await;
    }
    let _ = Api::<CSIDriver>::all(client.clone())
        .delete(&vendor_driver(&run), &DeleteParams::default())
        .await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

fn vendor_driver(run: &Run) -> String {
    format!("{}.vendor.example.com", run.group())
}

async fn admission(run: &Run) {
    let api = Api::<SpecialResource>::all(run.client.clone());
    let create = |sr: Value| {
        let api = api.clone();
        async move {
            let name = sr["metadata"]["name"].as_str().unwrap().to_owned();
            api.patch(&name, &apply(), &Patch::Apply(&sr)).await
        }
    };
    // (what, how the valid SR is changed, what the refusal says)
    type Case = (&'static str, fn(&mut Value), &'static str);
    let cases: [Case; 9] = [
        (
            "default",
            |s| s["spec"]["namespace"] = json!("default"),
            "namespace must not be default",
        ),
        (
            "kube-system",
            |s| s["spec"]["namespace"] = json!("kube-system"),
            "namespace must not be a kube-* namespace",
        ),
        (
            "kube-node-lease",
            |s| s["spec"]["namespace"] = json!("kube-node-lease"),
            "namespace must not be a kube-* namespace",
        ),
        (
            "afs-system",
            |s| s["spec"]["namespace"] = json!("afs-system"),
            "namespace must not be afs-system",
        ),
        (
            "no allowedCells",
            |s| {
                s["spec"]["csi"]
                    .as_object_mut()
                    .unwrap()
                    .remove("allowedCells");
            },
            "allowedCells",
        ),
        (
            "a mount option the driver refuses",
            |s| s["spec"]["csi"]["mountOptions"] = json!(["ro", "nosuid"]),
            "csi.mountOptions: nosuid is not supported",
        ),
        (
            "context= with auristor",
            |s| {
                s["spec"]["csi"]["cacheManager"] = json!("auristor");
                s["spec"]["csi"]["mountOptions"] =
                    json!(["context=system_u:object_r:container_file_t:s0"]);
            },
            "context= needs cacheManager kafs",
        ),
        (
            "a root class without allowRootMounts",
            |s| {
                s["spec"]["csi"]["storageClass"] =
                    json!({"name": "afs-root", "parameters": {"mount-type": "root"}});
            },
            "needs csi.allowRootMounts: true",
        ),
        (
            "a class of a cell not allowed",
            |s| {
                s["spec"]["csi"]["storageClass"] = json!({"name": "afs-vol",
                    "parameters": {"mount-type": "volume", "cell-name": "example.org", "volume-name": "v"}});
            },
            "cell-name example.org is not in csi.allowedCells",
        ),
    ];
    for (what, change, expected) in cases {
        let mut sr = run.sr("bad", "1.0.0");
        change(&mut sr);
        let (code, message) = refused(create(sr).await);
        assert_eq!(code, 422, "{what}: {message}");
        assert!(
            message.contains(expected),
            "{what}: {expected:?} in {message}"
        );
    }

    // Immutable once created.
    let sr = run.sr("imm", "1.0.0");
    create(sr.clone()).await.expect("a valid SR is admitted");
    let mut moved = sr.clone();
    moved["spec"]["namespace"] = json!(run.sr_name("elsewhere"));
    let (code, message) = refused(create(moved).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("namespace is immutable"), "{message}");
    let mut renamed = sr.clone();
    renamed["spec"]["csi"]["driverName"] = json!("other.csi.example.com");
    let (code, message) = refused(create(renamed).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("csi.driverName is immutable"), "{message}");
    let mut upgraded = sr;
    upgraded["spec"]["csi"]["version"] = json!("1.1.0");
    create(upgraded).await.expect("other fields may change");
    api.delete(&run.sr_name("imm"), &DeleteParams::default())
        .await
        .unwrap();
}

async fn status_of(run: &Run, suffix: &str) -> (String, String, String) {
    let status = run.sr_status(suffix).await;
    let degraded = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Degraded")
        .cloned()
        .unwrap_or(Value::Null);
    (
        status["state"].as_str().unwrap_or_default().to_owned(),
        degraded["reason"].as_str().unwrap_or_default().to_owned(),
        degraded["message"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn warning_event(run: &Run, suffix: &str, reason: &str) -> bool {
    Api::<Event>::all(run.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                    == Some(run.sr_name(suffix).as_str())
        })
}

async fn delete_sr_and_wait(run: &Run, suffix: &str) {
    let srs = Api::<SpecialResource>::all(run.client.clone());
    srs.delete(&run.sr_name(suffix), &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the refused SR to be deleted",
        Duration::from_secs(30),
        || async { srs.get_opt(&run.sr_name(suffix)).await.unwrap().is_none() },
    )
    .await;
}

async fn refusals(run: Arc<Run>) {
    let c = run.client.clone();
    let namespaces = Api::<Namespace>::all(c.clone());

    // A tenant's namespace: refused, never labelled, nothing deployed into it.
    let tenant = run.sr_name("tenant");
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": tenant, "labels": {"team": "tenant-a"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let before = namespaces.get(&tenant).await.unwrap();
    run.apply_sr(&run.sr("tenant", "1.0.0")).await;
    wait_for(
        "the SR of a tenant's namespace to be refused",
        Duration::from_secs(30),
        || async { status_of(&run, "tenant").await.0 == "Refused" },
    )
    .await;
    let (_, reason, message) = status_of(&run, "tenant").await;
    assert_eq!(reason, "NamespaceNotOwned", "{message}");
    assert!(
        message.contains(&format!("kubectl annotate namespace {tenant}")),
        "{message}"
    );
    wait_for(
        "a Warning event NamespaceNotOwned",
        Duration::from_secs(10),
        || warning_event(&run, "tenant", "NamespaceNotOwned"),
    )
    .await;
    let after = namespaces.get(&tenant).await.unwrap();
    assert_eq!(after.labels(), before.labels(), "not labelled");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "not written at all"
    );
    let daemon_sets = Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(c.clone(), &tenant);
    assert!(
        daemon_sets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    delete_sr_and_wait(&run, "tenant").await;
    assert_eq!(
        namespaces
            .get(&tenant)
            .await
            .unwrap()
            .metadata
            .resource_version,
        before.metadata.resource_version,
        "deleting the SR leaves the namespace as it was"
    );

    // Another vendor's CSIDriver: refused, never owner-referenced, outlives the SR.
    let drivers = Api::<CSIDriver>::all(c.clone());
    let driver_name = vendor_driver(&run);
    drivers
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": driver_name, "labels": {"app.kubernetes.io/name": "vendor-csi"}},
                "spec": {"attachRequired": true, "podInfoOnMount": false, "volumeLifecycleModes": ["Persistent"]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let before = drivers.get(&driver_name).await.unwrap();
    let mut sr = run.sr("vendor", "1.0.0");
    sr["spec"]["csi"]["driverName"] = json!(driver_name);
    run.apply_sr(&sr).await;
    wait_for(
        "the SR of another vendor's driver to be refused",
        Duration::from_secs(30),
        || async { status_of(&run, "vendor").await.0 == "Refused" },
    )
    .await;
    let (_, reason, message) = status_of(&run, "vendor").await;
    assert_eq!(reason, "CSIDriverNotOwned", "{message}");
    assert!(
        namespaces
            .get_opt(&run.sr_name("vendor"))
            .await
            .unwrap()
            .is_none(),
        "nothing of the SR deployed, not even its namespace"
    );
    delete_sr_and_wait(&run, "vendor").await;
    // Give the garbage collector time to act on an owner reference, were there one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = drivers
        .get_opt(&driver_name)
        .await
        .unwrap()
        .expect("the vendor's CSIDriver outlives the SR");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "never written"
    );
    assert!(after.metadata.owner_references.is_none());
}
