//! The reconcile against an in-memory API server (tower-test mock): objects built and
//! applied, steady state without writes, taints, overlaps, unmapped kernels, deletion
//! node by node, and a rolling update with budget 1 played to the end.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use afs_operator::controller::{Context, reconcile};
use afs_operator::crd::SpecialResource;
use afs_operator::labels;
use afs_operator::metrics::Metrics;
use afs_operator::objects::OperatorAccount;
use common::FakeApi;
use kube::runtime::controller::Action;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};

const SRS: &str = "/apis/afs.csi.auristor.com/v1alpha1/specialresources";
const NODES: &str = "/api/v1/nodes";
const DAEMON_SETS: &str = "/apis/apps/v1/daemonsets";
const CSI_NODES: &str = "/apis/storage.k8s.io/v1/csinodes";
const ROLE_BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/rolebindings";
const CSI_DRIVERS: &str = "/apis/storage.k8s.io/v1/csidrivers";
const NAMESPACES: &str = "/api/v1/namespaces";
const EVENTS: &str = "/apis/events.k8s.io/v1/events";
const DRIVER: &str = "auristorfs.csi.auristor.com";

fn sr(name: &str, group: &str, version: &str) -> Value {
    json!({
        "apiVersion": "afs.csi.auristor.com/v1alpha1",
        "kind": "SpecialResource",
        "metadata": {"name": name, "generation": 1},
        "spec": {
            "namespace": format!("afs-{name}"),
            "nodeSelector": {"afs-group": group},
            "kmod": {
                "module": "kafs",
                "version": version,
                "kernelMappings": [{"regexp": "6\\.1\\..*", "containerImage": "registry.example/kmod:${KERNEL_FULL_VERSION}"}]
            },
            "csi": {"image": "registry.example/afs-csi", "version": "1.0.0", "cacheManager": "kafs", "allowedCells": ["example.com"]},
            "rollout": {"maxUnavailable": 1}
        }
    })
}

fn node(name: &str, group: &str, kernel: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"afs-group": group}},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kernelVersion": kernel, "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": "",
                "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "", "operatingSystem": "linux", "architecture": "amd64"}
        }
    })
}

struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
    writer: Writer<SpecialResource>,
}

impl Harness {
    fn new() -> Self {
        Self::new_as(OperatorAccount::default())
    }

    /// An operator running as `account`.
    fn new_as(account: OperatorAccount) -> Self {
        let api = FakeApi::default();
        let writer = Writer::<SpecialResource>::default();
        let ctx = Arc::new(
            Context::new(
                api.client(),
                Arc::new(Metrics::default()),
                writer.as_reader(),
            )
            .with_account(account),
        );
        Self { api, ctx, writer }
    }

    /// Every request since the last call, as `METHOD path`.
    fn take_requests(&self) -> Vec<String> {
        let mut state = self.api.state.lock().unwrap();
        let requests = state
            .requests
            .iter()
            .map(|(m, p)| format!("{m} {p}"))
            .collect();
        state.requests.clear();
        requests
    }

    fn sr(&self, name: &str) -> Arc<SpecialResource> {
        Arc::new(serde_json::from_value(self.api.get(SRS, "", name).unwrap()).unwrap())
    }

    /// One reconcile of `name` with the store refreshed from the fake server, as the
    /// controller's reflector would have it.
    async fn reconcile(&mut self, name: &str) {
        self.reconcile_action(name).await;
    }

