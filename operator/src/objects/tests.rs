//! Unit tests of the desired objects: pure, no cluster.

use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Node, NodeStatus, NodeSystemInfo, PodSpec};
use k8s_openapi::api::rbac::v1::{RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kmod_manager::config::{CacheManagerKind, KmodConfig};
use kmod_manager::kernel::KernelRelease;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::crd::{CacheManager, ClientSpec};
use crate::labels::{KMOD_READINESS_TAINT, READINESS_TAINT, REVISION_LABEL};

const RHEL: &str = "4.18.0-305.49.1.el8_4.x86_64";
const DEBIAN: &str = "6.1.0-56-amd64";
const UNMAPPED: &str = "5.14.0-70.el9.aarch64";

fn spec() -> SpecialResourceSpec {
    serde_json::from_value(json!({
        "namespace": "afs-group-1",
        "nodeSelector": {"auristor.com/auristorfs-group": "group-1"},
        "kmod": {
            "module": "yfs",
            "version": "2021.5.0",
            "kernelMappings": [
                {"regexp": r"4\.18\.0-.*\.el8.*\.x86_64",
                 "containerImage": "registry.example.com/auristor-kmod-${MODULE_VERSION}:${KERNEL_KABI_TAG}"},
                {"literal": DEBIAN,
                 "containerImage": "registry.example.com/kafs:${KERNEL_FULL_VERSION}"}
            ],
            "parameters": ["rootcell=example.com"],
            "imagePullSecrets": ["regcred"],
            "mapVolumes": [
                {"name": "yfs-cache", "target": "/var/cache/yfs", "hostPath": {"path": "/var/cache/yfs"}},
                {"name": "etc-yfs", "target": "/etc/yfs", "configMap": {"name": "yfs-client"}},
                {"name": "etc-yfs-keytabs", "target": "/etc/yfs-keytabs", "secret": {"name": "keytabs"}}
            ]
        },
        "csi": {
            "image": "registry.example.com/afs-csi",
            "version": "1.2.0",
            "allowedCells": ["example.com", "grand.central.org"],
            "allowRootMounts": true,
            "mountOptions": ["noexec"],
            "storageClass": {"name": "afs", "parameters": {"mount-type": "root"}, "isDefault": true}
        }
    }))
    .expect("valid spec")
}

fn sr_with(name: &str, uid: &str, spec: SpecialResourceSpec) -> SpecialResource {
    let mut sr = SpecialResource::new(name, spec);
    sr.metadata.uid = Some(uid.to_owned());
    sr
}

fn sr() -> SpecialResource {
    sr_with("group-1", "uid-1", spec())
}

fn kernels() -> Vec<String> {
    [RHEL, DEBIAN, RHEL, UNMAPPED].map(str::to_owned).to_vec()
}

fn try_build(
    sr: &SpecialResource,
    kernels: &[String],
    runs_controller: bool,
    csi_driver_owners: &[&SpecialResource],
) -> Result<Desired, BuildError> {
    let revision = revision(&sr.spec);
    build(&Inputs {
        sr,
        revision: &revision,
        kernels,
        runs_controller,
        csi_driver_owners,
    })
}

fn build_with(sr: &SpecialResource, kernels: &[String], runs_controller: bool) -> Desired {
    try_build(sr, kernels, runs_controller, &[]).expect("builds")
}

fn desired() -> Desired {
    build_with(&sr(), &kernels(), true)
}

/// Metadata of every object that must be labelled with and owned by its SR.
fn owned_metas(d: &Desired) -> Vec<&ObjectMeta> {
    let mut metas: Vec<&ObjectMeta> = Vec::new();
    metas.extend(d.service_accounts.iter().map(|o| &o.metadata));
    metas.extend(d.cluster_role_bindings.iter().map(|o| &o.metadata));
    metas.extend(d.role_bindings.iter().map(|o| &o.metadata));
    metas.extend(d.config_maps.iter().map(|o| &o.metadata));
    metas.extend(d.kmod_daemon_sets.iter().map(|o| &o.metadata));
    metas.push(&d.csi_node_daemon_set.metadata);
    metas.extend(d.csi_controller.iter().map(|o| &o.metadata));
    metas.extend(d.storage_class.iter().map(|o| &o.metadata));
    metas
}

fn pod_specs(d: &Desired) -> Vec<(&str, &PodSpec)> {
    let mut specs: Vec<(&str, &PodSpec)> = d
        .kmod_daemon_sets
        .iter()
        .chain([&d.csi_node_daemon_set])
        .map(|ds| (ds_name(ds), pod_spec(ds)))
        .collect();
    if let Some(c) = &d.csi_controller {
        specs.push((
            c.metadata.name.as_deref().unwrap_or_default(),
            c.spec.template.spec.as_ref().expect("pod spec"),
        ));
    }
    specs
}

fn ds_name(ds: &DaemonSet) -> &str {
    ds.metadata.name.as_deref().unwrap_or_default()
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().expect("pod spec")
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("container {name}"))
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn kmod_ds<'a>(d: &'a Desired, kernel: &str) -> &'a DaemonSet {
    let name = kmod_daemon_set_name("group-1", kernel);
    d.kmod_daemon_sets
        .iter()
        .find(|ds| ds_name(ds) == name)
        .unwrap_or_else(|| panic!("no DaemonSet for {kernel}"))
}

/// An independent statement of the label-value rule.
fn label_safe(v: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    !v.is_empty()
        && v.len() <= 63
        && v.chars().all(ok_char)
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[test]
fn every_object_is_labelled_and_owned_by_its_sr() {
    let d = desired();
    let metas = owned_metas(&d);
    assert_eq!(
        metas.len(),
        12,
        "3 SAs, 2 ClusterRoleBindings, 1 RoleBinding, CM, 2+1 DS, Deployment, SC"
    );
    for meta in metas {
        let name = meta.name.as_deref().unwrap_or_default();
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(
            labels.get(SR_LABEL).map(String::as_str),
            Some("group-1"),
            "{name}"
        );
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY),
            "{name}"
        );
        assert!(labels.contains_key(COMPONENT_LABEL), "{name}");
        let owners = meta.owner_references.as_deref().unwrap_or_default();
        assert_eq!(owners.len(), 1, "{name}");
        let o = &owners[0];
        assert_eq!(
            (
                o.api_version.as_str(),
                o.kind.as_str(),
                o.name.as_str(),
                o.uid.as_str()
            ),
            (
                "afs.csi.auristor.com/v1alpha1",
                "SpecialResource",
                "group-1",
                "uid-1"
            ),
            "{name}"
        );
        assert_eq!(
            (o.controller, o.block_owner_deletion),
            (Some(true), Some(true)),
            "{name}"
        );
    }
    // Namespaced objects are in the SR's namespace.
    for meta in d.service_accounts.iter().map(|o| &o.metadata) {
        assert_eq!(meta.namespace.as_deref(), Some("afs-group-1"));
    }
}

