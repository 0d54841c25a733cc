//! End-to-end against a real API server: set `AFS_E2E_KUBECONFIG` to a kubeconfig of a
//! bare control plane (kube-apiserver + kube-controller-manager with the daemonset,
//! garbage-collector and namespace controllers; NO kubelet, NO scheduler). The tests
//! install deploy/'s RBAC and admission policy, create Node objects, play kubelet (bind
//! DaemonSet pods, patch pod status, report the module ready, register the driver,
//! finish terminating pods) and run the operator in-process as its own ServiceAccount
//! (a token of `afs-system/afs-operator`), so the API server holds it to deploy/'s
//! rights. Without the variable every test here skips with a message.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

#[path = "common/kubelet.rs"]
mod kubelet;

use std::sync::Arc;
use std::time::{Duration, Instant};

use afs_operator::crd::SpecialResource;
use afs_operator::labels;
use afs_operator::metrics::Metrics;
use afs_operator::objects::{self, OperatorAccount};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kmod_manager::guard::{ModuleUse, Usage};
use kmod_manager::node::NodeReporter;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Client, CustomResourceExt, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};

use kubelet::Kubelet;

const MANAGER: &str = "afs-e2e";

/// The tests of this file each run an operator, which acts on every SR of the
/// cluster: one at a time.
static ONE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Run {
    /// A test's run: names of its own (ids prefixed with `prefix`), the CRD installed,
    /// logs to the test's output.
    async fn start(client: &Client, prefix: &str) -> Arc<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let run = Arc::new(Run {
            client: client.clone(),
            id: format!("{prefix}{:x}", std::process::id() ^ clock.subsec_nanos()),
        });
        run.install_crd().await;
        run
    }
}

/// The operator in-process with `client`'s rights (as the account deploy/ gives it),
/// until the sender fires.
fn start_operator(
    client: Client,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(afs_operator::controller::run_as(
        client,
        Arc::new(Metrics::default()),
        OperatorAccount::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (stop, operator)
}

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
                    "kernelMappings": [{"regexp": "6\\.1\\..*", "containerImage": "registry.example/kmod:${KERNEL_FULL_VERSION}"}],
                    // The kAFS client's CellServDB and ThisCell (no kubelet mounts it here).
                    "mapVolumes": [{"name": "etc-openafs", "target": "/etc/openafs", "configMap": {"name": "etc-openafs"}}]},
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
        for suffix in ["g1", "overlap", "handed"] {
            let _ = srs
                .delete(&self.sr_name(suffix), &DeleteParams::default())
                .await;
        }
        // Only there if the operator's namespace policy failed to refuse it.
        let _ = Api::<ClusterRoleBinding>::all(self.client.clone())
            .delete(&self.sr_name("everywhere"), &DeleteParams::default())
            .await;
        // The operator never deletes an SR's namespace (it may hold the user's maps).
        for namespace in [
            self.apps(),
            self.sr_name("g1"),
            self.sr_name("overlap"),
            self.sr_name("handed"),
        ] {
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
    let Some((client, kubeconfig)) = kubelet::e2e_client().await else {
        return;
    };
    let _one = ONE_OPERATOR.lock().await;
    let run = Run::start(&client, "").await;
    let operator_client = install_operator(&client, &kubeconfig).await;
    let (stop, operator) = start_operator(operator_client);
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

// ---------------------------------------------------------------------------------
// The trust boundary

/// A file of deploy/, applied as an admin would.
async fn apply_manifest(client: &Client, file: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    for document in serde_norway::Deserializer::from_str(&text) {
        let object = DynamicObject::deserialize(document).unwrap();
        let gvk = GroupVersionKind::try_from(object.types.as_ref().unwrap()).unwrap();
        let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("{file}: {gvk:?}: {e}"));
        let api: Api<DynamicObject> =
            match (capabilities.scope, object.metadata.namespace.as_deref()) {
                (Scope::Namespaced, Some(ns)) => {
                    Api::namespaced_with(client.clone(), ns, &resource)
                }
                _ => Api::all_with(client.clone(), &resource),
            };
        api.patch(&object.name_any(), &apply(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("{file}: {} {}: {e}", gvk.kind, object.name_any()));
    }
}

/// A token of `namespace/account`, bound to `pod` when given (the API server then
/// adds the pod's node to it).
async fn token(client: &Client, namespace: &str, account: &str, pod: Option<&Pod>) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("token of {namespace}/{account}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("a token")
}

/// A client of the same cluster authenticated by `token` alone.
async fn client_with_token(kubeconfig: &str, token: String) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..kube::config::AuthInfo::default()
    };
    Client::try_from(config).unwrap()
}