    /// [`Self::reconcile`], returning when the controller would come back (`None` while
    /// a deletion waits).
    async fn reconcile_action(&mut self, name: &str) -> Option<Action> {
        for o in self.api.list(SRS) {
            let o: SpecialResource = serde_json::from_value(o).unwrap();
            self.writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
        let sr = self.sr(name);
        let result = tokio::time::timeout(Duration::from_secs(1), reconcile(sr, self.ctx.clone()))
            .await
            .expect("reconcile within 1 s");
        match result {
            Ok(action) => Some(action),
            Err(e) => {
                assert!(e.is_waiting(), "reconcile failed: {e}");
                None
            }
        }
    }

    /// Marks the SR deleted, as the API server does while its finalizer is set.
    fn delete_sr(&self, name: &str) {
        let mut deleting = self.api.get(SRS, "", name).unwrap();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-21T01:00:00Z");
        self.api.put(SRS, deleting);
    }

    fn finalized(&self, name: &str) -> bool {
        self.sr(name)
            .metadata
            .finalizers
            .as_ref()
            .is_none_or(Vec::is_empty)
    }

    fn condition(&self, name: &str, type_: &str) -> Value {
        self.status(name)["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn warning_events(&self, reason: &str) -> usize {
        self.api
            .list(EVENTS)
            .iter()
            .filter(|e| e["reason"] == reason && e["type"] == "Warning")
            .count()
    }

    fn node(&self, name: &str) -> Value {
        self.api.get(NODES, "", name).unwrap()
    }

    fn status(&self, name: &str) -> Value {
        self.api.get(SRS, "", name).unwrap()["status"].clone()
    }

    /// Plays kubelet and the DaemonSet controller: every DaemonSet of `namespace` gets a
    /// Ready pod at its template's revision on each node it selects (unless one is
    /// there), kmod-manager's ready label is set and the driver is registered.
    fn play_kubelet(&self, namespace: &str) {
        let nodes = self.api.list(NODES);
        for ds in self
            .api
            .list(DAEMON_SETS)
            .into_iter()
            .filter(|d| d["metadata"]["namespace"] == namespace)
        {
            let template = &ds["spec"]["template"];
            let selector = template["spec"]["nodeSelector"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for n in &nodes {
                let node_name = n["metadata"]["name"].as_str().unwrap();
                if !selector
                    .iter()
                    .all(|(k, v)| &n["metadata"]["labels"][k] == v)
                {
                    continue;
                }
                let pod_name = format!("{}-{node_name}", ds["metadata"]["name"].as_str().unwrap());
                let existing = self
                    .api
                    .get("/api/v1/namespaces/x/pods", namespace, &pod_name);
                if existing.is_some() {
                    continue;
                }
                let mut labels = template["metadata"]["labels"].clone();
                labels["pod"] = json!(pod_name);
                self.api.put(
                    &format!("/api/v1/namespaces/{namespace}/pods"),
                    json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod_name, "namespace": namespace, "labels": labels},
                        "spec": {"nodeName": node_name, "containers": [{"name": "c"}]},
                        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
                    }),
                );
                let mut updated = self.node(node_name);
                updated["metadata"]["labels"][labels::KMOD_READY_LABEL] = json!("true");
                updated["metadata"]["annotations"][labels::PUBLISHED_VOLUMES_ANNOTATION] =
                    json!(self.afs_pods_on(node_name).to_string());
                self.api.put(NODES, updated);
                self.api.put(
                    CSI_NODES,
                    json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": node_name},
                        "spec": {"drivers": [{"name": DRIVER, "nodeID": node_name}]}}),
                );
            }
        }
    }

    /// Plays the DaemonSet controller on released nodes: their SR pods go.
    fn remove_released_pods(&self, namespace: &str) {
        for p in self.api.list("/api/v1/pods") {
            let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
            let released = self
                .api
                .get(NODES, "", node)
                .is_some_and(|n| n["metadata"]["labels"][labels::RELEASE_LABEL].is_string());
            if p["metadata"]["namespace"] == namespace && released {
                self.api.remove(
                    "/api/v1/namespaces/x/pods",
                    namespace,
                    p["metadata"]["name"].as_str().unwrap(),
                );
            }
        }
    }

    fn afs_pods_on(&self, node: &str) -> usize {
        self.api
            .list("/api/v1/pods")
            .iter()
            .filter(|p| p["spec"]["nodeName"] == node && p["metadata"]["labels"]["uses"] == "afs")
            .count()
    }

    fn put_afs_pod(&self, name: &str, node: &str, extra_labels: Value) {
        let mut labels = json!({"uses": "afs"});
        json_patch::merge(&mut labels, &extra_labels);
        self.api.put(
            "/api/v1/namespaces/apps/pods",
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "apps", "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c"}],
                    "volumes": [{"name": "afs", "csi": {"driver": DRIVER, "volumeAttributes": {"mount-type": "root"}}}]},
                "status": {"phase": "Running"}
            }),
        );
    }
}

