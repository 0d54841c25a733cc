//! From Kubernetes objects to the planner's view of a node (pure).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use k8s_openapi::api::storage::v1::CSINode;
use kube::ResourceExt;

use crate::crd::SpecialResource;
use crate::labels::{
    COMPONENT_LABEL, CORDONED_BY_OPERATOR_ANNOTATION, KMOD_READY_LABEL, KMOD_STATUS_ANNOTATION,
    PUBLISHED_VOLUMES_ANNOTATION, REVISION_LABEL, UPGRADE_SINCE_ANNOTATION, UPGRADE_STATE_LABEL,
};
use crate::objects::{CSI_NODE_COMPONENT, KMOD_COMPONENT};
use crate::rollout::{self, AfsPod, NodeView, PodView, UPGRADE_TARGET_ANNOTATION, UpgradeState};

/// The NodeReady condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn node_kernel(node: &Node) -> Option<&str> {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kernel_version.as_str())
        .filter(|k| !k.is_empty())
}

pub fn unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Claims (`namespace/name`) bound to persistent volumes of `driver`.
pub fn driver_claims(driver: &str, volumes: &[PersistentVolume]) -> BTreeSet<String> {
    volumes
        .iter()
        .filter_map(|pv| pv.spec.as_ref())
        .filter(|spec| spec.csi.as_ref().is_some_and(|c| c.driver == driver))
        .filter_map(|spec| spec.claim_ref.as_ref())
        .filter_map(|r| {
            Some(format!(
                "{}/{}",
                r.namespace.as_deref()?,
                r.name.as_deref()?
            ))
        })
        .collect()
}

/// The pod mounts a volume of `driver`: an inline CSI volume, a claim bound to one of
/// the driver's volumes, or a generic ephemeral volume whose claim is.
pub fn uses_driver(pod: &Pod, driver: &str, claims: &BTreeSet<String>) -> bool {
    let namespace = pod.namespace().unwrap_or_default();
    let pod_name = pod.name_any();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .any(|v| {
            let claim = v
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
                .or_else(|| {
                    v.ephemeral
                        .as_ref()
                        .map(|_| format!("{pod_name}-{}", v.name))
                });
            v.csi.as_ref().is_some_and(|c| c.driver == driver)
                || claim.is_some_and(|c| claims.contains(&format!("{namespace}/{c}")))
        })
}

/// Pods that are done hold no volumes.
fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// CSI volumes of the driver published on the node, as kmod-manager last reported;
/// `None` when it never did.
pub fn published_volumes(node: &Node) -> Option<u32> {
    node.annotations()
        .get(PUBLISHED_VOLUMES_ANNOTATION)
        .and_then(|v| v.parse().ok())
}

/// Why kmod-manager reports the node's module or AFS client not ready: its status
/// annotation while its ready label is `false` (`None` before it reported, or when
/// ready).
pub fn kmod_not_ready(node: &Node) -> Option<&str> {
    if node.labels().get(KMOD_READY_LABEL).map(String::as_str) != Some("false") {
        return None;
    }
    node.annotations()
        .get(KMOD_STATUS_ANNOTATION)
        .map(String::as_str)
        .filter(|detail| !detail.is_empty())
}

/// Everything the planner needs to know about one node.
#[derive(Debug)]
pub struct NodeFacts<'a> {
    pub node: &'a Node,
    /// Our DaemonSet pods on the node.
    pub kmod_pod: Option<&'a Pod>,
    pub csi_pod: Option<&'a Pod>,
    /// Pods on the node using volumes of the driver, each with "non-interruptible".
    pub afs_pods: Vec<(&'a Pod, bool)>,
    pub csi_node: Option<&'a CSINode>,
    pub driver: &'a str,
}