#[test]
fn namespace_is_never_owned_nor_sr_labelled() {
    let ns = desired().namespace;
    assert_eq!(ns.metadata.name.as_deref(), Some("afs-group-1"));
    assert!(ns.metadata.owner_references.is_none());
    let labels = ns.metadata.labels.expect("labels");
    assert!(!labels.contains_key(SR_LABEL));
    assert_eq!(
        labels.get(POD_SECURITY_ENFORCE_LABEL).map(String::as_str),
        Some("privileged")
    );
}

#[test]
fn csi_driver_is_owned_by_every_sr_of_the_driver_alike() {
    let a = sr();
    let b = sr_with("group-2", "uid-2", spec());
    let build_for = |me: &SpecialResource, owners: &[&SpecialResource]| {
        try_build(me, &[], false, owners)
            .expect("builds")
            .csi_driver
    };
    let from_a = build_for(&a, &[&a, &b]);
    let from_b = build_for(&b, &[&b, &a]);
    assert_eq!(from_a, from_b, "every SR applies the same CSIDriver");
    // The SR itself is an owner even when the caller leaves it out.
    assert_eq!(build_for(&a, &[&b]), from_a);

    let meta = &from_a.metadata;
    assert_eq!(meta.name.as_deref(), Some(crate::crd::DEFAULT_DRIVER_NAME));
    assert!(!meta.labels.as_ref().expect("labels").contains_key(SR_LABEL));
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let uids: Vec<_> = owners.iter().map(|o| o.uid.as_str()).collect();
    assert_eq!(uids, ["uid-1", "uid-2"]);
    assert!(
        owners
            .iter()
            .all(|o| o.controller == Some(false) && o.kind == "SpecialResource")
    );

    let spec = &from_a.spec;
    assert_eq!(spec.attach_required, Some(false));
    assert_eq!(spec.pod_info_on_mount, Some(true));
    assert_eq!(spec.fs_group_policy.as_deref(), Some("None"));
    assert_eq!(spec.requires_republish, Some(false));
    assert_eq!(
        spec.volume_lifecycle_modes.as_deref(),
        Some(&["Persistent".to_owned()][..]),
        "no SR of the driver allows inline volumes: kubelet refuses them"
    );
    // One SR of the driver allowing inline volumes is enough, whichever builds it.
    let mut inline = sr_with("group-3", "uid-3", a.spec.clone());
    inline.spec.csi.allow_ephemeral = true;
    for (me, owners) in [(&a, [&a, &inline]), (&inline, [&inline, &a])] {
        assert_eq!(
            build_for(me, &owners[..])
                .spec
                .volume_lifecycle_modes
                .as_deref(),
            Some(&["Persistent".to_owned(), "Ephemeral".to_owned()][..])
        );
    }

    let mut other = spec_with(|s| s.csi.driver_name = "other.csi.example.com".to_owned());
    other.metadata.uid = Some("uid-3".to_owned());
    let err = try_build(&a, &[], false, &[&other]).expect_err("foreign owner");
    assert!(err.to_string().contains("other.csi.example.com"), "{err}");
}

fn spec_with(change: impl FnOnce(&mut SpecialResourceSpec)) -> SpecialResource {
    let mut s = spec();
    change(&mut s);
    sr_with("group-x", "uid-x", s)
}

#[test]
fn one_daemon_set_per_distinct_kernel_with_stable_names() {
    let d = desired();
    assert_eq!(
        d.kmod_daemon_sets.len(),
        2,
        "RHEL (twice) and Debian; one unmapped"
    );
    let again = build_with(&sr(), &[DEBIAN.to_owned(), RHEL.to_owned()], true);
    let names = |d: &Desired| {
        d.kmod_daemon_sets
            .iter()
            .map(|ds| ds_name(ds).to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&d),
        names(&again),
        "order and duplicates of the input do not matter"
    );
    for (kernel, image) in [
        (
            RHEL,
            "registry.example.com/auristor-kmod-2021.5.0:4.18.0-305.el8.x86_64",
        ),
        (DEBIAN, "registry.example.com/kafs:6.1.0-56-amd64"),
    ] {
        let ds = kmod_ds(&d, kernel);
        let name = ds_name(ds);
        assert!(name.starts_with("group-1-kmod-") && name.len() == "group-1-kmod-".len() + 10);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        let spec = &ds.spec;
        assert_eq!(
            spec.update_strategy
                .as_ref()
                .and_then(|u| u.type_.as_deref()),
            Some("OnDelete")
        );
        let selector = spec.selector.match_labels.as_ref().expect("selector");
        assert_eq!(
            selector.get(KERNEL_LABEL),
            Some(&kernel_label_value(kernel))
        );
        assert!(
            !selector.contains_key(REVISION_LABEL),
            "the selector is immutable"
        );
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        assert!(
            selector
                .iter()
                .all(|(k, v)| template_labels.get(k) == Some(v))
        );
        assert_eq!(
            template_labels.get(REVISION_LABEL),
            Some(&revision(&sr().spec))
        );
        let pod = pod_spec(ds);
        let node_selector = pod.node_selector.as_ref().expect("node selector");
        assert_eq!(
            node_selector
                .get("auristor.com/auristorfs-group")
                .map(String::as_str),
            Some("group-1")
        );
        assert_eq!(
            node_selector.get(KERNEL_LABEL),
            Some(&kernel_label_value(kernel))
        );
        let c = container(pod, "kmod-manager");
        assert_eq!(c.image.as_deref(), Some(image));
        assert_eq!(env_value(c, "KMOD_IMAGE"), Some(image));
        assert_eq!(d.kmod_image(kernel), Some(image));
    }
}