fn taints(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| t["key"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn builds_everything_then_a_steady_state_reconcile_writes_nothing() {
    let mut h = Harness::new();
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    for (n, k) in [
        ("n1", "6.1.0-56-amd64"),
        ("n2", "6.1.0-56-amd64"),
        ("n3", "6.1.0-57-amd64"),
    ] {
        h.api.put(NODES, node(n, "g1", k));
    }
    h.api.put(NODES, node("other", "g2", "6.1.0-56-amd64"));

    h.reconcile("group-1").await; // adds the finalizer
    assert_eq!(
        h.sr("group-1").metadata.finalizers.as_deref(),
        Some(&[labels::FINALIZER.to_owned()][..])
    );
    h.reconcile("group-1").await;
    let daemon_sets: Vec<String> = h
        .api
        .list(DAEMON_SETS)
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        daemon_sets.len(),
        3,
        "two kernels -> two kmod DaemonSets, plus the CSI node plugin: {daemon_sets:?}"
    );
    assert!(
        h.api
            .get("/apis/storage.k8s.io/v1/csidrivers", "", DRIVER)
            .is_some()
    );
    assert!(h.api.get("/api/v1/namespaces", "", "afs-group-1").is_some());
    for n in ["n1", "n2", "n3"] {
        assert!(
            taints(&h.node(n)).contains(&labels::READINESS_TAINT.to_owned()),
            "{n} held until ready"
        );
        assert!(h.node(n)["metadata"]["labels"][labels::KERNEL_LABEL].is_string());
    }
    assert!(
        taints(&h.node("other")).is_empty(),
        "a node of another group is not touched"
    );
    assert_eq!(h.status("group-1")["state"], "Progressing");

    h.play_kubelet("afs-group-1");
    h.reconcile("group-1").await;
    for n in ["n1", "n2", "n3"] {
        assert!(
            taints(&h.node(n)).is_empty(),
            "{n}: module loaded and driver registered: taint removed"
        );
    }
    let status = h.status("group-1");
    assert_eq!(status["state"], "Ready", "{status}");
    assert_eq!(status["readyNodes"], "3/3");
    h.api.take_writes();
    let before = h.ctx.metrics.writes();
    h.reconcile("group-1").await;
    assert_eq!(
        h.api.take_writes(),
        Vec::<String>::new(),
        "steady state makes no write request"
    );
    assert_eq!(h.ctx.metrics.writes(), before);
}

#[tokio::test]
async fn a_kernel_without_mapping_degrades_the_sr_and_keeps_the_node_tainted() {
    let mut h = Harness::new();
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    h.api.put(NODES, node("n1", "g1", "6.1.0-56-amd64"));
    h.api.put(NODES, node("rt", "g1", "5.14.0-rt21"));
    h.reconcile("group-1").await;
    h.reconcile("group-1").await;
    h.play_kubelet("afs-group-1");
    h.reconcile("group-1").await;
    let status = h.status("group-1");
    assert_eq!(status["state"], "Degraded");
    let degraded = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "KernelWithoutMapping");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("5.14.0-rt21"),
        "{degraded}"
    );
    assert!(taints(&h.node("rt")).contains(&labels::READINESS_TAINT.to_owned()));
    assert!(taints(&h.node("n1")).is_empty());
    let events = h.api.list("/apis/events.k8s.io/v1/events");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "KernelWithoutMapping" && e["type"] == "Warning"),
        "{events:?}"
    );
}

#[tokio::test]
async fn overlapping_groups_refuse_the_newer_sr_which_deploys_nothing() {
    let mut h = Harness::new();
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    let mut newer = sr("group-x", "g1", "2.0.0");
    newer["metadata"]["creationTimestamp"] = json!("2026-11-22T00:00:00Z");
    h.api.put(SRS, newer);
    h.api.put(NODES, node("n1", "g1", "6.1.0-56-amd64"));
    for _ in 0..2 {
        h.reconcile("group-1").await;
        h.reconcile("group-x").await;
    }
    let status = h.status("group-x");
    assert_eq!(status["state"], "Conflict");
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("n1") && message.contains("group-1"),
        "{message}"
    );
    assert!(
        h.api
            .list(DAEMON_SETS)
            .iter()
            .all(|d| d["metadata"]["namespace"] == "afs-group-1")
    );
    let older = h.status("group-1");
    let degraded = older["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["reason"], "NodeGroupOverlap", "{older}");
}