pub fn node_view(facts: &NodeFacts<'_>) -> NodeView {
    let node = facts.node;
    let labels = node.labels();
    let annotations = node.annotations();
    let pod_view = |pod: &Pod| PodView {
        name: pod.name_any(),
        revision: pod.labels().get(REVISION_LABEL).cloned(),
        ready: pod_ready(pod),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    };
    NodeView {
        name: node.name_any(),
        ready: node_ready(node),
        unschedulable: unschedulable(node),
        cordoned_by_operator: annotations
            .get(CORDONED_BY_OPERATOR_ANNOTATION)
            .is_some_and(|v| v == "true"),
        state: labels
            .get(UPGRADE_STATE_LABEL)
            .map(|l| UpgradeState::from_label(l)),
        state_since: annotations
            .get(UPGRADE_SINCE_ANNOTATION)
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_second()),
        target_revision: annotations.get(UPGRADE_TARGET_ANNOTATION).cloned(),
        kmod_pod: facts.kmod_pod.map(pod_view),
        csi_pod: facts.csi_pod.map(pod_view),
        afs_pods: facts
            .afs_pods
            .iter()
            .filter(|(p, _)| !finished(p))
            .map(|(p, non_interruptible)| AfsPod {
                namespace: p.namespace().unwrap_or_default(),
                name: p.name_any(),
                non_interruptible: *non_interruptible,
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
            .collect(),
        published_volumes: published_volumes(node),
        module_ready: labels.get(KMOD_READY_LABEL).is_some_and(|v| v == "true"),
        driver_registered: facts
            .csi_node
            .is_some_and(|c| c.spec.drivers.iter().any(|d| d.name == facts.driver)),
    }
}

/// The node can mount AFS for pods: module loaded, driver registered, and both of our
/// pods Ready at `revision`. Until then it keeps the readiness taint.
pub fn serves(view: &NodeView, revision: &str) -> bool {
    view.module_ready
        && view.driver_registered
        && [&view.kmod_pod, &view.csi_pod].iter().all(|p| {
            p.as_ref()
                .is_some_and(|p| p.ready && p.revision.as_deref() == Some(revision))
        })
}

/// Pods indexed by the node they run on.
pub fn by_node(pods: &[Pod]) -> BTreeMap<&str, Vec<&Pod>> {
    let mut map: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            map.entry(node).or_default().push(pod);
        }
    }
    map
}

/// What one pass read about an SR's node group.
#[derive(Debug, Default)]
pub struct Observed {
    /// The nodes the SR's selector takes.
    pub nodes: Vec<Node>,
    /// Our DaemonSet pods (kmod and CSI node).
    pub own_pods: Vec<Pod>,
    /// Unfinished pods on the group's nodes using volumes of the driver.
    pub afs_pods: Vec<Pod>,
    pub csi_nodes: Vec<CSINode>,
}

/// `kmod`, `csi-node` or `csi-controller` for our pods.
pub fn component(pod: &Pod) -> Option<&str> {
    pod.labels().get(COMPONENT_LABEL).map(String::as_str)
}

/// [`Observed`] indexed by node, built once per pass.
#[derive(Debug)]
pub struct GroupIndex<'a> {
    sr: &'a SpecialResource,
    observed: &'a Observed,
    own: BTreeMap<&'a str, Vec<&'a Pod>>,
    users: BTreeMap<&'a str, Vec<&'a Pod>>,
}

impl<'a> GroupIndex<'a> {
    pub fn new(sr: &'a SpecialResource, observed: &'a Observed) -> Self {
        Self {
            sr,
            observed,
            own: by_node(&observed.own_pods),
            users: by_node(&observed.afs_pods),
        }
    }