#[test]
fn unmapped_kernels_are_reported_not_skipped() {
    let d = build_with(
        &sr(),
        &[
            UNMAPPED.to_owned(),
            "not a kernel".to_owned(),
            DEBIAN.to_owned(),
        ],
        false,
    );
    assert_eq!(d.kmod_daemon_sets.len(), 1);
    let kernels: Vec<_> = d.unmapped.iter().map(|u| u.kernel.as_str()).collect();
    assert_eq!(kernels, [UNMAPPED, "not a kernel"]);
    for u in &d.unmapped {
        assert!(u.message.contains("kmod.kernelMappings"), "{}", u.message);
        assert!(u.message.contains(&u.kernel), "{}", u.message);
    }
    assert!(
        d.unmapped[0].message.contains("regexp"),
        "names the mappings tried: {}",
        d.unmapped[0].message
    );

    let node = |name: &str, kernel: &str| Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                kernel_version: kernel.to_owned(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
        ..Node::default()
    };
    let statuses = kernel_statuses(
        &d,
        &[node("a", DEBIAN), node("b", UNMAPPED), node("c", DEBIAN)],
    );
    assert_eq!(statuses.len(), 2);
    assert_eq!(
        (statuses[0].kernel.as_str(), statuses[0].nodes),
        (UNMAPPED, 1)
    );
    assert!(statuses[0].image.is_none());
    assert!(
        statuses[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("kmod.kernelMappings"))
    );
    assert_eq!(
        (statuses[1].kernel.as_str(), statuses[1].nodes),
        (DEBIAN, 2)
    );
    assert_eq!(
        statuses[1].image.as_deref(),
        Some("registry.example.com/kafs:6.1.0-56-amd64")
    );
    assert!(statuses[1].message.is_none());
}

#[test]
fn invalid_mappings_name_the_field() {
    let bad = spec_with(|s| s.kmod.kernel_mappings[1].regexp = Some("(".to_owned()));
    let err = try_build(&bad, &[], false, &[]).expect_err("bad regexp");
    assert!(
        err.to_string().starts_with("spec.kmod.kernelMappings[1]"),
        "{err}"
    );
}

/// The settings added with the node plugin's security flags are left out of the spec's
/// JSON at their defaults, so an unchanged spec keeps its revision (and its nodes are
/// not drained) across the operator upgrade that added them.
#[test]
fn new_settings_at_their_defaults_leave_the_revision_alone() {
    let mut at_defaults = spec();
    at_defaults.csi.allow_root_mounts = false;
    // Empty only in an SR stored before the field existed (admission requires it).
    at_defaults.csi.allowed_cells.clear();
    let json = serde_json::to_value(&at_defaults.csi).expect("json");
    for key in [
        "kubeletDir",
        "allowedCells",
        "allowRootMounts",
        "allowEphemeral",
    ] {
        assert!(json.get(key).is_none(), "{key} serialized at its default");
    }
    // `client` (added with the AFS client) at its default is not hashed at all: the
    // revision is the hash of the module and driver specs alone, as before.
    assert!(at_defaults.client.is_default());
    let json = serde_json::to_value(&at_defaults).expect("json");
    assert!(
        json.get("client").is_none(),
        "client serialized at its default"
    );
    let mut csi = at_defaults.csi.clone();
    csi.storage_class = None;
    csi.mount_options.clear();
    csi.sidecars.provisioner.clear();
    let before = serde_json::to_vec(&(&at_defaults.kmod, &csi)).expect("json");
    assert_eq!(revision(&at_defaults), short_hash(&before, REVISION_HEX));
    // Written out at their defaults, the client's settings read back as the default.
    let written: ClientSpec =
        serde_json::from_value(json!({"cache": {"sizeKiB": 100000}})).expect("client");
    assert!(written.is_default());

    let mut set = at_defaults.clone();
    set.csi.kubelet_dir = "/var/lib/kubelet/".to_owned();
    set.csi.allow_root_mounts = true;
    let json = serde_json::to_value(&set.csi).expect("json");
    assert_eq!(json["kubeletDir"], "/var/lib/kubelet/");
    assert_eq!(json["allowRootMounts"], true);
}

#[test]
fn revision_follows_node_specs_only() {
    let base = spec();
    let rev = revision(&base);
    assert_eq!(rev.len(), 12);
    let round_trip: SpecialResourceSpec =
        serde_json::from_value(serde_json::to_value(&base).expect("json")).expect("spec");
    assert_eq!(revision(&round_trip), rev, "stable across serialization");

    let changed = |f: fn(&mut SpecialResourceSpec)| {
        let mut s = spec();
        f(&mut s);
        revision(&s)
    };
    for (what, f) in [
        (
            "kmod.version",
            (|s| s.kmod.version = "2021.6.0".to_owned()) as fn(&mut SpecialResourceSpec),
        ),
        ("csi.version", |s| s.csi.version = "1.3.0".to_owned()),
        ("kmod.parameters", |s| s.kmod.parameters.clear()),
        ("kmod.mapVolumes", |s| {
            s.kmod.map_volumes.pop().map(drop).unwrap_or_default()
        }),
        ("csi.cacheManager", |s| {
            s.csi.cache_manager = CacheManager::Kafs
        }),
        ("csi.sidecars.nodeDriverRegistrar", |s| {
            s.csi.sidecars.node_driver_registrar.push('1')
        }),
        ("csi.kubeletDir", |s| {
            s.csi.kubelet_dir = "/data/kubelet".to_owned()
        }),
        ("csi.allowedCells", |s| {
            s.csi.allowed_cells.pop().map(drop).unwrap_or_default()
        }),
        ("csi.allowRootMounts", |s| s.csi.allow_root_mounts = false),
        ("csi.allowEphemeral", |s| s.csi.allow_ephemeral = true),
        ("client.configDir", |s| {
            s.client.config_dir = Some("/etc/yfs2".to_owned())
        }),
        ("client.cache.directory", |s| {
            s.client.cache.directory = Some("/var/cache/yfs".to_owned())
        }),
        ("client.cache.sizeKiB", |s| {
            s.client.cache.size_kib = 200_000
        }),
        ("client.afsdOptions", |s| {
            s.client.afsd_options = vec!["-dynroot".to_owned()]
        }),
    ] {
        assert_ne!(changed(f), rev, "{what} must roll nodes");
    }
    for (what, f) in [
        (
            "rollout.maxParallel",
            (|s| s.rollout.max_parallel = 5) as fn(&mut SpecialResourceSpec),
        ),
        ("rollout.paused", |s| s.rollout.paused = true),
        ("rollout.eviction", |s| {
            s.rollout.eviction.timeout_seconds = 1
        }),
        ("namespace", |s| s.namespace = "elsewhere".to_owned()),
        ("nodeSelector", |s| {
            s.node_selector.insert("zone".to_owned(), "b".to_owned());
        }),
        ("csi.storageClass", |s| s.csi.storage_class = None),
        ("csi.mountOptions", |s| s.csi.mount_options.clear()),
        ("csi.sidecars.provisioner", |s| {
            s.csi.sidecars.provisioner.push('1')
        }),
    ] {
        assert_eq!(changed(f), rev, "{what} must not roll nodes");
    }
}