fn state(node: &Value) -> String {
    node["metadata"]["labels"][labels::UPGRADE_STATE_LABEL]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn cordoned(node: &Value) -> bool {
    node["spec"]["unschedulable"] == true
}

/// A new module version rolls out node by node with maxUnavailable 1: the admin's cordon
/// is kept, evictable AFS pods are evicted, the non-interruptible one is waited for,
/// the module pod is replaced only on a node with no AFS pod left.
#[tokio::test]
async fn rolling_update_with_budget_one_admin_cordon_and_a_non_interruptible_pod() {
    let mut h = Harness::new();
    let mut spec = sr("group-1", "g1", "1.0.0");
    spec["spec"]["rollout"]["podNonInterruptLabels"] = json!({"matchLabels": {"critical": "true"}});
    h.api.put(SRS, spec);
    for n in ["n1", "n2", "n3"] {
        h.api.put(NODES, node(n, "g1", "6.1.0-56-amd64"));
    }
    h.reconcile("group-1").await;
    h.reconcile("group-1").await;
    h.play_kubelet("afs-group-1");
    h.reconcile("group-1").await;
    assert_eq!(h.status("group-1")["state"], "Ready");
    h.put_afs_pod("web", "n1", json!({}));
    h.put_afs_pod("job", "n3", json!({"critical": "true"}));
    let mut admin = h.node("n2");
    admin["spec"]["unschedulable"] = json!(true);
    h.api.put(NODES, admin);

    let mut updated = h.api.get(SRS, "", "group-1").unwrap();
    updated["spec"]["kmod"]["version"] = json!("1.1.0");
    updated["metadata"]["generation"] = json!(2);
    h.api.put(SRS, updated);

    let mut finished_at = None;
    for step in 0..60 {
        h.reconcile("group-1").await;
        let nodes: Vec<Value> = ["n1", "n2", "n3"].iter().map(|n| h.node(n)).collect();
        let operator_cordoned = nodes
            .iter()
            .filter(|n| {
                n["metadata"]["annotations"][labels::CORDONED_BY_OPERATOR_ANNOTATION] == "true"
            })
            .count();
        let unavailable = nodes.iter().filter(|n| cordoned(n)).count();
        assert!(
            unavailable <= 1 || operator_cordoned == 0,
            "step {step}: budget exceeded: {nodes:?}"
        );
        assert!(
            h.api
                .get("/api/v1/namespaces/apps/pods", "apps", "job")
                .is_some()
                || step >= 20,
            "the non-interruptible pod is never evicted"
        );
        // Module pods are replaced only where no AFS pod is left.
        for n in &nodes {
            let name = n["metadata"]["name"].as_str().unwrap();
            let has_kmod = h.api.list("/api/v1/pods").iter().any(|p| {
                p["spec"]["nodeName"] == name
                    && p["metadata"]["labels"][labels::COMPONENT_LABEL] == "kmod"
            });
            assert!(
                has_kmod || h.afs_pods_on(name) == 0,
                "step {step}: {name} lost its module pod while AFS pods run there"
            );
        }
        if step == 20 {
            // The job ends by itself; the admin then uncordons the node they cordoned.
            h.api.remove("/api/v1/namespaces/apps/pods", "apps", "job");
        }
        if state(&h.node("n2")) == "upgrade-done" && cordoned(&h.node("n2")) && step > 20 {
            let mut n2 = h.node("n2");
            n2["spec"]["unschedulable"] = json!(false);
            h.api.put(NODES, n2);
        }
        h.play_kubelet("afs-group-1");
        if ["n1", "n2", "n3"]
            .iter()
            .all(|n| state(&h.node(n)) == "upgrade-done")
            && h.status("group-1")["state"] == "Ready"
        {
            finished_at = Some(step);
            break;
        }
    }
    let status = h.status("group-1");
    assert!(finished_at.is_some(), "rollout finished: {status}");
    assert!(
        h.api
            .get("/api/v1/namespaces/apps/pods", "apps", "web")
            .is_none(),
        "the evictable pod was evicted"
    );
    for n in ["n1", "n3"] {
        assert!(
            !cordoned(&h.node(n)),
            "{n}: the operator's cordon is lifted"
        );
    }
    let revision = status["revision"].as_str().unwrap();
    let kmod_pods: Vec<Value> = h
        .api
        .list("/api/v1/pods")
        .into_iter()
        .filter(|p| p["metadata"]["labels"][labels::COMPONENT_LABEL] == "kmod")
        .collect();
    assert_eq!(kmod_pods.len(), 3);
    assert!(
        kmod_pods
            .iter()
            .all(|p| p["metadata"]["labels"][labels::REVISION_LABEL] == revision)
    );
}

/// Deleting an SR releases nodes one by one: a node whose pods still use AFS volumes
/// keeps its module and is named in the status until they are gone.
#[tokio::test]
async fn deletion_waits_for_afs_pods_node_by_node_then_removes_everything() {
    let mut h = Harness::new();
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    for n in ["n1", "n2"] {
        h.api.put(NODES, node(n, "g1", "6.1.0-56-amd64"));
    }
    h.reconcile("group-1").await;
    h.reconcile("group-1").await;
    h.play_kubelet("afs-group-1");
    h.reconcile("group-1").await;
    h.put_afs_pod("web", "n1", json!({}));

    let mut deleting = h.api.get(SRS, "", "group-1").unwrap();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-21T01:00:00Z");
    h.api.put(SRS, deleting);
    for _ in 0..3 {
        h.reconcile("group-1").await;
        h.remove_released_pods("afs-group-1");
    }
    let status = h.status("group-1");
    assert_eq!(status["state"], "Deleting");
    assert_eq!(
        status["inUse"],
        json!([{"node": "n1", "pods": ["apps/web"]}]),
        "{status}"
    );
    let kmod_nodes: Vec<String> = h
        .api
        .list("/api/v1/pods")
        .iter()
        .filter(|p| p["metadata"]["labels"][labels::COMPONENT_LABEL] == "kmod")
        .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kmod_nodes,
        ["n1"],
        "n2 released, n1 keeps its module while web runs"
    );
    assert!(
        h.api
            .get(DAEMON_SETS, "afs-group-1", "group-1-csi-node")
            .is_some(),
        "the CSI node plugin stays to unpublish"
    );

    h.api.remove("/api/v1/namespaces/apps/pods", "apps", "web");
    for _ in 0..3 {
        h.reconcile("group-1").await;
        h.remove_released_pods("afs-group-1");
    }
    assert!(
        h.api.list(DAEMON_SETS).is_empty(),
        "{} {:?}",
        h.status("group-1"),
        h.api
            .list("/api/v1/pods")
            .iter()
            .map(|p| p["metadata"]["name"].clone())
            .collect::<Vec<_>>()
    );
    assert!(
        h.api
            .get("/apis/storage.k8s.io/v1/csidrivers", "", DRIVER)
            .is_none(),
        "the last SR of the driver takes the CSIDriver"
    );
    assert!(
        h.sr("group-1")
            .metadata
            .finalizers
            .as_ref()
            .is_none_or(Vec::is_empty),
        "finalizer removed"
    );
    for n in ["n1", "n2"] {
        let node = h.node(n);
        assert!(taints(&node).is_empty(), "{n}: {node}");
        let ours: Vec<&String> = node["metadata"]["labels"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("afs.csi.auristor.com/"))
            .collect();
        assert!(ours.is_empty(), "{n}: {ours:?}");
    }
}

