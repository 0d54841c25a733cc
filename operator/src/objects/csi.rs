//! The CSI driver: node plugin DaemonSet, controller Deployment, CSIDriver and
//! StorageClass.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSecurityContext, PodSpec, SecurityContext, VolumeMount,
};
use k8s_openapi::api::storage::v1::{CSIDriver, CSIDriverSpec, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod::{
    BIDIRECTIONAL, HOST_TO_CONTAINER, NODE_CRITICAL, empty_dir_volume, env, env_from_field,
    hardened, host_path_volume, http_probe, match_labels, mount, named_port, on_delete_daemon_set,
    readiness_tolerations, template,
};
use super::{
    BuildError, CSI_CONTROLLER_COMPONENT, CSI_DRIVER_COMPONENT, CSI_NODE_COMPONENT, Ctx,
    MANAGED_BY, owner_reference,
};
use crate::crd::{CacheManager, SpecialResource};
use crate::labels::{COMPONENT_LABEL, MANAGED_BY_LABEL};

/// CSIDriver lifecycle modes: volumes of claims, and inline volumes of pods.
pub const PERSISTENT_MODE: &str = "Persistent";
pub const EPHEMERAL_MODE: &str = "Ephemeral";

/// Annotation making a StorageClass the cluster's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// Where every container of a CSI pod finds the driver's socket.
const SOCKET_DIR: &str = "/csi";
const SOCKET_PATH: &str = "/csi/csi.sock";
const ENDPOINT: &str = "unix:///csi/csi.sock";
/// The livenessprobe sidecar serves /healthz here (on the node's network for kAFS).
const HEALTH_PORT: i32 = 9898;
const HEALTH_PORT_NAME: &str = "healthz";
/// The controller runs as this non-root user (distroless `nonroot`); its socket is
/// owner-only, so the provisioner runs as the same user.
const CONTROLLER_UID: i64 = 65532;
/// The node plugin's sidecars run as root: the driver (root, privileged) creates its
/// socket owner-only, and kubelet's registration directory is root's.
const ROOT: i64 = 0;

const SOCKET_VOLUME: &str = "socket-dir";
const KUBELET_VOLUME: &str = "kubelet-dir";
const REGISTRATION_VOLUME: &str = "registration-dir";
const REGISTRATION_DIR: &str = "/registration";
const AFS_ROOT_VOLUME: &str = "afs-root";

/// Comma-joined list of `csi.allowedCells` for the driver's `--allowed-cells`.
const CELL_SEPARATOR: &str = ",";

/// The node plugin `<sr>-csi-node` on every node of the group.
pub(super) fn node_daemon_set(ctx: &Ctx<'_>) -> DaemonSet {
    let csi = &ctx.spec.csi;
    // Every kubelet path below is under the group's kubelet root: a node whose kubelet
    // runs with another --root-dir would otherwise never see the plugin register.
    let kubelet_dir = csi.kubelet_dir.as_str();
    let plugin_dir = format!("{kubelet_dir}/plugins/{}", csi.driver_name);
    // kAFS is per network namespace (/proc/fs/afs, its cells): the plugin must mount in
    // the host's.
    let host_network = csi.cache_manager == CacheManager::Kafs;

    // What the node plugin may publish: the driver refuses, per request, a cell outside
    // the list, a root mount and an inline volume unless allowed here.
    let mut driver = driver_container(
        ctx,
        "node",
        vec![
            env_from_field("CSI_NODE_ID", "spec.nodeName"),
            env("CSI_AFS_ROOT", &csi.afs_root),
            env("CSI_KUBELET_DIR", kubelet_dir),
            env("CSI_ALLOWED_CELLS", &csi.allowed_cells.join(CELL_SEPARATOR)),
            env("CSI_ALLOW_ROOT_MOUNTS", bool_flag(csi.allow_root_mounts)),
            env("CSI_ALLOW_EPHEMERAL", bool_flag(csi.allow_ephemeral)),
        ],
    );
    // Publishing needs mounts that propagate back to the host (kubelet and the pod's
    // containers must see them): Bidirectional propagation is only allowed in
    // privileged containers. Root explicitly: the image runs as 65532 by default (for
    // the controller), and a privileged non-root process still cannot mount.
    driver.security_context = Some(SecurityContext {
        privileged: Some(true),
        run_as_user: Some(ROOT),
        read_only_root_filesystem: Some(true),
        ..SecurityContext::default()
    });
    driver.ports = Some(vec![named_port(HEALTH_PORT_NAME, HEALTH_PORT)]);
    // Probe fails while the AFS root is not AFS (the client down or not yet up): that
    // is readiness. As a liveness probe it restarted the plugin in a loop during a
    // client outage, a restart fixes nothing, and the crash-loop back-off then kept the
    // plugin down for minutes after the client came back.
    driver.readiness_probe = Some(http_probe("/healthz", HEALTH_PORT_NAME));
    driver.volume_mounts.get_or_insert_default().extend([
        VolumeMount {
            mount_propagation: Some(BIDIRECTIONAL.to_owned()),
            ..mount(KUBELET_VOLUME, kubelet_dir)
        },
        // The AFS client (afsd for AuriStorFS and OpenAFS, the kAFS dynamic root)
        // mounts the AFS root on the host, possibly after this pod started; root
        // volumes bind it and Probe lists it, whatever the cache manager. Read-write:
        // a bind inherits the read-only flag of its source mount.
        VolumeMount {
            mount_propagation: Some(HOST_TO_CONTAINER.to_owned()),
            ..mount(AFS_ROOT_VOLUME, &csi.afs_root)
        },
    ]);

    let registrar = node_sidecar(
        ctx,
        "node-driver-registrar",
        &csi.sidecars.node_driver_registrar,
        vec![
            format!("--csi-address={SOCKET_PATH}"),
            format!("--kubelet-registration-path={plugin_dir}/csi.sock"),
        ],
        vec![mount(REGISTRATION_VOLUME, REGISTRATION_DIR)],
    );
    let liveness = node_sidecar(
        ctx,
        "liveness-probe",
        &csi.sidecars.liveness_probe,
        vec![
            format!("--csi-address={SOCKET_PATH}"),
            format!("--health-port={HEALTH_PORT}"),
        ],
        Vec::new(),
    );

    let spec = PodSpec {
        service_account_name: Some(ctx.object_name(CSI_NODE_COMPONENT)),
        automount_service_account_token: Some(false),
        host_network: host_network.then_some(true),
        dns_policy: host_network.then(|| "ClusterFirstWithHostNet".to_owned()),
        priority_class_name: Some(NODE_CRITICAL.to_owned()),
        node_selector: Some(ctx.spec.node_selector.clone()),
        tolerations: Some(readiness_tolerations()),
        containers: vec![driver, registrar, liveness],
        volumes: Some(vec![
            host_path_volume(SOCKET_VOLUME, &plugin_dir, "DirectoryOrCreate"),
            host_path_volume(KUBELET_VOLUME, kubelet_dir, "Directory"),
            host_path_volume(
                REGISTRATION_VOLUME,
                &format!("{kubelet_dir}/plugins_registry"),
                "Directory",
            ),
            host_path_volume(AFS_ROOT_VOLUME, &csi.afs_root, "DirectoryOrCreate"),
        ]),
        ..PodSpec::default()
    };
    on_delete_daemon_set(
        ctx,
        ctx.object_name(CSI_NODE_COMPONENT),
        CSI_NODE_COMPONENT,
        &BTreeMap::new(),
        spec,
    )
}

fn bool_flag(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// The controller `<sr>-csi-controller`: the driver in controller mode and
/// csi-provisioner (leader-elected, so a rolling update never runs two), non-root.
pub(super) fn controller(ctx: &Ctx<'_>) -> Deployment {
    let csi = &ctx.spec.csi;
    let provisioner = sidecar(
        ctx,
        "csi-provisioner",
        &csi.sidecars.provisioner,
        vec![
            format!("--csi-address={SOCKET_PATH}"),
            "--leader-election".to_owned(),
            "--extra-create-metadata".to_owned(),
            "--timeout=30s".to_owned(),
        ],
        Vec::new(),
    );
    let spec = PodSpec {
        service_account_name: Some(ctx.object_name(CSI_CONTROLLER_COMPONENT)),
        priority_class_name: Some("system-cluster-critical".to_owned()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(CONTROLLER_UID),
            run_as_group: Some(CONTROLLER_UID),
            seccomp_profile: hardened().seccomp_profile,
            ..PodSecurityContext::default()
        }),
        containers: vec![driver_container(ctx, "controller", Vec::new()), provisioner],
        volumes: Some(vec![empty_dir_volume(SOCKET_VOLUME)]),
        ..PodSpec::default()
    };
    Deployment {
        metadata: ctx.namespaced_meta(
            ctx.object_name(CSI_CONTROLLER_COMPONENT),
            CSI_CONTROLLER_COMPONENT,
        ),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: match_labels(ctx.selector(CSI_CONTROLLER_COMPONENT)),
            template: template(ctx.labels(CSI_CONTROLLER_COMPONENT), spec),
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// The driver (`<csi.image>:<csi.version>`) in `mode`, configured through the
/// environment (every flag of the driver has its variable), hardened; the node
/// plugin replaces the security context.
fn driver_container(ctx: &Ctx<'_>, mode: &str, extra_env: Vec<EnvVar>) -> Container {
    let csi = &ctx.spec.csi;
    let mut vars = vec![
        env("CSI_MODE", mode),
        env("CSI_ENDPOINT", ENDPOINT),
        env("CSI_DRIVER_NAME", &csi.driver_name),
        env("CSI_CACHE_MANAGER", csi.cache_manager.as_str()),
        env("RUST_LOG", csi.log_level.as_str()),
    ];
    vars.extend(extra_env);
    Container {
        name: "csi-driver".to_owned(),
        image: Some(format!("{}:{}", csi.image, csi.version)),
        image_pull_policy: Some(csi.image_pull_policy.as_str().to_owned()),
        env: Some(vars),
        volume_mounts: Some(vec![mount(SOCKET_VOLUME, SOCKET_DIR)]),
        security_context: Some(hardened()),
        ..Container::default()
    }
}

/// A sidecar talking to the driver's socket, hardened, plus `mounts`.
fn sidecar(
    ctx: &Ctx<'_>,
    name: &str,
    image: &str,
    args: Vec<String>,
    mounts: Vec<VolumeMount>,
) -> Container {
    let mut volume_mounts = vec![mount(SOCKET_VOLUME, SOCKET_DIR)];
    volume_mounts.extend(mounts);
    Container {
        name: name.to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: Some(ctx.spec.csi.sidecars.image_pull_policy.as_str().to_owned()),
        args: Some(args),
        volume_mounts: Some(volume_mounts),
        security_context: Some(hardened()),
        ..Container::default()
    }
}

/// A sidecar of the node plugin: root (see [`ROOT`]) but without any capability.
fn node_sidecar(
    ctx: &Ctx<'_>,
    name: &str,
    image: &str,
    args: Vec<String>,
    mounts: Vec<VolumeMount>,
) -> Container {
    let mut container = sidecar(ctx, name, image, args, mounts);
    container.security_context = Some(SecurityContext {
        run_as_user: Some(ROOT),
        ..hardened()
    });
    container
}

/// The CSIDriver `<driverName>`, shared by every SR using that name: each is a
/// non-controller owner, so it is garbage-collected with the last of them. It carries
/// no SR label (no cleanup by one SR's label may take it) and depends only on the set
/// of owners, so every SR builds the same object. It lists the `Ephemeral` lifecycle
/// mode only when one of them allows inline volumes: kubelet then refuses inline
/// volumes of the driver itself, before any node plugin sees them.
pub(super) fn csi_driver(
    sr: &SpecialResource,
    owners: &[&SpecialResource],
) -> Result<CSIDriver, BuildError> {
    let ours = &sr.spec.csi.driver_name;
    let mut refs = BTreeMap::new();
    let mut ephemeral = false;
    let all = std::iter::once(("SpecialResource".to_owned(), sr)).chain(
        owners
            .iter()
            .enumerate()
            .map(|(i, owner)| (format!("csi_driver_owners[{i}]"), *owner)),
    );
    for (which, owner) in all {
        let theirs = &owner.spec.csi.driver_name;
        let reference = owner_reference(owner, &which, false)?;
        if theirs != ours {
            return Err(BuildError::ForeignDriverOwner {
                name: reference.name,
                theirs: theirs.clone(),
                ours: ours.clone(),
            });
        }
        ephemeral |= owner.spec.csi.allow_ephemeral;
        refs.insert((reference.name.clone(), reference.uid.clone()), reference);
    }
    let mut modes = vec![PERSISTENT_MODE.to_owned()];
    if ephemeral {
        modes.push(EPHEMERAL_MODE.to_owned());
    }
    Ok(CSIDriver {
        metadata: ObjectMeta {
            name: Some(ours.clone()),
            labels: Some(BTreeMap::from([
                (COMPONENT_LABEL.to_owned(), CSI_DRIVER_COMPONENT.to_owned()),
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            ])),
            owner_references: Some(refs.into_values().collect()),
            ..ObjectMeta::default()
        },
        spec: CSIDriverSpec {
            attach_required: Some(false),
            pod_info_on_mount: Some(true),
            // A recursive chown over AFS is wrong: AFS has its own ACLs.
            fs_group_policy: Some("None".to_owned()),
            volume_lifecycle_modes: Some(modes),
            requires_republish: Some(false),
            ..CSIDriverSpec::default()
        },
    })
}

/// The StorageClass of `csi.storageClass`, provisioned by the driver with
/// `csi.mountOptions` (they are mount options of volumes, not a driver flag).
/// Kubernetes refuses changes of `parameters` (and provisioner, reclaim policy,
/// binding mode) of an existing class: the controller must recreate it.
pub(super) fn storage_class(ctx: &Ctx<'_>) -> Option<StorageClass> {
    let csi = &ctx.spec.csi;
    let class = csi.storage_class.as_ref()?;
    let mut metadata = ctx.meta(class.name.clone(), CSI_DRIVER_COMPONENT);
    if class.is_default {
        metadata.annotations = Some(BTreeMap::from([(
            DEFAULT_CLASS_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]));
    }
    Some(StorageClass {
        metadata,
        provisioner: csi.driver_name.clone(),
        parameters: (!class.parameters.is_empty()).then(|| class.parameters.clone()),
        mount_options: (!csi.mount_options.is_empty()).then(|| csi.mount_options.clone()),
        reclaim_policy: Some("Delete".to_owned()),
        volume_binding_mode: Some("Immediate".to_owned()),
        allow_volume_expansion: Some(false),
        allowed_topologies: None,
    })
}