/// (roleRef kind, roleRef name, subject namespace/name) of a binding.
fn grant_of(role_ref: &RoleRef, subjects: Option<&Vec<Subject>>) -> (String, String, Vec<String>) {
    (
        role_ref.kind.clone(),
        role_ref.name.clone(),
        subjects
            .into_iter()
            .flatten()
            .map(|s| {
                assert_eq!(s.kind, "ServiceAccount");
                format!("{}/{}", s.namespace.as_deref().unwrap_or_default(), s.name)
            })
            .collect(),
    )
}

#[test]
fn rbac_binds_only_the_shipped_roles_to_the_srs_accounts() {
    let d = desired();
    // No role is built: the operator holds `bind` on the shipped ClusterRoles instead
    // of every rule it hands out.
    let cluster: Vec<_> = d
        .cluster_role_bindings
        .iter()
        .map(|b| {
            (
                b.metadata.name.clone().unwrap_or_default(),
                grant_of(&b.role_ref, b.subjects.as_ref()),
            )
        })
        .collect();
    let grant = |role: &str, account: &str| {
        (
            "ClusterRole".to_owned(),
            role.to_owned(),
            vec![format!("afs-group-1/{account}")],
        )
    };
    assert_eq!(
        cluster,
        [
            (
                "afs-sr-group-1-kmod-manager".to_owned(),
                grant(KMOD_ROLE, "group-1-kmod")
            ),
            (
                "afs-sr-group-1-csi-provisioner".to_owned(),
                grant(PROVISIONER_ROLE, "group-1-csi-controller")
            ),
        ]
    );
    let namespaced: Vec<_> = d
        .role_bindings
        .iter()
        .map(|b| {
            (
                b.metadata.namespace.clone().unwrap_or_default(),
                b.metadata.name.clone().unwrap_or_default(),
                grant_of(&b.role_ref, b.subjects.as_ref()),
            )
        })
        .collect();
    assert_eq!(
        namespaced,
        [(
            "afs-group-1".to_owned(),
            "afs-sr-group-1-csi-provisioner-leases".to_owned(),
            grant(PROVISIONER_LEASES_ROLE, "group-1-csi-controller")
        )]
    );
    for role_ref in d
        .cluster_role_bindings
        .iter()
        .map(|b| &b.role_ref)
        .chain(d.role_bindings.iter().map(|b| &b.role_ref))
    {
        assert!(
            BOUND_ROLES.contains(&role_ref.name.as_str()),
            "{role_ref:?}"
        );
    }
    // The kmod-manager node policy (deploy/rbac.yaml) recognises kmod-manager's
    // accounts by this suffix; the CSI accounts must not carry it.
    let kmod_accounts: Vec<&str> = d
        .service_accounts
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .filter(|n| n.ends_with("-kmod"))
        .collect();
    assert_eq!(kmod_accounts, ["group-1-kmod"]);

    // Every bound service account exists and is the one its pods run as.
    let accounts: Vec<_> = d
        .service_accounts
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    assert_eq!(
        accounts,
        ["group-1-kmod", "group-1-csi-node", "group-1-csi-controller"]
    );
    for (name, pod) in pod_specs(&d) {
        let sa = pod
            .service_account_name
            .as_deref()
            .expect("service account");
        assert!(accounts.contains(&sa), "{name}: {sa}");
    }
    let node_sa = &d.service_accounts[1];
    assert_eq!(
        node_sa.automount_service_account_token,
        Some(false),
        "the node plugin needs no API access"
    );
}

#[test]
fn the_operator_binds_its_namespaced_role_to_its_own_account() {
    let account = OperatorAccount {
        name: "ops".to_owned(),
        namespace: "ops-system".to_owned(),
    };
    let binding = operator_role_binding("afs-group-1", &account);
    assert_eq!(binding.metadata.name.as_deref(), Some(OPERATOR_BINDING));
    assert_eq!(binding.metadata.namespace.as_deref(), Some("afs-group-1"));
    assert_eq!(
        grant_of(&binding.role_ref, binding.subjects.as_ref()),
        (
            "ClusterRole".to_owned(),
            OPERATOR_NAMESPACE_ROLE.to_owned(),
            vec!["ops-system/ops".to_owned()]
        )
    );
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    // Shared by the SRs of the namespace, deleted by the controller with the last one:
    // never taken by an SR's garbage collection or label-based pruning.
    assert!(binding.metadata.owner_references.is_none());
    let labels = binding.metadata.labels.expect("labels");
    assert!(!labels.contains_key(SR_LABEL), "{labels:?}");
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some(MANAGED_BY)
    );
    assert_eq!(
        OperatorAccount::default(),
        OperatorAccount {
            name: "afs-operator".to_owned(),
            namespace: "afs-system".to_owned()
        },
        "what deploy/ installs"
    );
}

#[test]
fn without_the_controller_no_controller_objects() {
    let d = build_with(&sr(), &kernels(), false);
    assert!(d.csi_controller.is_none());
    assert!(d.role_bindings.is_empty(), "no provisioner, no Lease");
    assert_eq!(d.cluster_role_bindings.len(), 1, "kmod-manager's only");
    assert_eq!(d.service_accounts.len(), 2);
    assert!(
        d.storage_class.is_some(),
        "another SR's controller provisions it"
    );
}