#[tokio::test]
async fn deletion_does_not_wait_for_module_pods_that_were_never_scheduled() {
    let mut h = Harness::new();
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    h.api.put(NODES, node("n1", "g1", "6.1.0-56-amd64"));
    h.reconcile("group-1").await;
    h.reconcile("group-1").await;
    // The DaemonSet controller made a pod that no scheduler ever placed.
    let template =
        h.api.list(DAEMON_SETS).into_iter().find(|d| {
            d["spec"]["template"]["metadata"]["labels"][labels::COMPONENT_LABEL] == "kmod"
        });
    let labels =
        template.expect("kmod DaemonSet")["spec"]["template"]["metadata"]["labels"].clone();
    h.api.put(
        "/api/v1/namespaces/afs-group-1/pods",
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kmod-pending", "namespace": "afs-group-1", "labels": labels},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}}),
    );
    let mut deleting = h.api.get(SRS, "", "group-1").unwrap();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-21T01:00:00Z");
    h.api.put(SRS, deleting);
    h.reconcile("group-1").await;
    assert!(
        h.api.list(DAEMON_SETS).is_empty(),
        "a pod that loaded nothing does not hold the deletion: {}",
        h.status("group-1")
    );
    assert!(
        h.sr("group-1")
            .metadata
            .finalizers
            .as_ref()
            .is_none_or(Vec::is_empty),
        "finalizer removed"
    );
}

/// The operator holds no namespaced write in the SR's namespace but through the
/// RoleBinding it makes there for the account it runs as: right after the namespace,
/// before any other request into the namespace (but the cluster-wide pod list); it is
/// removed with the SR, after everything else there, and never made again by a late
/// pass.
#[tokio::test]
async fn the_operator_binds_its_role_in_the_sr_namespace_first_and_removes_it_last() {
    let mut h = Harness::new_as(OperatorAccount {
        name: "ops".to_owned(),
        namespace: "ops-system".to_owned(),
    });
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    h.api.put(NODES, node("n1", "g1", "6.1.0-56-amd64"));
    h.reconcile("group-1").await; // adds the finalizer
    h.take_requests();
    h.reconcile("group-1").await;
    let requests = h.take_requests();
    let in_namespace = "/namespaces/afs-group-1/";
    let binding_path = format!(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/afs-group-1/rolebindings/{}",
        afs_operator::objects::OPERATOR_BINDING
    );
    let position = |request: &str| {
        requests
            .iter()
            .position(|r| r == request)
            .unwrap_or_else(|| panic!("no {request} in {requests:#?}"))
    };
    // Created marked as the SR's (see the namespace ownership tests).
    let namespace = position("POST /api/v1/namespaces");
    let bound = position(&format!("PATCH {binding_path}"));
    assert!(namespace < bound, "{requests:#?}");
    let before: Vec<&String> = requests[..bound]
        .iter()
        .filter(|r| r.contains(in_namespace))
        .filter(|r| {
            **r != "GET /api/v1/namespaces/afs-group-1/pods" && **r != format!("GET {binding_path}")
        })
        .collect();
    assert!(
        before.is_empty(),
        "requests into the namespace before the operator's binding: {before:?}"
    );
    assert!(
        requests[bound + 1..]
            .iter()
            .any(|r| r.contains(in_namespace)),
        "the SR's objects follow: {requests:#?}"
    );
    let binding = h
        .api
        .get(
            ROLE_BINDINGS,
            "afs-group-1",
            afs_operator::objects::OPERATOR_BINDING,
        )
        .expect("the operator's binding");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": afs_operator::objects::OPERATOR_NAMESPACE_ROLE})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "ops", "namespace": "ops-system"}])
    );
    // The SR goes (a namespace is one SR's, see the ownership tests): the binding goes
    // after everything else there.
    let mut deleting = h.api.get(SRS, "", "group-1").unwrap();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-21T02:00:00Z");
    h.api.put(SRS, deleting);
    h.take_requests();
    h.reconcile("group-1").await;
    let requests = h.take_requests();
    let unbound = requests
        .iter()
        .position(|r| *r == format!("DELETE {binding_path}"))
        .unwrap_or_else(|| panic!("the binding is deleted: {requests:#?}"));
    assert!(
        requests[unbound + 1..]
            .iter()
            .all(|r| !r.contains(in_namespace)),
        "nothing in the namespace after the binding is gone: {requests:#?}"
    );
    assert!(
        requests[..unbound]
            .iter()
            .any(|r| r.starts_with("DELETE ") && r.contains(in_namespace)),
        "{requests:#?}"
    );
    assert!(
        h.api
            .get(
                ROLE_BINDINGS,
                "afs-group-1",
                afs_operator::objects::OPERATOR_BINDING
            )
            .is_none()
    );

    // A late pass on the SR (a cache still showing it with its finalizer, as happens
    // right after the finalizer goes) must not bind the operator there again.
    let mut stale = h.api.get(SRS, "", "group-1").unwrap();
    stale["metadata"]["finalizers"] = json!([labels::FINALIZER]);
    h.api.put(SRS, stale);
    h.take_requests();
    h.reconcile("group-1").await;
    let requests = h.take_requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("PATCH ") && r.contains(in_namespace)),
        "{requests:#?}"
    );
    assert!(
        h.api
            .get(
                ROLE_BINDINGS,
                "afs-group-1",
                afs_operator::objects::OPERATOR_BINDING
            )
            .is_none()
    );
}