    /// Pods on `node` using volumes of the driver.
    pub fn users(&self, node: &str) -> &[&'a Pod] {
        self.users.get(node).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn runs_own_pods(&self, node: &str) -> bool {
        self.own.contains_key(node)
    }

    /// The planner's view of one of the group's nodes.
    pub fn view(&self, node: &'a Node) -> NodeView {
        let name = node.name_any();
        let mine = self
            .own
            .get(name.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let current = |c: &str| {
            mine.iter()
                .copied()
                .filter(|p| component(p) == Some(c))
                // The old pod while it terminates: the swap is done only once it is gone.
                .max_by_key(|p| p.metadata.deletion_timestamp.is_some())
        };
        let non_interrupt = self.sr.spec.rollout.pod_non_interrupt_labels.as_ref();
        node_view(&NodeFacts {
            node,
            kmod_pod: current(KMOD_COMPONENT),
            csi_pod: current(CSI_NODE_COMPONENT),
            afs_pods: self
                .users(&name)
                .iter()
                .map(|p| {
                    (
                        *p,
                        non_interrupt.is_some_and(|s| rollout::matches_selector(s, p.labels())),
                    )
                })
                .collect(),
            csi_node: self
                .observed
                .csi_nodes
                .iter()
                .find(|c| c.name_any() == name),
            driver: &self.sr.spec.csi.driver_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_serves_only_with_module_driver_and_both_pods_ready_at_the_revision() {
        let pod = |revision: &str, ready| {
            Some(PodView {
                name: "p".into(),
                revision: Some(revision.into()),
                ready,
                terminating: false,
            })
        };
        let view = NodeView {
            module_ready: true,
            driver_registered: true,
            kmod_pod: pod("r2", true),
            csi_pod: pod("r2", true),
            ..NodeView::default()
        };
        assert!(serves(&view, "r2"));
        assert!(!serves(&view, "r3"), "old revision");
        assert!(!serves(
            &NodeView {
                csi_pod: pod("r2", false),
                ..view.clone()
            },
            "r2"
        ));
        assert!(!serves(
            &NodeView {
                driver_registered: false,
                ..view.clone()
            },
            "r2"
        ));
        assert!(!serves(
            &NodeView {
                kmod_pod: None,
                ..view
            },
            "r2"
        ));
    }

    #[test]
    fn kmod_managers_detail_is_read_only_while_it_reports_not_ready() {
        let node = |ready: Option<&str>, status: Option<&str>| -> Node {
            let mut node = Node::default();
            if let Some(ready) = ready {
                node.labels_mut()
                    .insert(KMOD_READY_LABEL.to_owned(), ready.to_owned());
            }
            if let Some(status) = status {
                node.annotations_mut()
                    .insert(KMOD_STATUS_ANNOTATION.to_owned(), status.to_owned());
            }
            node
        };
        let exited = "afsd exited (status 1)";
        assert_eq!(
            kmod_not_ready(&node(Some("false"), Some(exited))),
            Some(exited)
        );
        assert_eq!(
            kmod_not_ready(&node(Some("true"), Some("kafs loaded"))),
            None
        );
        assert_eq!(
            kmod_not_ready(&node(None, Some(exited))),
            None,
            "not reported"
        );
        assert_eq!(kmod_not_ready(&node(Some("false"), None)), None);
        assert_eq!(kmod_not_ready(&node(Some("false"), Some(""))), None);
    }

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [], "volumes": volumes},
        }))
        .expect("pod")
    }

    #[test]
    fn a_pod_uses_the_driver_through_inline_claim_or_ephemeral_volumes() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv"},
            "spec": {"csi": {"driver": "afs", "volumeHandle": "h"}, "claimRef": {"namespace": "ns", "name": "claim"}},
        }))
        .expect("pv");
        let claims = driver_claims("afs", &[pv]);
        let inline = pod(json!([{"name": "v", "csi": {"driver": "afs"}}]));
        let claimed = pod(json!([{"name": "v", "persistentVolumeClaim": {"claimName": "claim"}}]));
        let other = pod(
            json!([{"name": "v", "persistentVolumeClaim": {"claimName": "other"}}, {"name": "e", "emptyDir": {}}]),
        );
        let other_driver = pod(json!([{"name": "v", "csi": {"driver": "nfs"}}]));
        assert!(uses_driver(&inline, "afs", &claims));
        assert!(uses_driver(&claimed, "afs", &claims));
        assert!(!uses_driver(&other, "afs", &claims));
        assert!(!uses_driver(&other_driver, "afs", &claims));
        let claims = BTreeSet::from(["ns/p-scratch".to_owned()]);
        let ephemeral =
            pod(json!([{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]));
        assert!(uses_driver(&ephemeral, "afs", &claims));
    }
}