/// kAFS has no daemon: its kmod pod gets no CAP_SYS_NICE.
#[test]
fn kafs_kmod_container_has_no_nice_capability() {
    let kafs = spec_with(|s| s.csi.cache_manager = CacheManager::Kafs);
    let d = build_with(&kafs, &kernels(), true);
    for ds in &d.kmod_daemon_sets {
        let c = container(pod_spec(ds), "kmod-manager");
        let caps = c
            .security_context
            .as_ref()
            .and_then(|sc| sc.capabilities.as_ref())
            .and_then(|c| c.add.as_deref())
            .expect("capabilities");
        assert_eq!(
            caps,
            &["SYS_MODULE", "SYS_PTRACE", "SYS_ADMIN", "SYS_CHROOT"].map(str::to_owned)[..]
        );
    }
}

#[test]
fn kmod_container_has_exactly_the_chosen_privileges() {
    let d = desired();
    for ds in &d.kmod_daemon_sets {
        let pod = pod_spec(ds);
        assert_eq!(pod.host_pid, Some(true));
        assert_eq!(pod.host_network, None);
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(120));
        assert_eq!(
            pod.image_pull_secrets
                .as_deref()
                .map(|s| s.iter().map(|r| r.name.as_str()).collect::<Vec<_>>()),
            Some(vec!["regcred"])
        );
        let c = container(pod, "kmod-manager");
        let sc = c.security_context.as_ref().expect("security context");
        assert_ne!(sc.privileged, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        // Module loading, the unload guard, the AFS root mount and joining the host's
        // mount namespace for it, afsd's Rx priority: nothing more.
        assert_eq!(
            caps.add.as_deref(),
            Some(
                &[
                    "SYS_MODULE",
                    "SYS_PTRACE",
                    "SYS_ADMIN",
                    "SYS_CHROOT",
                    "SYS_NICE"
                ]
                .map(str::to_owned)[..]
            )
        );
        assert_eq!(
            c.command.as_deref(),
            Some(&["kmod-manager".to_owned(), "run".to_owned()][..])
        );
        for (name, value) in [
            ("KMOD_CONFIG", "/etc/kmod-manager/config.yaml"),
            ("KMOD_MODULE_VERSION", "2021.5.0"),
            ("KMOD_REPORT_NODE", "true"),
            ("KMOD_FS_TYPES", "afs"),
            ("KMOD_CSI_DRIVER_NAME", crate::crd::DEFAULT_DRIVER_NAME),
            ("KMOD_KUBELET_DIR", "/var/lib/kubelet"),
        ] {
            assert_eq!(env_value(c, name), Some(value), "{name}");
        }
        let node_name = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "NODE_NAME")
            .expect("NODE_NAME");
        assert_eq!(
            node_name
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("spec.nodeName")
        );
        let probe_port = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .map(|h| (h.path.clone(), h.port.clone()))
        };
        let http =
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".to_owned());
        assert_eq!(
            probe_port(&c.readiness_probe),
            Some((Some("/readyz".to_owned()), http.clone()))
        );
        assert_eq!(
            probe_port(&c.liveness_probe),
            Some((Some("/healthz".to_owned()), http))
        );
        assert_eq!(c.ports.as_deref().map(|p| p[0].container_port), Some(9808));
    }
}

#[test]
fn kmod_volumes_and_map_volumes() {
    let d = desired();
    let pod = pod_spec(kmod_ds(&d, DEBIAN));
    let c = container(pod, "kmod-manager");
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let find = |path: &str| {
        mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("{path}"))
    };
    let kubelet = find("/var/lib/kubelet");
    assert_eq!(kubelet.read_only, Some(true));
    assert_eq!(
        kubelet.mount_propagation.as_deref(),
        Some("HostToContainer")
    );
    assert_eq!(find("/etc/kmod-manager").read_only, Some(true));
    assert_eq!(find("/run/kmod-manager").read_only, None);
    assert_eq!(find("/var/cache/yfs").read_only, None, "caches are written");
    assert_eq!(find("/etc/yfs").read_only, Some(true));
    assert_eq!(find("/etc/yfs-keytabs").read_only, Some(true));

    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let cache = volume("yfs-cache").host_path.as_ref().expect("hostPath");
    assert_eq!(
        (cache.path.as_str(), cache.type_.as_deref()),
        ("/var/cache/yfs", Some("DirectoryOrCreate"))
    );
    assert_eq!(
        volume("etc-yfs")
            .config_map
            .as_ref()
            .map(|c| c.name.as_str()),
        Some("yfs-client")
    );
    assert_eq!(
        volume("etc-yfs-keytabs")
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("keytabs")
    );
    assert!(volume("kmod-run").empty_dir.is_some());
    // Every mount has its volume.
    assert!(
        mounts
            .iter()
            .all(|m| volumes.iter().any(|v| v.name == m.name))
    );

    for (field, change) in [
        (
            "name",
            (|s| s.kmod.map_volumes[0].name = "kubelet-dir".to_owned())
                as fn(&mut SpecialResourceSpec),
        ),
        ("target", |s| {
            s.kmod.map_volumes[0].target = "/var/lib/kubelet/pods".to_owned()
        }),
        ("target", |s| {
            s.kmod.map_volumes[0].target = "/etc".to_owned()
        }),
    ] {
        let bad = spec_with(change);
        let err = try_build(&bad, &[], false, &[]).expect_err("conflict");
        assert!(
            err.to_string()
                .starts_with(&format!("spec.kmod.mapVolumes[0].{field}")),
            "{err}"
        );
    }
}

