//! What `deploy` and `status` print: one line per node saying whether it serves AFS
//! and, when not, what blocks it; and a summary in the words of `kubectl rollout status`
//! (pure: observed objects in, text out).

use std::fmt;

use afs_operator::controller::REFUSED_STATE;
use afs_operator::crd::SpecialResource;
use afs_operator::labels::UPGRADE_REASON_ANNOTATION;
use afs_operator::observe::{self, GroupIndex, Observed};
use afs_operator::rollout::{NodeView, PodView, UpgradeState};
use afs_operator::status::READY;
use kube::ResourceExt;

/// One node of the group as the admin needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node: String,
    /// The rollout state label, or `-` before the first rollout decision.
    pub state: String,
    pub module_loaded: bool,
    pub csi_registered: bool,
    /// Module loaded, driver registered, both pods Ready at the SR's revision.
    pub serving: bool,
    /// Why the node does not serve yet (empty when it does).
    pub blockers: Vec<String>,
}

impl fmt::Display for NodeRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
        write!(
            f,
            "{}: {}, {}, {}",
            self.node,
            self.state,
            yes_no(self.module_loaded, "module loaded", "module not loaded"),
            yes_no(self.csi_registered, "CSI registered", "CSI not registered"),
        )?;
        if self.serving {
            write!(f, ", ready")
        } else {
            write!(f, "; waiting: {}", self.blockers.join("; "))
        }
    }
}

/// Every node of the group, in name order.
pub fn node_rows(sr: &SpecialResource, observed: &Observed) -> Vec<NodeRow> {
    let index = GroupIndex::new(sr, observed);
    let revision = sr.status.as_ref().and_then(|s| s.revision.clone());
    let mut rows: Vec<NodeRow> = observed
        .nodes
        .iter()
        .map(|node| {
            let view = index.view(node);
            let serving = revision
                .as_deref()
                .is_some_and(|r| observe::serves(&view, r));
            let reason = node.annotations().get(UPGRADE_REASON_ANNOTATION).cloned();
            let kernel = observe::node_kernel(node).map(str::to_owned);
            let kmod_detail = observe::kmod_not_ready(node);
            NodeRow {
                node: view.name.clone(),
                state: view.state.map_or("-", UpgradeState::as_label).to_owned(),
                module_loaded: view.module_ready,
                csi_registered: view.driver_registered,
                serving,
                blockers: if serving {
                    Vec::new()
                } else {
                    let mut out =
                        blockers(sr, &view, kernel.as_deref(), revision.as_deref(), reason);
                    // In kmod-manager's words: why its module or AFS client is down.
                    out.extend(kmod_detail.map(|d| format!("kmod-manager reports: {d}")));
                    out
                },
            }
        })
        .collect();
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    rows
}

/// What keeps a node from serving, most fundamental first.
fn blockers(
    sr: &SpecialResource,
    view: &NodeView,
    kernel: Option<&str>,
    revision: Option<&str>,
    reason: Option<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    if !view.ready {
        out.push("node is NotReady".to_owned());
    }
    let unmapped = sr
        .status
        .iter()
        .flat_map(|s| &s.kernels)
        .find(|k| k.image.is_none() && Some(k.kernel.as_str()) == kernel);
    if let Some(k) = unmapped {
        out.push(format!(
            "no kernelMapping matches kernel {} ({}): add one to spec.kmod.kernelMappings",
            k.kernel,
            k.message.as_deref().unwrap_or("no match")
        ));
    }
    if revision.is_none() {
        out.push("the operator has not reported on this SpecialResource yet".to_owned());
    }
    match view.state {
        Some(UpgradeState::UpgradeFailed) => out.push(format!(
            "upgrade failed: {}",
            reason.as_deref().unwrap_or("no reason recorded")
        )),
        Some(state) if state.is_in_progress() => {
            let waiting: Vec<String> = view
                .afs_pods
                .iter()
                .map(|p| {
                    let tag = if p.non_interruptible {
                        " (non-interruptible: waited for)"
                    } else if p.terminating {
                        " (terminating)"
                    } else {
                        ""
                    };
                    format!("{}/{}{tag}", p.namespace, p.name)
                })
                .collect();
            let mut line = format!("rollout step {}", state.as_label());
            if let Some(reason) = reason {
                line.push_str(&format!(" ({reason})"));
            }
            if !waiting.is_empty() {
                line.push_str(&format!(", AFS pods: {}", waiting.join(", ")));
            }
            out.push(line);
        }
        _ => {}
    }
    for (what, pod) in [("module", &view.kmod_pod), ("CSI node", &view.csi_pod)] {
        out.extend(pod_blocker(what, pod.as_ref(), revision));
    }
    if view.kmod_pod.as_ref().is_some_and(|p| p.ready) && !view.module_ready {
        out.push("kmod-manager has not reported the module loaded".to_owned());
    }
    if view.csi_pod.as_ref().is_some_and(|p| p.ready) && !view.driver_registered {
        out.push(format!(
            "driver {} not registered in the node's CSINode",
            sr.spec.csi.driver_name
        ));
    }
    if out.is_empty() {
        out.push("waiting for the operator".to_owned());
    }
    out
}