/// Write requests (as `METHOD path`) that touch `path` or create into its collection.
fn touching<'a>(writes: &'a [String], collection: &str, name: &str) -> Vec<&'a String> {
    writes
        .iter()
        .filter(|w| {
            let path = w.split_once(' ').map_or("", |(_, p)| p);
            path == collection || path.starts_with(&format!("{collection}/{name}"))
        })
        .collect()
}

/// Issue 12, case 11: `spec.namespace` naming a namespace the operator did not create
/// (here a tenant's) is refused: not labelled privileged, nothing deployed into it, no
/// node touched, a Warning event once, and a calm requeue; handing the namespace over
/// (the annotation) lets the SR deploy.
#[tokio::test]
async fn a_namespace_the_operator_did_not_create_is_refused_and_never_labelled() {
    let mut h = Harness::new();
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    h.api.put(NODES, node("n1", "g1", "6.1.0-56-amd64"));
    let tenant = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "afs-group-1", "labels": {"team": "tenant-a"}}});
    h.api.put(NAMESPACES, tenant);
    let before = h.api.get(NAMESPACES, "", "afs-group-1").unwrap();

    h.reconcile("group-1").await; // adds the finalizer
    let action = h.reconcile_action("group-1").await;
    let writes = h.api.take_writes();
    assert_eq!(
        touching(&writes, NAMESPACES, "afs-group-1"),
        Vec::<&String>::new(),
        "no request writes the namespace: {writes:?}"
    );
    assert_eq!(
        h.api.get(NAMESPACES, "", "afs-group-1").unwrap(),
        before,
        "not labelled"
    );
    for collection in [
        DAEMON_SETS,
        "/api/v1/serviceaccounts",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        CSI_DRIVERS,
    ] {
        assert!(
            h.api.list(collection).is_empty(),
            "nothing deployed: {collection}"
        );
    }
    assert!(
        taints(&h.node("n1")).is_empty()
            && h.node("n1")["metadata"]["labels"][labels::KERNEL_LABEL].is_null(),
        "no node touched: {}",
        h.node("n1")
    );
    assert_eq!(h.status("group-1")["state"], "Refused");
    let degraded = h.condition("group-1", "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "NamespaceNotOwned");
    let message = degraded["message"].as_str().unwrap();
    for needle in [
        "namespace afs-group-1 already exists",
        "kubectl annotate namespace afs-group-1 afs.csi.auristor.com/namespace-of=group-1",
    ] {
        assert!(message.contains(needle), "{needle:?} in {message}");
    }
    assert_eq!(h.warning_events("NamespaceNotOwned"), 1);
    assert_eq!(
        action,
        Some(Action::requeue(Duration::from_secs(60))),
        "no hot loop"
    );

    // Again: the same refusal writes nothing (no second event, no status change).
    h.reconcile("group-1").await;
    assert_eq!(h.api.take_writes(), Vec::<String>::new());

    // The admin hands the namespace over: the SR deploys into it.
    let mut handed = h.api.get(NAMESPACES, "", "afs-group-1").unwrap();
    handed["metadata"]["annotations"] = json!({labels::NAMESPACE_OF_ANNOTATION: "group-1"});
    h.api.put(NAMESPACES, handed);
    h.reconcile("group-1").await;
    assert_eq!(h.status("group-1")["state"], "Progressing");
    assert!(!h.api.list(DAEMON_SETS).is_empty());
    let ns = h.api.get(NAMESPACES, "", "afs-group-1").unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

/// Issue 12, case 11: a namespace the operator creates is marked as the SR's, created
/// (not applied: it never takes over one made meanwhile), and keeps neither the
/// privileged level nor the managed-by label once the SR is gone.
#[tokio::test]
async fn the_namespace_is_created_marked_and_its_labels_go_with_the_sr() {
    let mut h = Harness::new();
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    h.api.put(NODES, node("n1", "g1", "6.1.0-56-amd64"));
    h.reconcile("group-1").await;
    h.reconcile("group-1").await;
    let writes = h.api.take_writes();
    assert!(
        writes.contains(&format!("POST {NAMESPACES}")),
        "created: {writes:?}"
    );
    let ns = h.api.get(NAMESPACES, "", "afs-group-1").unwrap();
    assert_eq!(
        ns["metadata"]["annotations"][labels::NAMESPACE_OF_ANNOTATION],
        "group-1"
    );
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    h.play_kubelet("afs-group-1");
    h.reconcile("group-1").await;

    h.delete_sr("group-1");
    for _ in 0..3 {
        h.reconcile("group-1").await;
        h.remove_released_pods("afs-group-1");
    }
    assert!(h.finalized("group-1"), "{}", h.status("group-1"));
    let ns = h
        .api
        .get(NAMESPACES, "", "afs-group-1")
        .expect("the namespace stays: it holds the user's maps");
    let labels = ns["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        !labels.contains_key("pod-security.kubernetes.io/enforce")
            && !labels.contains_key(labels::MANAGED_BY_LABEL),
        "the operator's labels are taken back: {ns}"
    );
    assert_eq!(
        ns["metadata"]["annotations"][labels::NAMESPACE_OF_ANNOTATION],
        "group-1",
        "the mark stays (it grants nothing; afsctl undeploy reads it)"
    );
}

/// Issue 12, case 13: `csi.driverName` naming another vendor's CSIDriver is refused: the
/// CSIDriver is never applied, owner-referenced or deleted, not even when the SR goes.
#[tokio::test]
async fn another_vendors_csi_driver_is_refused_and_outlives_the_sr() {
    let mut h = Harness::new();
    let mut spec = sr("group-1", "g1", "1.0.0");
    spec["spec"]["csi"]["driverName"] = json!("ebs.csi.aws.com");
    h.api.put(SRS, spec);
    h.api.put(NODES, node("n1", "g1", "6.1.0-56-amd64"));
    h.api.put(
        CSI_DRIVERS,
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
            "metadata": {"name": "ebs.csi.aws.com", "labels": {"app.kubernetes.io/name": "aws-ebs-csi-driver"}},
            "spec": {"attachRequired": true, "podInfoOnMount": false, "volumeLifecycleModes": ["Persistent"]}}),
    );
    let vendors = h.api.get(CSI_DRIVERS, "", "ebs.csi.aws.com").unwrap();

    h.reconcile("group-1").await;
    h.reconcile("group-1").await;
    let writes = h.api.take_writes();
    assert_eq!(
        touching(&writes, CSI_DRIVERS, "ebs.csi.aws.com"),
        Vec::<&String>::new(),
        "{writes:?}"
    );
    assert_eq!(
        h.api.get(CSI_DRIVERS, "", "ebs.csi.aws.com").unwrap(),
        vendors
    );
    assert_eq!(h.status("group-1")["state"], "Refused");
    let degraded = h.condition("group-1", "Degraded");
    assert_eq!(degraded["reason"], "CSIDriverNotOwned");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("CSIDriver ebs.csi.aws.com already exists"),
        "{degraded}"
    );
    assert_eq!(h.warning_events("CSIDriverNotOwned"), 1);
    assert!(
        h.api.get(NAMESPACES, "", "afs-group-1").is_none() && h.api.list(DAEMON_SETS).is_empty(),
        "nothing of the SR is deployed"
    );

    h.delete_sr("group-1");
    h.reconcile("group-1").await;
    assert!(h.finalized("group-1"), "{}", h.status("group-1"));
    let writes = h.api.take_writes();
    assert_eq!(
        touching(&writes, CSI_DRIVERS, "ebs.csi.aws.com"),
        Vec::<&String>::new(),
        "{writes:?}"
    );
    assert_eq!(
        h.api.get(CSI_DRIVERS, "", "ebs.csi.aws.com").unwrap(),
        vendors,
        "the vendor's CSIDriver outlives the SR, untouched"
    );
}