#[test]
fn config_map_parses_back_and_is_per_revision() {
    let sr = sr();
    let d = desired();
    let rev = revision(&sr.spec);
    assert_eq!(d.config_maps.len(), 1);
    let cm = &d.config_maps[0];
    assert_eq!(
        cm.metadata.name.as_deref(),
        Some(format!("group-1-kmod-config-{rev}").as_str())
    );
    assert_eq!(
        cm.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_LABEL)),
        Some(&rev)
    );
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(KMOD_CONFIG_KEY))
        .expect("config.yaml");
    let (config, mappings) =
        KmodConfig::from_yaml(Path::new(KMOD_CONFIG_KEY), text).expect("parses");
    assert_eq!(config, kmod_config(&sr.spec));
    let client = config.client.as_ref().expect("the client section");
    assert_eq!(client.cache_manager, CacheManagerKind::Auristor);
    assert_eq!(client.afs_root, Path::new("/afs"));
    assert_eq!(
        client.config_dir,
        Path::new("/etc/yfs"),
        "auristor's default"
    );
    let afsd = client.afsd.as_ref().expect("afsd for auristor");
    assert_eq!(afsd.cache_dir, None, "a memory cache by default");
    assert_eq!(afsd.cache_blocks, 100_000);
    let module = config.module.as_ref().expect("module");
    assert_eq!(module.name.as_deref(), Some("yfs"));
    assert_eq!(module.parameters, ["rootcell=example.com"]);
    assert_eq!(
        module.filesystem_types.as_deref(),
        Some(&["afs".to_owned()][..])
    );
    let release = KernelRelease::parse(DEBIAN).expect("kernel");
    let image = mappings
        .select(&release, config.module_version.as_deref())
        .expect("match")
        .image;
    assert_eq!(
        Some(image.as_str()),
        d.kmod_image(DEBIAN),
        "the pod's image is the one its config selects"
    );

    // Every kmod DaemonSet mounts this revision's ConfigMap.
    for ds in &d.kmod_daemon_sets {
        let volumes = pod_spec(ds).volumes.as_deref().unwrap_or_default();
        assert!(
            volumes
                .iter()
                .any(|v| v.config_map.as_ref().map(|c| c.name.as_str())
                    == cm.metadata.name.as_deref())
        );
    }
}

/// The client section of every kind of SR parses back with kmod-manager's own parser
/// and carries `client`, `csi.cacheManager` and `csi.afsRoot`.
#[test]
fn config_map_carries_the_afs_client() {
    let client_of = |sr: &SpecialResource| {
        let d = build_with(sr, &kernels(), false);
        let text = d.config_maps[0]
            .data
            .as_ref()
            .and_then(|d| d.get(KMOD_CONFIG_KEY))
            .expect("config.yaml")
            .clone();
        let (config, _) = KmodConfig::from_yaml(Path::new(KMOD_CONFIG_KEY), &text).expect("parses");
        config.client.expect("the client section")
    };

    let openafs = spec_with(|s| {
        s.csi.cache_manager = CacheManager::Openafs;
        s.csi.afs_root = "/afs-test".to_owned();
        s.client = serde_json::from_value(json!({
            "configDir": "/etc/openafs",
            "cellDatabaseDir": "/usr/share/yfs",
            "cache": {"directory": "/var/cache/openafs", "sizeKiB": 500000},
            "afsdOptions": ["-dynroot", "-fakestat", "-stat", "2000"]
        }))
        .expect("client");
    });
    let client = client_of(&openafs);
    assert_eq!(client.cache_manager, CacheManagerKind::Openafs);
    assert_eq!(client.afs_root, Path::new("/afs-test"));
    assert_eq!(client.config_dir, Path::new("/etc/openafs"));
    assert_eq!(client.cell_database_dir, None, "auristor's only");
    let afsd = client.afsd.expect("afsd for openafs");
    assert_eq!(afsd.path, Path::new("/usr/sbin/afsd"));
    assert_eq!(
        afsd.cache_dir.as_deref(),
        Some(Path::new("/var/cache/openafs"))
    );
    assert_eq!(afsd.cache_blocks, 500_000);
    assert_eq!(afsd.options, ["-dynroot", "-fakestat", "-stat", "2000"]);

    let auristor = spec_with(|s| {
        s.client.cell_database_dir = Some("/usr/share/yfs".to_owned());
    });
    let client = client_of(&auristor);
    assert_eq!(client.cache_manager, CacheManagerKind::Auristor);
    assert_eq!(client.config_dir, Path::new("/etc/yfs"));
    assert_eq!(
        client.cell_database_dir.as_deref(),
        Some(Path::new("/usr/share/yfs"))
    );

    let kafs = spec_with(|s| {
        s.csi.cache_manager = CacheManager::Kafs;
        s.client.cache.directory = Some("/var/cache/yfs".to_owned());
    });
    let client = client_of(&kafs);
    assert_eq!(client.cache_manager, CacheManagerKind::Kafs);
    assert_eq!(
        client.config_dir,
        Path::new("/etc/openafs"),
        "kafs's default"
    );
    assert_eq!(client.afsd, None, "the kernel is the client: no afsd");
}

#[test]
fn node_pods_tolerate_only_the_readiness_taints() {
    let d = desired();
    for ds in d.kmod_daemon_sets.iter().chain([&d.csi_node_daemon_set]) {
        let tolerations = pod_spec(ds).tolerations.as_deref().unwrap_or_default();
        let keys: Vec<_> = tolerations.iter().map(|t| t.key.as_deref()).collect();
        assert_eq!(
            keys,
            [Some(READINESS_TAINT), Some(KMOD_READINESS_TAINT)],
            "{}",
            ds_name(ds)
        );
        assert!(
            tolerations
                .iter()
                .all(|t| t.effect.as_deref() == Some("NoSchedule"))
        );
    }
    let controller = d
        .csi_controller
        .as_ref()
        .and_then(|c| c.spec.template.spec.as_ref())
        .expect("controller");
    assert!(controller.tolerations.is_none());
}

#[test]
fn host_network_only_for_kafs() {
    for manager in [
        CacheManager::Auristor,
        CacheManager::Openafs,
        CacheManager::Kafs,
    ] {
        let sr = spec_with(|s| s.csi.cache_manager = manager);
        let d = build_with(&sr, &kernels(), true);
        let kafs = manager == CacheManager::Kafs;
        for (name, pod) in pod_specs(&d) {
            // The kAFS cells are per network namespace: kmod-manager adds them in the
            // host's, where the node plugin mounts.
            let expected =
                kafs && (name == "group-x-csi-node" || name.starts_with("group-x-kmod-"));
            assert_eq!(
                pod.host_network == Some(true),
                expected,
                "{name} with {manager:?}"
            );
            assert_eq!(
                pod.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"),
                expected,
                "{name} with {manager:?}"
            );
            // The host network does not make the module pod privileged, with any
            // cache manager.
            if name.starts_with("group-x-kmod-") {
                let sc = container(pod, "kmod-manager")
                    .security_context
                    .as_ref()
                    .expect("security context");
                assert_ne!(sc.privileged, Some(true), "{name} with {manager:?}");
                assert_eq!(sc.allow_privilege_escalation, Some(false));
            }
        }
        let driver = container(pod_spec(&d.csi_node_daemon_set), "csi-driver");
        assert_eq!(
            env_value(driver, "CSI_CACHE_MANAGER"),
            Some(manager.as_str())
        );
    }
}