fn pod_blocker(what: &str, pod: Option<&PodView>, revision: Option<&str>) -> Option<String> {
    let Some(pod) = pod else {
        return Some(format!("no {what} pod yet"));
    };
    if pod.terminating {
        Some(format!("{what} pod {} is terminating", pod.name))
    } else if revision.is_some() && pod.revision.as_deref() != revision {
        Some(format!(
            "{what} pod {} runs revision {}, not {}",
            pod.name,
            pod.revision.as_deref().unwrap_or("?"),
            revision.unwrap_or("?")
        ))
    } else if !pod.ready {
        Some(format!("{what} pod {} is not Ready", pod.name))
    } else {
        None
    }
}

/// Where the SR's rollout stands, as the operator reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every node serves the current spec.
    Done { ready: u32, total: u32 },
    /// Still moving; the summary says how far.
    Waiting { summary: String },
    /// Waiting will not help (another SR owns the nodes, or the namespace or CSIDriver
    /// is not the SR's): the message says what to do.
    Refused { message: String },
}

/// The summary line for an SR, from its status alone.
pub fn rollout(sr: &SpecialResource) -> Rollout {
    let name = sr.name_any();
    let Some(status) = sr.status.as_ref() else {
        return Rollout::Waiting {
            summary: format!(
                "Waiting for SpecialResource {name:?}: the operator has not reported yet (is the afs-operator Deployment running?)"
            ),
        };
    };
    let ready = status.conditions.iter().find(|c| c.type_ == READY);
    let message = ready.map(|c| c.message.clone()).unwrap_or_default();
    let state = status.state.as_deref().unwrap_or("Unknown");
    // Waiting will not help: another SR owns the nodes, or the spec names a namespace
    // or CSIDriver that is not its own.
    if state == "Conflict" || state == REFUSED_STATE {
        return Rollout::Refused {
            message: format!("SpecialResource {name:?} is refused: {message}"),
        };
    }
    let current = status.observed_generation == sr.metadata.generation;
    let counts = &status.nodes;
    if current && state == "Ready" && ready.is_some_and(|c| c.status == "True") {
        return Rollout::Done {
            ready: counts.ready,
            total: counts.total,
        };
    }
    let mut summary = if current {
        format!(
            "Waiting for SpecialResource {name:?} rollout to finish: {} of {} nodes ready ({state}",
            counts.ready, counts.total
        )
    } else {
        format!(
            "Waiting for SpecialResource {name:?}: the operator has not seen the latest spec yet ("
        )
    };
    if !current {
        summary.push_str(state);
    }
    if !message.is_empty() {
        summary.push_str(": ");
        summary.push_str(&message);
    }
    summary.push_str(")...");
    Rollout::Waiting { summary }
}