/// The ValidatingAdmissionPolicy holding the operator to SR namespaces.
const OPERATOR_POLICY: &str = "afs-operator-namespaces";

/// Installs deploy/'s namespace, the operator's ServiceAccount, the RBAC and the
/// admission policies, and returns a client that is the operator's ServiceAccount: the
/// operator then runs with exactly deploy/'s rights, held by the policy to SR
/// namespaces.
async fn install_operator(client: &Client, kubeconfig: &str) -> Client {
    apply_manifest(client, "namespace.yaml").await;
    apply_manifest(client, "rbac.yaml").await;
    let account = OperatorAccount::default();
    let operator = client_with_token(
        kubeconfig,
        token(client, &account.namespace, &account.name, None).await,
    )
    .await;
    let srs = Api::<SpecialResource>::all(operator.clone());
    wait_for(
        "the operator's RBAC to take effect",
        Duration::from_secs(30),
        || async { srs.list(&ListParams::default()).await.is_ok() },
    )
    .await;
    // The policy takes effect once the API server's admission has seen it: until then
    // the operator may label `default` (a dry run, so nothing is written either way).
    let namespaces = Api::<Namespace>::all(operator.clone());
    wait_for(
        "the admission policy to hold the operator to SR namespaces",
        Duration::from_secs(60),
        || async {
            namespaces
                .patch(
                    "default",
                    &PatchParams {
                        dry_run: true,
                        ..PatchParams::default()
                    },
                    &Patch::Merge(json!({"metadata": {"labels": {"e2e-probe": "1"}}})),
                )
                .await
                .is_err_and(|e| e.to_string().contains(OPERATOR_POLICY))
        },
    )
    .await;
    operator
}

/// The status code and message of a refused request (panics when it was not).
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// `what` was refused by the operator's namespace policy, saying `says`.
#[track_caller]
fn refused_by_operator_policy<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, kube::Error>,
    says: &str,
) {
    let (code, message) = refusal(result);
    assert!(
        code == 403
            && message.contains(&format!("ValidatingAdmissionPolicy '{OPERATOR_POLICY}'"))
            && message.contains(says),
        "{what}: {code} {message}"
    );
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// Whether `client` may create a ConfigMap, a DaemonSet and a Lease in `namespace`
/// (dry runs: authorized and admitted, never stored), each `Ok` or the refusal's code.
async fn namespaced_writes(
    client: &Client,
    namespace: &str,
) -> [(&'static str, Result<(), u16>); 3] {
    let config_map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "probe"}})).unwrap();
    let daemon_set: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"selector": {"matchLabels": {"app": "probe"}},
            "template": {"metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/probe:1"}]}}}
    }))
    .unwrap();
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "probe"}, "spec": {}})).unwrap();
    [
        (
            "ConfigMap",
            dry_create(client, namespace, &config_map).await,
        ),
        (
            "DaemonSet",
            dry_create(client, namespace, &daemon_set).await,
        ),
        ("Lease", dry_create(client, namespace, &lease).await),
    ]
}

/// A dry-run create of `object` in `namespace`: `Ok`, or the refusal's HTTP code.
async fn dry_create<K>(client: &Client, namespace: &str, object: &K) -> Result<(), u16>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match Api::<K>::namespaced(client.clone(), namespace)
        .create(&dry_run(), object)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.code),
        Err(other) => panic!("{other}"),
    }
}

fn usage(csi_targets: usize) -> Usage {
    Usage {
        module: ModuleUse::Loaded {
            refcount: 1,
            holders: vec![],
        },
        csi_targets,
        mounts: csi_targets,
    }
}