/// `csi.allowEphemeral`: the shared CSIDriver lists the Ephemeral mode only while an SR
/// of the driver allows inline volumes, so kubelet refuses them otherwise. The mode is
/// immutable in Kubernetes: the operator replaces its own CSIDriver.
#[tokio::test]
async fn inline_volumes_need_an_sr_that_allows_them() {
    let mut h = Harness::new();
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    h.api.put(NODES, node("n1", "g1", "6.1.0-56-amd64"));
    h.reconcile("group-1").await;
    h.reconcile("group-1").await;
    let modes = |h: &Harness| {
        h.api.get(CSI_DRIVERS, "", DRIVER).unwrap()["spec"]["volumeLifecycleModes"].clone()
    };
    assert_eq!(modes(&h), json!(["Persistent"]));

    let mut allowing = h.api.get(SRS, "", "group-1").unwrap();
    allowing["spec"]["csi"]["allowEphemeral"] = json!(true);
    allowing["metadata"]["generation"] = json!(2);
    h.api.put(SRS, allowing);
    h.api.take_writes();
    h.reconcile("group-1").await;
    assert_eq!(modes(&h), json!(["Persistent", "Ephemeral"]));
    let writes = h.api.take_writes();
    assert_eq!(
        touching(&writes, CSI_DRIVERS, DRIVER),
        [
            &format!("DELETE {CSI_DRIVERS}/{DRIVER}"),
            &format!("POST {CSI_DRIVERS}")
        ],
        "replaced, as the API server refuses to change the modes"
    );
    let owners = h.api.get(CSI_DRIVERS, "", DRIVER).unwrap()["metadata"]["ownerReferences"].clone();
    assert_eq!(owners[0]["name"], "group-1", "{owners}");
    let node_plugin = h
        .api
        .get(DAEMON_SETS, "afs-group-1", "group-1-csi-node")
        .unwrap();
    let env = &node_plugin["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "CSI_ALLOW_EPHEMERAL" && e["value"] == "true"),
        "{env}"
    );
}