/// The line printed once the rollout is done.
pub fn done_line(name: &str, ready: u32, total: u32) -> String {
    format!("SpecialResource {name:?} successfully rolled out ({ready} of {total} nodes ready)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use afs_operator::labels::{
        COMPONENT_LABEL, KMOD_READY_LABEL, KMOD_STATUS_ANNOTATION, REVISION_LABEL,
        UPGRADE_STATE_LABEL,
    };
    use k8s_openapi::api::core::v1::{Node, Pod};
    use k8s_openapi::api::storage::v1::CSINode;
    use serde_json::{Value, json};

    const DRIVER: &str = "auristorfs.csi.auristor.com";

    fn sr(status: Value) -> SpecialResource {
        serde_json::from_value(json!({
            "apiVersion": "afs.csi.auristor.com/v1alpha1", "kind": "SpecialResource",
            "metadata": {"name": "group-1", "generation": 2},
            "spec": {"namespace": "afs-1", "nodeSelector": {"g": "1"},
                "kmod": {"module": "kafs", "version": "1.0.0",
                    "kernelMappings": [{"literal": "6.1.0-56-amd64", "containerImage": "r/k:${KERNEL_FULL_VERSION}"}]},
                "csi": {"image": "r/csi", "version": "1.0.0", "allowedCells": ["example.com"]},
                "rollout": {"podNonInterruptLabels": {"matchLabels": {"critical": "true"}}}},
            "status": status,
        }))
        .expect("sr")
    }

    fn node(name: &str, kernel: &str, labels: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels,
                "annotations": {"afs.csi.auristor.com/upgrade-reason": "evicting 1 pod"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"kernelVersion": kernel, "machineID": "", "systemUUID": "", "bootID": "",
                    "kubeProxyVersion": "", "kubeletVersion": "", "osImage": "", "containerRuntimeVersion": "",
                    "operatingSystem": "linux", "architecture": "amd64"}},
        }))
        .expect("node")
    }

    fn pod(name: &str, node: &str, labels: Value, ready: bool, volumes: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "afs-1", "labels": labels},
            "spec": {"nodeName": node, "containers": [], "volumes": volumes},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .expect("pod")
    }

    fn ours(component: &str, revision: &str) -> Value {
        json!({COMPONENT_LABEL: component, REVISION_LABEL: revision})
    }

    fn csi_node(name: &str) -> CSINode {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"drivers": [{"name": DRIVER, "nodeID": name}]}}))
        .expect("csinode")
    }

    fn current(state: &str, ready: &str, message: &str) -> Value {
        json!({"observedGeneration": 2, "state": state, "revision": "r2",
            "nodes": {"total": 3, "ready": 1, "upgradeRequired": 0, "upgrading": 1, "failed": 0, "unavailable": 0, "unmapped": 1},
            "kernels": [{"kernel": "5.10.0-1-amd64", "nodes": 1, "message": "no kernelMapping matches"}],
            "conditions": [{"type": "Ready", "status": ready, "reason": state, "message": message,
                "lastTransitionTime": "2026-11-21T00:00:00Z"}]})
    }

    #[test]
    fn each_node_says_what_blocks_it() {
        let sr = sr(current("Progressing", "False", "1 of 3 nodes ready"));
        let mut b = node(
            "b",
            "6.1.0-56-amd64",
            json!({UPGRADE_STATE_LABEL: "eviction-required", KMOD_READY_LABEL: "false"}),
        );
        b.annotations_mut().insert(
            KMOD_STATUS_ANNOTATION.to_owned(),
            "afsd exited (status 1)".to_owned(),
        );
        let observed = Observed {
            nodes: vec![
                node("a", "6.1.0-56-amd64", json!({KMOD_READY_LABEL: "true"})),
                b,
                node("c", "5.10.0-1-amd64", json!({})),
            ],
            own_pods: vec![
                pod("kmod-a", "a", ours("kmod", "r2"), true, json!([])),
                pod("csi-a", "a", ours("csi-node", "r2"), true, json!([])),
                pod("kmod-b", "b", ours("kmod", "r1"), true, json!([])),
                pod("csi-b", "b", ours("csi-node", "r2"), false, json!([])),
            ],
            afs_pods: vec![pod(
                "job",
                "b",
                json!({"critical": "true"}),
                true,
                json!([{"name": "afs", "csi": {"driver": DRIVER}}]),
            )],
            csi_nodes: vec![csi_node("a")],
        };
        let rows = node_rows(&sr, &observed);
        let lines: Vec<String> = rows.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines[0], "a: -, module loaded, CSI registered, ready",
            "{lines:#?}"
        );
        assert!(rows[0].serving && rows[0].blockers.is_empty());
        let b = &lines[1];
        assert!(
            b.starts_with("b: eviction-required, module not loaded, CSI not registered; waiting: "),
            "{b}"
        );
        for part in [
            "rollout step eviction-required (evicting 1 pod), AFS pods: afs-1/job (non-interruptible: waited for)",
            "module pod kmod-b runs revision r1, not r2",
            "CSI node pod csi-b is not Ready",
            "kmod-manager reports: afsd exited (status 1)",
        ] {
            assert!(b.contains(part), "{part} in {b}");
        }
        let c = &lines[2];
        assert!(
            c.contains("no kernelMapping matches kernel 5.10.0-1-amd64")
                && c.contains("no module pod yet")
                && c.contains("no CSI node pod yet"),
            "{c}"
        );
    }

    #[test]
    fn the_summary_follows_the_operators_status() {
        let waiting = rollout(&sr(current("Progressing", "False", "1 of 3 nodes ready")));
        assert_eq!(
            waiting,
            Rollout::Waiting {
                summary: "Waiting for SpecialResource \"group-1\" rollout to finish: 1 of 3 nodes ready (Progressing: 1 of 3 nodes ready)...".into()
            }
        );
        assert_eq!(
            rollout(&sr(current("Ready", "True", "all ready"))),
            Rollout::Done { ready: 1, total: 3 }
        );
        let mut stale = current("Ready", "True", "all ready");
        stale["observedGeneration"] = json!(1);
        assert!(
            matches!(rollout(&sr(stale)), Rollout::Waiting { summary } if summary.contains("not seen the latest spec")),
            "a Ready status of the previous generation is not done"
        );
        assert!(matches!(
            rollout(&sr(current("Conflict", "False", "shares nodes a with SpecialResource g0"))),
            Rollout::Refused { message } if message.contains("shares nodes a with SpecialResource g0")
        ));
        assert!(
            matches!(
                rollout(&sr(current(REFUSED_STATE, "False", "namespace afs-1 already exists and is not this SpecialResource's"))),
                Rollout::Refused { message } if message.contains("namespace afs-1 already exists")
            ),
            "a namespace or CSIDriver that is not the SR's stops the wait at once"
        );
        assert!(matches!(
            rollout(&sr(Value::Null)),
            Rollout::Waiting { summary } if summary.contains("operator has not reported")
        ));
    }
}
