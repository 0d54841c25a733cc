//! Plays the kubelet's part on a bare control plane (no kubelet, no scheduler) for the
//! opt-in end-to-end tests: binds DaemonSet pods, marks pods Running and Ready, reports
//! the module loaded and the published volumes as kmod-manager would, registers the
//! driver in CSINode, and finishes terminating pods.

#![allow(
    dead_code,
    unreachable_pub,
    missing_debug_implementations,
    clippy::unwrap_used
)]

use std::collections::BTreeMap;

use afs_operator::labels;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::CSINode;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

pub const DRIVER: &str = "auristorfs.csi.auristor.com";
const MANAGER: &str = "afs-e2e";

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// A client for the cluster named by `AFS_E2E_KUBECONFIG` (with its path), or `None`
/// after saying why the test skips.
pub async fn e2e_client() -> Option<(Client, String)> {
    let Ok(path) = std::env::var("AFS_E2E_KUBECONFIG") else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "skipping end-to-end test: set AFS_E2E_KUBECONFIG to the kubeconfig of a disposable cluster"
            );
        }
        return None;
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig readable");
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kubeconfig valid");
    Some((Client::try_from(config).expect("client"), path))
}

#[derive(Clone)]
pub struct Kubelet {
    pub client: Client,
    /// Label selector of the nodes played.
    pub node_selector: String,
}

impl Kubelet {
    /// One pass of the kubelet's part on the selected nodes.
    pub async fn pass(&self) {
        let nodes_api = Api::<Node>::all(self.client.clone());
        let our_nodes: Vec<String> = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default().labels(&self.node_selector))
            .await
            .unwrap()
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let mut afs_on: BTreeMap<String, usize> = BTreeMap::new();
        for pod in &pods {
            let ns = pod.namespace().unwrap_or_default();
            let api = Api::<Pod>::namespaced(self.client.clone(), &ns);
            let bound = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            let target = bound.clone().or_else(|| affinity_node(pod));
            let Some(node) = target.filter(|n| our_nodes.contains(n)) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                if pod
                    .labels()
                    .get(labels::COMPONENT_LABEL)
                    .map(String::as_str)
                    == Some("kmod")
                {
                    // kmod-manager's shutdown report, before its pod is gone.
                    let patch =
                        json!({"metadata": {"labels": {labels::KMOD_READY_LABEL: "false"}}});
                    nodes_api
                        .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .unwrap();
                }
                // Containers stopped, volumes unmounted: the kubelet removes the pod.
                let _ = api
                    .delete(
                        &pod.name_any(),
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
                continue;
            }
            if bound.is_none() {
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name_any()},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                let _ = api
                    .create_subresource::<_, Value>(
                        "binding",
                        &pod.name_any(),
                        &PostParams::default(),
                        &binding,
                    )
                    .await;
            }
            if uses_driver(pod) {
                *afs_on.entry(node.clone()).or_default() += 1;
            }
            running(&api, &pod.name_any()).await;
            if pod
                .labels()
                .get(labels::COMPONENT_LABEL)
                .map(String::as_str)
                == Some("csi-node")
            {
                let csi_node = json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": node},
                    "spec": {"drivers": [{"name": DRIVER, "nodeID": node}]}});
                Api::<CSINode>::all(self.client.clone())
                    .patch(&node, &apply(), &Patch::Apply(&csi_node))
                    .await
                    .unwrap();
            }
        }
        for node in &our_nodes {
            let has_kmod = pods.iter().any(|p| {
                p.labels().get(labels::COMPONENT_LABEL).map(String::as_str) == Some("kmod")
                    && p.metadata.deletion_timestamp.is_none()
                    && (p.spec.as_ref().and_then(|s| s.node_name.as_ref()) == Some(node)
                        || affinity_node(p).as_ref() == Some(node))
            });
            if !has_kmod {
                continue;
            }
            // As kmod-manager reports it while it runs.
            let patch = json!({"metadata": {
                "labels": {labels::KMOD_READY_LABEL: "true"},
                "annotations": {labels::PUBLISHED_VOLUMES_ANNOTATION: afs_on.get(node).copied().unwrap_or(0).to_string()},
            }});
            let current = nodes_api.get(node).await.unwrap();
            let same = current.labels().get(labels::KMOD_READY_LABEL)
                == patch["metadata"]["labels"][labels::KMOD_READY_LABEL]
                    .as_str()
                    .map(str::to_owned)
                    .as_ref()
                && current
                    .annotations()
                    .get(labels::PUBLISHED_VOLUMES_ANNOTATION)
                    .map(String::as_str)
                    == patch["metadata"]["annotations"][labels::PUBLISHED_VOLUMES_ANNOTATION]
                        .as_str();
            if !same {
                nodes_api
                    .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .unwrap();
            }
        }
    }
}

/// A Ready node with a Debian 6.1 kernel, as a kubelet registers it.
pub async fn create_node(client: &Client, name: &str, labels: Value) {
    let nodes = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "played by the test",
            "lastHeartbeatTime": "2026-11-21T00:00:00Z", "lastTransitionTime": "2026-11-21T00:00:00Z"}],
        "nodeInfo": {"kernelVersion": "6.1.0-56-amd64", "machineID": "m", "systemUUID": "s", "bootID": "b",
            "kubeProxyVersion": "", "osImage": "Debian", "containerRuntimeVersion": "containerd://2",
            "kubeletVersion": "v1.36.0", "operatingSystem": "linux", "architecture": "amd64"}
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    // As the node lifecycle controller does once the node is Ready.
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .unwrap();
}

/// A Running, Ready app pod on `node` mounting the whole AFS root through the driver
/// (an inline CSI volume).
pub async fn create_afs_pod(pods: &Api<Pod>, name: &str, node: &str, labels: Value) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1"}],
            "volumes": [{"name": "afs", "csi": {"driver": DRIVER, "volumeAttributes": {"mount-type": "root"}}}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    running(pods, name).await;
}

/// An app pod using volumes of the driver inline (what the e2e tests create).
fn uses_driver(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| v.csi.as_ref().is_some_and(|c| c.driver == DRIVER))
}

/// The node a DaemonSet pod is pinned to (the DaemonSet controller sets this affinity).
pub fn affinity_node(pod: &Pod) -> Option<String> {
    let terms = &pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name")?
        .values
        .as_ref()?
        .first()
        .cloned()
}

pub async fn running(api: &Api<Pod>, name: &str) {
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    let Ok(pod) = api.get(name).await else { return };
    let ready = pod
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        let _ = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await;
    }
}