/// An SR stored before `csi.allowedCells` existed (admission now requires it) still
/// deploys, fails closed (no cell allowed) and says why.
#[tokio::test]
async fn an_sr_without_allowed_cells_fails_closed_and_says_so() {
    let mut h = Harness::new();
    let mut old = sr("group-1", "g1", "1.0.0");
    old["spec"]["csi"]
        .as_object_mut()
        .unwrap()
        .remove("allowedCells");
    h.api.put(SRS, old);
    h.api.put(NODES, node("n1", "g1", "6.1.0-56-amd64"));
    h.reconcile("group-1").await;
    h.reconcile("group-1").await;
    let degraded = h.condition("group-1", "Degraded");
    assert_eq!(degraded["reason"], "AllowedCellsMissing", "{degraded}");
    let node_plugin = h
        .api
        .get(DAEMON_SETS, "afs-group-1", "group-1-csi-node")
        .unwrap();
    let env = &node_plugin["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "CSI_ALLOWED_CELLS" && e["value"] == ""),
        "{env}"
    );
}

/// A node whose module or AFS client kmod-manager reports down is named in the SR's
/// Ready condition with kmod-manager's own words (its status annotation).
#[tokio::test]
async fn a_node_whose_afs_client_is_down_is_named_in_the_ready_condition() {
    let mut h = Harness::new();
    h.api.put(SRS, sr("group-1", "g1", "1.0.0"));
    for n in ["n1", "n2"] {
        h.api.put(NODES, node(n, "g1", "6.1.0-56-amd64"));
    }
    h.reconcile("group-1").await;
    h.reconcile("group-1").await;
    h.play_kubelet("afs-group-1");
    let report = |h: &Harness, ready: &str, status: &str| {
        let mut n2 = h.node("n2");
        n2["metadata"]["labels"][labels::KMOD_READY_LABEL] = json!(ready);
        n2["metadata"]["annotations"][labels::KMOD_STATUS_ANNOTATION] = json!(status);
        h.api.put(NODES, n2);
    };
    report(&h, "false", "afsd exited (status 1)");
    h.reconcile("group-1").await;
    let ready = h.condition("group-1", "Ready");
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "NodesNotReady");
    assert_eq!(
        ready["message"],
        "1/2 nodes ready; kmod-manager reports n2: afsd exited (status 1)"
    );
    assert!(
        taints(&h.node("n2")).contains(&labels::READINESS_TAINT.to_owned()),
        "held until its client is back"
    );

    report(&h, "true", "yfs loaded");
    h.reconcile("group-1").await;
    let ready = h.condition("group-1", "Ready");
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(ready["message"], "2/2 nodes ready");
}