#[test]
fn only_the_node_plugin_driver_is_privileged_and_bidirectional_on_the_kubelet_dir() {
    let d = desired();
    let mut bidirectional = Vec::new();
    let mut privileged = Vec::new();
    for (name, pod) in pod_specs(&d) {
        for c in &pod.containers {
            for m in c.volume_mounts.iter().flatten() {
                if m.mount_propagation.as_deref() == Some("Bidirectional") {
                    bidirectional.push((name.to_owned(), c.name.clone(), m.mount_path.clone()));
                }
            }
            if c.security_context.as_ref().and_then(|s| s.privileged) == Some(true) {
                privileged.push((name.to_owned(), c.name.clone()));
            }
        }
    }
    let node = ("group-1-csi-node".to_owned(), "csi-driver".to_owned());
    assert_eq!(
        bidirectional,
        [(
            node.0.clone(),
            node.1.clone(),
            "/var/lib/kubelet".to_owned()
        )]
    );
    assert_eq!(privileged, [node]);
}

#[test]
fn csi_node_plugin() {
    let d = desired();
    let ds = &d.csi_node_daemon_set;
    assert_eq!(ds_name(ds), "group-1-csi-node");
    assert_eq!(
        ds.spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref()),
        Some("OnDelete")
    );
    let labels = ds
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("labels");
    assert_eq!(labels.get(REVISION_LABEL), Some(&revision(&sr().spec)));
    let pod = pod_spec(ds);
    assert_eq!(pod.node_selector.as_ref(), Some(&sr().spec.node_selector));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.automount_service_account_token, Some(false));

    let driver = container(pod, "csi-driver");
    assert_eq!(
        driver.image.as_deref(),
        Some("registry.example.com/afs-csi:1.2.0")
    );
    for (name, value) in [
        ("CSI_MODE", "node"),
        ("CSI_ENDPOINT", "unix:///csi/csi.sock"),
        ("CSI_DRIVER_NAME", crate::crd::DEFAULT_DRIVER_NAME),
        ("CSI_AFS_ROOT", "/afs"),
        ("CSI_KUBELET_DIR", "/var/lib/kubelet"),
        ("CSI_ALLOWED_CELLS", "example.com,grand.central.org"),
        ("CSI_ALLOW_ROOT_MOUNTS", "true"),
        ("CSI_ALLOW_EPHEMERAL", "false"),
        ("RUST_LOG", "info"),
    ] {
        assert_eq!(env_value(driver, name), Some(value), "{name}");
    }
    assert!(driver.env.iter().flatten().any(|e| {
        e.name == "CSI_NODE_ID"
            && e.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str())
                == Some("spec.nodeName")
    }));
    assert!(
        !serde_json::to_string(driver)
            .expect("json")
            .contains("noexec"),
        "mount options are not a driver flag"
    );
    assert_eq!(
        driver.liveness_probe, None,
        "a client outage is no reason to restart the plugin"
    );
    let probe = driver
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("readiness");
    let port = driver
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.container_port == 9898)
        .expect("port");
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
            port.name.clone().expect("named")
        )
    );
    let afs = driver
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/afs")
        .expect("afs root");
    assert_eq!(afs.mount_propagation.as_deref(), Some("HostToContainer"));

    let registrar = container(pod, "node-driver-registrar");
    assert_eq!(
        registrar.args.as_deref().unwrap_or_default(),
        [
            "--csi-address=/csi/csi.sock",
            "--kubelet-registration-path=/var/lib/kubelet/plugins/auristorfs.csi.auristor.com/csi.sock"
        ]
    );
    let liveness = container(pod, "liveness-probe");
    assert_eq!(
        liveness.args.as_deref().unwrap_or_default(),
        ["--csi-address=/csi/csi.sock", "--health-port=9898"]
    );
    for sidecar in [registrar, liveness] {
        let sc = sidecar.security_context.as_ref().expect("security context");
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.add.as_ref()), None);
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let host = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| (h.path.as_str(), h.type_.as_deref().unwrap_or_default()))
    };
    assert_eq!(
        host("socket-dir"),
        Some((
            "/var/lib/kubelet/plugins/auristorfs.csi.auristor.com",
            "DirectoryOrCreate"
        ))
    );
    assert_eq!(host("kubelet-dir"), Some(("/var/lib/kubelet", "Directory")));
    assert_eq!(
        host("registration-dir"),
        Some(("/var/lib/kubelet/plugins_registry", "Directory"))
    );
    assert_eq!(host("afs-root"), Some(("/afs", "DirectoryOrCreate")));
    for c in &pod.containers {
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .all(|m| volumes.iter().any(|v| v.name == m.name)),
            "{}",
            c.name
        );
    }
}

