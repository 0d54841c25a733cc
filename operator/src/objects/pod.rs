//! Shapes the pod templates share: volumes, mounts, env, probes, tolerations, the
//! hardened security context and the `OnDelete` DaemonSet.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, HostPathVolumeSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Ctx;
use crate::labels::{KMOD_READINESS_TAINT, READINESS_TAINT, RELEASE_LABEL, REVISION_LABEL};

/// Mounts made on the host later (by kubelet, the CSI driver or afsd) appear in the
/// container, and unmounts too: a private copy would pin AFS superblocks, and with them
/// the module, after the host unmounted them.
pub(super) const HOST_TO_CONTAINER: &str = "HostToContainer";
/// Both ways: only the CSI node plugin's kubelet directory, where it publishes volumes.
pub(super) const BIDIRECTIONAL: &str = "Bidirectional";
/// Node agents that must survive node pressure (the module and the volumes of every
/// pod depend on them).
pub(super) const NODE_CRITICAL: &str = "system-node-critical";

pub(super) fn host_path_volume(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(type_.to_owned()),
        }),
        ..Volume::default()
    }
}

pub(super) fn config_map_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub(super) fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub(super) fn empty_dir_volume(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// A read-write mount without propagation; adjust with struct update syntax.
pub(super) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

pub(super) fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        read_only: Some(true),
        ..mount(name, path)
    }
}

pub(super) fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// An env var from the downward API, e.g. `spec.nodeName`.
pub(super) fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

pub(super) fn named_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

pub(super) fn http_probe(path: &str, port_name: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port_name.to_owned()),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    }
}

/// The node pods must run on nodes the readiness taints hold (they are what lifts
/// them); nothing else is tolerated beyond what the DaemonSet controller adds.
pub(super) fn readiness_tolerations() -> Vec<Toleration> {
    [READINESS_TAINT, KMOD_READINESS_TAINT]
        .into_iter()
        .map(|key| Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            ..Toleration::default()
        })
        .collect()
}

/// No capability, no privilege escalation, read-only root, the runtime's seccomp
/// profile: the base every container starts from.
pub(super) fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// A DaemonSet `name` of the component whose pods are replaced only when the rollout
/// planner deletes them. It selects its pods by the component's selector plus
/// `extra` (immutable for the object's life); its pods also carry the revision they
/// run, which the planner compares with the desired one.
pub(super) fn on_delete_daemon_set(
    ctx: &Ctx<'_>,
    name: String,
    component: &str,
    extra: &BTreeMap<String, String>,
    mut spec: PodSpec,
) -> DaemonSet {
    spec.affinity = Some(not_released());
    let mut selector = ctx.selector(component);
    selector.extend(extra.clone());
    let mut labels = ctx.labels(component);
    labels.extend(extra.clone());
    labels.insert(REVISION_LABEL.to_owned(), ctx.revision.to_owned());
    DaemonSet {
        metadata: ctx.namespaced_meta(name, component),
        spec: DaemonSetSpec {
            selector: match_labels(selector),
            template: template(labels, spec),
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                rolling_update: None,
            }),
            ..DaemonSetSpec::default()
        },
        status: None,
    }
}

/// Pods run only on nodes the operator has not released: deleting an SR sets the
/// release label node by node, as each node's guard allows, and the DaemonSet
/// controller then removes the module pod from that node alone.
fn not_released() -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: RELEASE_LABEL.to_owned(),
                        operator: "DoesNotExist".to_owned(),
                        values: None,
                    }]),
                    match_fields: None,
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

pub(super) fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    }
}

pub(super) fn template(labels: BTreeMap<String, String>, spec: PodSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        }),
        spec: Some(spec),
    }
}