/// The trust boundary on a real API server: the operator's ServiceAccount writes
/// ConfigMaps, DaemonSets and Leases in no namespace but the SR namespaces it bound
/// itself into, and loses that when the SR goes; a kmod-manager token bound to a pod
/// on node 1 patches node 1's kmod-manager keys with kmod-manager's own code, and
/// nothing else: not node 2, not other labels, the cordon or other taints, and not
/// without the node claim.
#[tokio::test]
async fn trust_boundary_on_a_bare_control_plane() {
    let Some((client, kubeconfig)) = kubelet::e2e_client().await else {
        return;
    };
    let _one = ONE_OPERATOR.lock().await;
    let run = Run::start(&client, "").await;
    let operator_client = install_operator(&client, &kubeconfig).await;
    let (stop, operator) = start_operator(operator_client.clone());
    let result = tokio::spawn(trust_boundary(
        run.clone(),
        operator_client,
        kubeconfig.clone(),
    ))
    .await;
    let _ = stop.send(());
    let _ = operator.await;
    run.cleanup().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn trust_boundary(run: Arc<Run>, operator: Client, kubeconfig: String) {
    let c = run.client.clone();
    let (n1, n2) = (run.node(1), run.node(2));
    run.create_node(1).await;
    run.create_node(2).await;
    // A namespace that is no SR's.
    let plain = run.apps();
    Api::<Namespace>::all(c.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": plain}})).unwrap(),
        )
        .await
        .unwrap();
    for (kind, outcome) in namespaced_writes(&operator, &plain).await {
        assert_eq!(
            outcome,
            Err(403),
            "the operator may not create a {kind} in {plain}, which is no SR's namespace"
        );
    }

    // An SR: the operator makes its namespace, binds its role there, then the rest.
    run.apply_sr(&run.sr("g1", "1.0.0")).await;
    let namespace = run.sr_name("g1");
    let kmod_account = format!("{}-kmod", run.sr_name("g1"));
    wait_for(
        "the operator to deploy the SR with its own rights",
        Duration::from_secs(60),
        || async {
            let ds = Api::<DaemonSet>::namespaced(c.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(0);
            let kmod_binding = Api::<ClusterRoleBinding>::all(c.clone())
                .get_opt(&format!("afs-sr-{}-kmod-manager", run.sr_name("g1")))
                .await
                .unwrap();
            ds >= 2 && kmod_binding.is_some()
        },
    )
    .await;
    let binding = Api::<RoleBinding>::namespaced(c.clone(), &namespace)
        .get(objects::OPERATOR_BINDING)
        .await
        .expect("the operator's RoleBinding in the SR namespace");
    assert_eq!(binding.role_ref.name, objects::OPERATOR_NAMESPACE_ROLE);
    let writes = namespaced_writes(&operator, &namespace).await;
    assert_eq!(
        writes,
        [
            ("ConfigMap", Ok(())),
            ("DaemonSet", Ok(())),
            ("Lease", Err(403))
        ],
        "in its SR namespace the operator writes ConfigMaps and DaemonSets; Leases are \
         the provisioner's, which it binds but does not hold"
    );
    operator_namespace_policy(&run, &operator).await;

    // kmod-manager's pod on n1 and its token (the kubelet would mount one like it).
    let pods = Api::<Pod>::namespaced(c.clone(), &namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "kmod-probe"},
        "spec": {"nodeName": n1, "serviceAccountName": kmod_account,
            "containers": [{"name": "kmod-manager", "image": "registry.example/kmod:1"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let kmod = client_with_token(
        &kubeconfig,
        token(&c, &namespace, &kmod_account, Some(&pod)).await,
    )
    .await;
    let reporter = |node: &str| {
        NodeReporter::new(
            kmod.clone(),
            node.to_owned(),
            labels::KMOD_READY_LABEL.to_owned(),
            labels::KMOD_READINESS_TAINT.to_owned(),
        )
    };
    // The policy takes effect once the API server's admission has seen it.
    wait_for(
        "the admission policy to hold kmod-manager to its node",
        Duration::from_secs(60),
        || async {
            reporter(&n2)
                .report(true, "probe", Some(&usage(0)))
                .await
                .is_err_and(|e| e.to_string().contains("afs-kmod-manager-node"))
        },
    )
    .await;

    // Its own node, its own keys, exactly as kmod-manager writes them: allowed.
    reporter(&n1)
        .report(true, "kafs loaded", Some(&usage(2)))
        .await
        .expect("kmod-manager reports ready on its node");
    let node = Api::<Node>::all(c.clone()).get(&n1).await.unwrap();
    assert_eq!(
        node.labels()
            .get(labels::KMOD_READY_LABEL)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        node.annotations()
            .get(labels::PUBLISHED_VOLUMES_ANNOTATION)
            .map(String::as_str),
        Some("2")
    );
    reporter(&n1)
        .report(false, "kafs kept: in use", None)
        .await
        .expect("kmod-manager reports not ready on its node");
    let node = Api::<Node>::all(c.clone()).get(&n1).await.unwrap();
    assert!(taints(&node).contains(&labels::KMOD_READINESS_TAINT.to_owned()));
    let usage_patch = kmod_manager::node::usage_patch(None, &usage(1)).unwrap();
    let kmod_nodes = Api::<Node>::all(kmod.clone());
    kmod_nodes
        .patch(
            &n1,
            &PatchParams::apply("kmod-manager"),
            &Patch::Merge(&usage_patch),
        )
        .await
        .expect("kmod-manager's usage annotations on its node");

    // Anything else: refused by the policy, saying what.
    let policy = "ValidatingAdmissionPolicy 'afs-kmod-manager-node'";
    let (code, message) = refusal(
        reporter(&n2)
            .report(true, "kafs loaded", Some(&usage(0)))
            .await,
    );
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains(policy)
            && message.contains(&format!(
                "kmod-manager on node {n1} may patch only that Node, not {n2}"
            )),
        "{message}"
    );
    for (what, patch, says) in [
        (
            "another label",
            json!({"metadata": {"labels": {"kubernetes.io/hostname": "elsewhere"}}}),
            "may change only its label afs.csi.auristor.com/kmod-ready, not kubernetes.io/hostname",
        ),
        (
            "the cordon",
            json!({"spec": {"unschedulable": true}}),
            "spec.unschedulable",
        ),
        (
            "another annotation",
            json!({"metadata": {"annotations": {"afs.csi.auristor.com/upgrade-reason": "mine"}}}),
            "not afs.csi.auristor.com/upgrade-reason",
        ),
    ] {
        let (code, message) = refusal(
            kmod_nodes
                .patch(
                    &n1,
                    &PatchParams::apply("kmod-manager"),
                    &Patch::Merge(&patch),
                )
                .await,
        );
        assert!(
            code == 403 && message.contains(policy) && message.contains(says),
            "{what}: {code} {message}"
        );
    }
    // Another taint: kmod-manager's own shape (the whole list, as it read it, plus one).
    let node = Api::<Node>::all(c.clone()).get(&n1).await.unwrap();
    let mut taints_now: Vec<Value> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| t.iter().map(|t| serde_json::to_value(t).unwrap()).collect())
        .unwrap_or_default();
    taints_now.push(json!({"key": "example.com/evict", "effect": "NoExecute"}));
    let (code, message) = refusal(
        kmod_nodes
            .patch(
                &n1,
                &PatchParams::apply("kmod-manager"),
                &Patch::Merge(json!({"spec": {"taints": taints_now}})),
            )
            .await,
    );
    assert!(
        code == 403 && message.contains(policy) && message.contains("example.com/evict"),
        "another taint: {code} {message}"
    );
    // A token of the same account without the node claim.
    let unbound = client_with_token(
        &kubeconfig,
        token(&c, &namespace, &kmod_account, None).await,
    )
    .await;
    let (code, message) = refusal(
        NodeReporter::new(
            unbound,
            n1.clone(),
            labels::KMOD_READY_LABEL.to_owned(),
            labels::KMOD_READINESS_TAINT.to_owned(),
        )
        .report(true, "kafs loaded", Some(&usage(0)))
        .await,
    );
    assert!(
        code == 403 && message.contains(policy) && message.contains("names no node"),
        "{code} {message}"
    );

    // The SR goes: the operator removes its binding, and its rights there with it.
    pods.delete("kmod-probe", &DeleteParams::default())
        .await
        .unwrap();
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
    assert!(
        Api::<RoleBinding>::namespaced(c.clone(), &namespace)
            .get_opt(objects::OPERATOR_BINDING)
            .await
            .unwrap()
            .is_none(),
        "the operator's binding goes with the namespace's last SR"
    );
    wait_for(
        "the operator's rights in the old SR namespace to end",
        Duration::from_secs(30),
        || async {
            namespaced_writes(&operator, &namespace)
                .await
                .iter()
                .all(|(_, outcome)| *outcome == Err(403))
        },
    )
    .await;
}

/// With the operator's own token: a tenant's namespace cannot be labelled or marked, an
/// SR namespace's mark cannot be changed, and the operator cannot bind itself into a
/// tenant's namespace or cluster-wide (deploy/'s RBAC allows each of these; the policy
/// `afs-operator-namespaces` refuses them). Its own flows pass under the policy: an
/// admin's namespace handed over to an SR is labelled (server-side apply) and bound
/// into, and its labels and the binding go with the SR, the mark and the admin's
/// label stay.
async fn operator_namespace_policy(run: &Run, operator: &Client) {
    let c = run.client.clone();
    let tenant = run.apps();
    let ours = run.sr_name("g1");
    let as_operator = Api::<Namespace>::all(operator.clone());
    let admin = Api::<Namespace>::all(c.clone());
    let merge = |patch: Value| Patch::Merge(patch);
    let before = admin.get(&tenant).await.unwrap();

    // A tenant's namespace: not labelled (the privileged level), not marked, whether
    // by a merge patch or by the operator's own server-side apply.
    let unmarked = format!("namespace {tenant} does not");
    for (what, patch) in [
        (
            "the privileged level on a tenant's namespace",
            json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}),
        ),
        (
            "the mark on a tenant's namespace",
            json!({"metadata": {"annotations": {labels::NAMESPACE_OF_ANNOTATION: ours}}}),
        ),
    ] {
        refused_by_operator_policy(
            what,
            as_operator
                .patch(&tenant, &PatchParams::default(), &merge(patch))
                .await,
            &unmarked,
        );
    }
    let mut sr: SpecialResource = serde_json::from_value(run.sr("g1", "1.0.0")).unwrap();
    sr.spec.namespace = tenant.clone();
    sr.metadata.uid = Some("uid".to_owned());
    let desired = objects::build(&objects::Inputs {
        sr: &sr,
        revision: "r",
        kernels: &[],
        runs_controller: false,
        csi_driver_owners: &[],
    })
    .unwrap();
    refused_by_operator_policy(
        "the operator's apply of its namespace to a tenant's",
        as_operator
            .patch(
                &tenant,
                &PatchParams::apply(labels::FIELD_MANAGER).force(),
                &Patch::Apply(&desired.namespace),
            )
            .await,
        &unmarked,
    );
    let after = admin.get(&tenant).await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the tenant's namespace is not written"
    );

    // Its own SR namespace: its labels may change, the mark may not.
    as_operator
        .patch(
            &ours,
            &PatchParams::default(),
            &merge(json!({"metadata": {"labels": {"e2e-probe": "1"}}})),
        )
        .await
        .expect("the operator labels its SR namespace");
    as_operator
        .patch(
            &ours,
            &PatchParams::default(),
            &merge(json!({"metadata": {"labels": {"e2e-probe": null}}})),
        )
        .await
        .expect("the operator unlabels its SR namespace");
    for (what, patch, says) in [
        (
            "another SR's mark",
            json!({"metadata": {"annotations": {labels::NAMESPACE_OF_ANNOTATION: "someone-else"}}}),
            labels::NAMESPACE_OF_ANNOTATION,
        ),
        (
            "no mark",
            json!({"metadata": {"annotations": {labels::NAMESPACE_OF_ANNOTATION: null}}}),
            labels::NAMESPACE_OF_ANNOTATION,
        ),
        (
            "afsctl's created-by",
            json!({"metadata": {"annotations": {labels::CREATED_BY_ANNOTATION: labels::CREATED_BY_AFSCTL}}}),
            labels::CREATED_BY_ANNOTATION,
        ),
    ] {
        refused_by_operator_policy(
            what,
            as_operator
                .patch(&ours, &PatchParams::default(), &merge(patch))
                .await,
            &format!("may not add, change or remove {says} on namespace {ours}"),
        );
    }

    // Its own RoleBinding in a tenant's namespace, as `bind_operator` applies it (RBAC
    // allows it by name, and `bind` on the role), and cluster-wide.
    let account = OperatorAccount::default();
    let binding = objects::operator_role_binding(&tenant, &account);
    refused_by_operator_policy(
        "the operator's RoleBinding in a tenant's namespace",
        Api::<RoleBinding>::namespaced(operator.clone(), &tenant)
            .patch(
                objects::OPERATOR_BINDING,
                &PatchParams::apply(labels::FIELD_MANAGER).force(),
                &Patch::Apply(&binding),
            )
            .await,
        &format!(
            "namespace {tenant} does not: RoleBinding {} of ClusterRole {} refused",
            objects::OPERATOR_BINDING,
            objects::OPERATOR_NAMESPACE_ROLE
        ),
    );
    assert_eq!(
        namespaced_writes(operator, &tenant).await.map(|(_, w)| w),
        [Err(403); 3],
        "still no right in the tenant's namespace"
    );
    let everywhere: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": run.sr_name("everywhere")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": objects::OPERATOR_NAMESPACE_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": account.name, "namespace": account.namespace}]
    }))
    .unwrap();
    refused_by_operator_policy(
        "the operator's role bound cluster-wide",
        Api::<ClusterRoleBinding>::all(operator.clone())
            .patch(
                &run.sr_name("everywhere"),
                &PatchParams::apply(labels::FIELD_MANAGER).force(),
                &Patch::Apply(&everywhere),
            )
            .await,
        &format!(
            "not ClusterRole {}: ClusterRoleBinding {} refused",
            objects::OPERATOR_NAMESPACE_ROLE,
            run.sr_name("everywhere")
        ),
    );

    // An admin hands a namespace of their own over to an SR: the operator applies its
    // labels to it (server-side apply of a marked namespace) and binds itself there.
    let handed = run.sr_name("handed");
    admin
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": handed,
                "labels": {"team": "tenant-b"},
                "annotations": {labels::NAMESPACE_OF_ANNOTATION: handed}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let mut sr = run.sr("handed", "1.0.0");
    // No node, another driver: nothing shared with g1.
    sr["spec"]["nodeSelector"] = json!({"e2e-group": format!("{}-none", run.group())});
    sr["spec"]["csi"]["driverName"] = json!(format!("{}.handed.example.com", run.group()));
    run.apply_sr(&sr).await;
    let privileged = |n: &Namespace| {
        n.labels()
            .get("pod-security.kubernetes.io/enforce")
            .is_some_and(|l| l == "privileged")
    };
    wait_for(
        "the operator to label the handed-over namespace and bind itself there",
        Duration::from_secs(60),
        || async {
            let bound = Api::<RoleBinding>::namespaced(c.clone(), &handed)
                .get_opt(objects::OPERATOR_BINDING)
                .await
                .unwrap()
                .is_some();
            bound && privileged(&admin.get(&handed).await.unwrap())
        },
    )
    .await;
    delete_sr_and_wait(run, "handed").await;
    let left = admin.get(&handed).await.unwrap();
    assert!(
        !privileged(&left),
        "the operator's labels go with the SR: {left:?}"
    );
    assert!(
        !left.labels().contains_key(labels::MANAGED_BY_LABEL),
        "{left:?}"
    );
    assert_eq!(
        left.labels().get("team").map(String::as_str),
        Some("tenant-b")
    );
    assert_eq!(
        left.annotations()
            .get(labels::NAMESPACE_OF_ANNOTATION)
            .map(String::as_str),
        Some(handed.as_str()),
        "the mark stays"
    );
    assert!(
        Api::<RoleBinding>::namespaced(c.clone(), &handed)
            .get_opt(objects::OPERATOR_BINDING)
            .await
            .unwrap()
            .is_none(),
        "the operator's binding goes with the namespace's last SR"
    );
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
async fn admission_and_ownership_on_a_bare_control_plane() {
    let Some((client, _)) = kubelet::e2e_client().await else {
        return;
    };
    let _one = ONE_OPERATOR.lock().await;
    let run = Run::start(&client, "t").await;

    // Admission first, without an operator: nothing here is ever deployed.
    admission(&run).await;

    // With the admin's rights, not the ServiceAccount's: the operator's own code must
    // refuse, whatever RBAC and the admission policies would also stop.
    let (stop, operator) = start_operator(client.clone());
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
    let cases: [Case; 10] = [
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
            "no map at the client's configDir",
            |s| {
                s["spec"]["kmod"]
                    .as_object_mut()
                    .unwrap()
                    .remove("mapVolumes");
            },
            "client.configDir /etc/openafs is not the target of any kmod.mapVolumes entry",
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
        &format!("SpecialResource {} to be deleted", run.sr_name(suffix)),
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