/// `csi.kubeletDir` moves every kubelet path of the node pods (plugin socket,
/// registration, pod volumes, the guard's view of CSI targets); the other security
/// settings reach the driver as its environment.
#[test]
fn node_pods_follow_the_kubelet_dir_and_the_security_settings() {
    let custom = spec_with(|s| {
        s.csi.kubelet_dir = "/data/kubelet".to_owned();
        s.csi.allowed_cells = vec!["*".to_owned()];
        s.csi.allow_root_mounts = false;
        s.csi.allow_ephemeral = true;
    });
    let d = build_with(&custom, &kernels(), false);
    let pod = pod_spec(&d.csi_node_daemon_set);
    let host_paths: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref())
        .map(|h| h.path.as_str())
        .filter(|p| p.contains("kubelet"))
        .collect();
    assert_eq!(
        host_paths,
        [
            "/data/kubelet/plugins/auristorfs.csi.auristor.com",
            "/data/kubelet",
            "/data/kubelet/plugins_registry"
        ]
    );
    let driver = container(pod, "csi-driver");
    for (name, value) in [
        ("CSI_KUBELET_DIR", "/data/kubelet"),
        ("CSI_ALLOWED_CELLS", "*"),
        ("CSI_ALLOW_ROOT_MOUNTS", "false"),
        ("CSI_ALLOW_EPHEMERAL", "true"),
    ] {
        assert_eq!(env_value(driver, name), Some(value), "{name}");
    }
    assert!(
        driver
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/data/kubelet"
                && m.mount_propagation.as_deref() == Some("Bidirectional"))
    );
    let registrar = container(pod, "node-driver-registrar");
    assert!(
        registrar.args.iter().flatten().any(|a| a
            == "--kubelet-registration-path=/data/kubelet/plugins/auristorfs.csi.auristor.com/csi.sock"),
        "{:?}",
        registrar.args
    );
    let kmod = pod_spec(d.kmod_daemon_sets.first().expect("a kmod DaemonSet"));
    let kmod_container = container(kmod, "kmod-manager");
    assert_eq!(
        env_value(kmod_container, "KMOD_KUBELET_DIR"),
        Some("/data/kubelet")
    );
    assert!(
        kmod.volumes
            .iter()
            .flatten()
            .filter_map(|v| v.host_path.as_ref())
            .any(|h| h.path == "/data/kubelet")
    );
    let all = serde_json::to_string(&d.kmod_daemon_sets).expect("json")
        + &serde_json::to_string(&d.csi_node_daemon_set).expect("json");
    assert!(
        !all.contains("/var/lib/kubelet"),
        "no fixed kubelet path left"
    );
}

#[test]
fn csi_controller_is_non_root() {
    let d = desired();
    let deployment = d.csi_controller.as_ref().expect("controller");
    assert_eq!(
        deployment.metadata.name.as_deref(),
        Some("group-1-csi-controller")
    );
    assert_eq!(deployment.spec.replicas, Some(1));
    let pod = deployment.spec.template.spec.as_ref().expect("pod");
    let psc = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(
        (psc.run_as_non_root, psc.run_as_user),
        (Some(true), Some(65532))
    );
    assert!(pod.host_network.is_none() && pod.host_pid.is_none());
    let driver = container(pod, "csi-driver");
    assert_eq!(env_value(driver, "CSI_MODE"), Some("controller"));
    let provisioner = container(pod, "csi-provisioner");
    assert_eq!(
        provisioner.args.as_deref().unwrap_or_default(),
        [
            "--csi-address=/csi/csi.sock",
            "--leader-election",
            "--extra-create-metadata",
            "--timeout=30s"
        ]
    );
    for c in &pod.containers {
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.as_deref()),
            Some(&["ALL".to_owned()][..])
        );
    }
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    assert!(
        volumes.iter().all(|v| v.empty_dir.is_some()),
        "no host access"
    );
}

#[test]
fn storage_class_carries_mount_options() {
    let d = desired();
    let class = d.storage_class.as_ref().expect("class");
    assert_eq!(class.metadata.name.as_deref(), Some("afs"));
    assert_eq!(class.provisioner, crate::crd::DEFAULT_DRIVER_NAME);
    assert_eq!(
        class.mount_options.as_deref(),
        Some(&["noexec".to_owned()][..])
    );
    assert_eq!(
        class
            .parameters
            .as_ref()
            .and_then(|p| p.get("mount-type"))
            .map(String::as_str),
        Some("root")
    );
    assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(class.volume_binding_mode.as_deref(), Some("Immediate"));
    assert_eq!(class.allow_volume_expansion, Some(false));
    assert_eq!(
        class
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .map(String::as_str),
        Some("true")
    );

    let not_default = spec_with(|s| {
        s.csi
            .storage_class
            .as_mut()
            .map(|c| c.is_default = false)
            .unwrap_or_default()
    });
    let d = build_with(&not_default, &[], false);
    assert!(
        d.storage_class
            .expect("class")
            .metadata
            .annotations
            .is_none()
    );
    let none = spec_with(|s| s.csi.storage_class = None);
    assert!(build_with(&none, &[], false).storage_class.is_none());
}

#[test]
fn metadata_errors_name_the_field() {
    let mut no_uid = sr();
    no_uid.metadata.uid = None;
    let err = try_build(&no_uid, &[], false, &[]).expect_err("no uid");
    assert!(err.to_string().contains("metadata.uid"), "{err}");
    let long = sr_with(&"a".repeat(64), "uid", spec());
    let err = try_build(&long, &[], false, &[]).expect_err("too long");
    assert!(err.to_string().contains("at most 63"), "{err}");
    assert!(try_build(&sr_with(&"a".repeat(63), "uid", spec()), &[], false, &[]).is_ok());
}

#[test]
fn kernel_label_values() {
    for release in [
        RHEL,
        DEBIAN,
        "6.8.0-1015-aws",
        "5.14.0-284.11.1.el9_2.x86_64",
    ] {
        assert_eq!(kernel_label_value(release), release);
    }
    let plus = kernel_label_value("5.15.0+");
    assert!(plus.starts_with("5.15.0-") && label_safe(&plus), "{plus}");
    assert_ne!(plus, kernel_label_value("5.15.0~"));
    let long = "6.1.0-".to_owned() + &"x".repeat(60);
    assert!(label_safe(&kernel_label_value(&long)));
    assert!(label_safe(&kernel_label_value("")));
    assert!(label_safe(&kernel_label_value("+++")));
}

proptest! {
    #[test]
    fn kernel_label_value_is_label_safe(kernel in "\\PC{0,80}") {
        let value = kernel_label_value(&kernel);
        prop_assert!(label_safe(&value), "{kernel:?} -> {value:?}");
        if label_safe(&kernel) {
            prop_assert_eq!(&value, &kernel);
        }
    }

    #[test]
    fn kernel_label_value_tells_releases_apart(
        a in "[0-9][0-9A-Za-z._+~-]{0,70}",
        b in "[0-9][0-9A-Za-z._+~-]{0,70}",
    ) {
        prop_assume!(a != b);
        prop_assert_ne!(kernel_label_value(&a), kernel_label_value(&b));
        prop_assert_ne!(kmod_daemon_set_name("sr", &a), kmod_daemon_set_name("sr", &b));
    }
}
