//! What the operator keeps on a group's Node objects (pure): the kernel label the
//! per-kernel DaemonSets select on, and the readiness taint.

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::labels::{
    CORDONED_BY_OPERATOR_ANNOTATION, KERNEL_LABEL, KMOD_READINESS_TAINT, READINESS_TAINT,
};

/// Prefix of every label and annotation of this project.
const OUR_PREFIX: &str = "afs.csi.auristor.com/";

/// The merge patch that brings `node` to the wanted kernel label and taint, or `None`
/// when it already carries both (steady state writes nothing).
pub fn node_patch(node: &Node, kernel_label: Option<&str>, tainted: bool) -> Option<Value> {
    let mut patch = json!({});
    let current_label = node.labels().get(KERNEL_LABEL).map(String::as_str);
    if current_label != kernel_label {
        patch["metadata"] = json!({"labels": {KERNEL_LABEL: kernel_label}});
    }
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let has_taint = taints.iter().any(|t| t.key == READINESS_TAINT);
    if has_taint != tainted {
        // The whole list: a merge patch replaces lists, so others' taints are kept as read.
        // The resourceVersion makes a concurrent taint change a conflict, not a loss.
        let desired = kmod_manager::node::desired_taints(&taints, READINESS_TAINT, !tainted);
        patch["spec"] = json!({"taints": desired});
        patch["metadata"]["resourceVersion"] = json!(node.metadata.resource_version);
    }
    (patch != json!({})).then_some(patch)
}

/// The patch removing everything the operator and kmod-manager put on a node, once the
/// SR is gone and no module pod remains: labels, annotations, both readiness taints,
/// and the cordon if (and only if) the operator made it.
pub fn release_patch(node: &Node) -> Option<Value> {
    let ours = |k: &String| k.starts_with(OUR_PREFIX);
    let mut patch = json!({});
    for k in node.labels().keys().filter(|k| ours(k)) {
        patch["metadata"]["labels"][k] = Value::Null;
    }
    for k in node.annotations().keys().filter(|k| ours(k)) {
        patch["metadata"]["annotations"][k] = Value::Null;
    }
    if node
        .annotations()
        .get(CORDONED_BY_OPERATOR_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        patch["spec"]["unschedulable"] = Value::Null;
    }
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let kept: Vec<&Taint> = taints
        .iter()
        .filter(|t| t.key != READINESS_TAINT && t.key != KMOD_READINESS_TAINT)
        .collect();
    if kept.len() != taints.len() {
        patch["spec"]["taints"] = json!(kept);
        patch["metadata"]["resourceVersion"] = json!(node.metadata.resource_version);
    }
    (patch != json!({})).then_some(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: Value, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n", "resourceVersion": "5", "labels": labels},
            "spec": {"taints": taints},
        }))
        .expect("node")
    }

    #[test]
    fn steady_state_needs_no_patch() {
        let n = node(json!({KERNEL_LABEL: "6.1.0"}), json!([]));
        assert_eq!(node_patch(&n, Some("6.1.0"), false), None);
        let n = node(
            json!({KERNEL_LABEL: "6.1.0"}),
            json!([{"key": READINESS_TAINT, "effect": "NoSchedule"}]),
        );
        assert_eq!(node_patch(&n, Some("6.1.0"), true), None);
    }

    #[test]
    fn taint_and_label_changes_keep_other_taints() {
        let n = node(json!({}), json!([{"key": "other", "effect": "NoExecute"}]));
        let p = node_patch(&n, Some("6.1.0"), true).expect("patch");
        assert_eq!(p["metadata"]["labels"][KERNEL_LABEL], "6.1.0");
        assert_eq!(p["metadata"]["resourceVersion"], "5");
        assert_eq!(
            p["spec"]["taints"],
            json!([{"key": "other", "effect": "NoExecute"}, {"key": READINESS_TAINT, "effect": "NoSchedule"}])
        );
    }

    #[test]
    fn release_removes_ours_and_uncordons_only_what_we_cordoned() {
        let mut n = node(
            json!({KERNEL_LABEL: "6.1.0", "afs.csi.auristor.com/kmod-ready": "false", "team": "a"}),
            json!([{"key": "other", "effect": "NoExecute"}, {"key": KMOD_READINESS_TAINT, "effect": "NoSchedule"}]),
        );
        let p = release_patch(&n).expect("patch");
        assert_eq!(
            p["metadata"]["labels"],
            json!({KERNEL_LABEL: null, "afs.csi.auristor.com/kmod-ready": null})
        );
        assert_eq!(
            p["spec"]["taints"],
            json!([{"key": "other", "effect": "NoExecute"}])
        );
        assert!(
            p["spec"].get("unschedulable").is_none(),
            "an admin cordon stays"
        );
        n.metadata.annotations = Some(
            [(
                CORDONED_BY_OPERATOR_ANNOTATION.to_owned(),
                "true".to_owned(),
            )]
            .into(),
        );
        let p = release_patch(&n).expect("patch");
        assert_eq!(p["spec"]["unschedulable"], Value::Null);
        assert!(
            p["spec"]
                .as_object()
                .is_some_and(|s| s.contains_key("unschedulable"))
        );
    }
}
