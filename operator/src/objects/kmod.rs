//! kmod-manager's config and the driver-container DaemonSets, one per kernel.
//!
//! The driver-container image depends on the kernel, so each distinct kernel of the
//! group gets its own DaemonSet, selecting the group's nodes that carry
//! [`KERNEL_LABEL`] with that kernel. A kernel no mapping serves gets none, and is
//! reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, ConfigMap, Container, LocalObjectReference, PodSpec,
    SELinuxOptions, SecurityContext, Volume, VolumeMount,
};
use kmod_manager::config::{
    AfsdSettings, CacheManagerKind, ClientSettings, KmodConfig, ModuleSettings, default_afsd_path,
};
use kmod_manager::kernel::KernelRelease;
use kmod_manager::mapping::{MappingError, MappingSet};

use super::pod::{
    HOST_TO_CONTAINER, NODE_CRITICAL, config_map_volume, empty_dir_volume, env, env_from_field,
    hardened, host_path_volume, http_probe, mount, named_port, on_delete_daemon_set,
    read_only_mount, readiness_tolerations, secret_volume,
};
use super::{
    BuildError, Ctx, KERNEL_HEX, KMOD_COMPONENT, UnmappedKernel, kernel_label_value, short_hash,
};
use crate::crd::{CacheManager, MapVolume, SpecialResourceSpec};
use crate::labels::{KERNEL_LABEL, REVISION_LABEL};

/// Key of the config file in the ConfigMap.
pub const KMOD_CONFIG_KEY: &str = "config.yaml";
/// Where the ConfigMap is mounted.
const CONFIG_DIR: &str = "/etc/kmod-manager";
/// kmod-manager's ready file lives here (an emptyDir: the root filesystem is read-only).
const RUN_DIR: &str = "/run/kmod-manager";
/// kmod-manager's default `--listen` port (/healthz, /readyz, /metrics).
const HTTP_PORT: i32 = 9808;
const HTTP_PORT_NAME: &str = "http";
/// kmod-manager's shutdown unloads the module only when its guard allows, polling
/// for a while; give it that time before SIGKILL.
const TERMINATION_GRACE_SECONDS: i64 = 120;
/// Module loading and the unload guard need root (with the capabilities below only).
const ROOT: i64 = 0;
/// `finit_module` / `delete_module`. The runtime's default seccomp profile allows these
/// syscalls exactly when the container has this capability.
const CAP_SYS_MODULE: &str = "SYS_MODULE";
/// The unload guard reads `/proc/<pid>/ns/mnt` and `/proc/<pid>/exe` of every process
/// to group them by mount namespace (and the client opens `/proc/1/ns/mnt` to join the
/// host's); the kernel checks ptrace read access for these, which fails for processes
/// of other users or with more capabilities (kubelet, privileged pods) without this
/// capability. `mountinfo` itself is world-readable and kubelet's pod directories are
/// root-owned, so no DAC override capability is needed.
const CAP_SYS_PTRACE: &str = "SYS_PTRACE";
/// Mounting and unmounting the AFS root, and afsd's cache-manager calls (OpenAFS
/// checks `capable(CAP_SYS_ADMIN)`). The runtime's default seccomp profile allows
/// mount, umount2, setns, unshare and the new mount API (fsopen, ...) only with this
/// capability.
const CAP_SYS_ADMIN: &str = "SYS_ADMIN";
/// The AFS root is mounted in the host's mount namespace (so kubelet and the CSI node
/// plugin see it) by a thread that joins it: `unshare(CLONE_FS)`, then
/// `setns(/proc/1/ns/mnt)`, which needs this capability as well as CAP_SYS_ADMIN.
/// That is what spares the container `privileged: true`, which Bidirectional mount
/// propagation would need.
const CAP_SYS_CHROOT: &str = "SYS_CHROOT";
/// afsd (OpenAFS, AuriStorFS) raises the priority of its Rx listener
/// (`setpriority(-20)`) and stops when it cannot ("setting rx priority: Permission
/// denied"). Not given for kAFS, which has no daemon.
const CAP_SYS_NICE: &str = "SYS_NICE";

const CONFIG_VOLUME: &str = "kmod-config";
const RUN_VOLUME: &str = "kmod-run";
const KUBELET_VOLUME: &str = "kubelet-dir";

/// `<sr>-kmod-config-<revision>`: one ConfigMap per revision, so that a driver
/// container of the previous revision that restarts during a rollout still reads the
/// config it was built for (its image must match what that config selects). The
/// controller deletes a revision's ConfigMap once no pod of that revision is left.
pub fn kmod_config_map_name(sr: &str, revision: &str) -> String {
    format!("{sr}-kmod-config-{revision}")
}

/// `<sr>-kmod-<hash of the kernel release>`: valid and stable for any release.
pub fn kmod_daemon_set_name(sr: &str, kernel: &str) -> String {
    format!("{sr}-kmod-{}", short_hash(kernel.as_bytes(), KERNEL_HEX))
}

/// kmod-manager's config for an SR's spec: the module (`kmod`) and the AFS client
/// (`client`, with `csi.cacheManager` and `csi.afsRoot`).
pub fn kmod_config(spec: &SpecialResourceSpec) -> KmodConfig {
    let kmod = &spec.kmod;
    KmodConfig {
        module_version: Some(kmod.version.clone()),
        module: Some(ModuleSettings {
            name: Some(kmod.module.clone()),
            parameters: kmod.parameters.clone(),
            load_order: None,
            filesystem_types: Some(kmod.in_use_filesystems.clone()),
            module_dir: None,
        }),
        kernel_mappings: kmod.kernel_mappings.clone(),
        client: Some(client_settings(spec)),
    }
}

/// The AFS client of the config: afsd for openafs and auristor (kafs has none), its
/// files where `client` says.
fn client_settings(spec: &SpecialResourceSpec) -> ClientSettings {
    let (csi, client) = (&spec.csi, &spec.client);
    let afsd = (csi.cache_manager != CacheManager::Kafs).then(|| AfsdSettings {
        path: default_afsd_path(),
        cache_dir: client.cache.directory.as_ref().map(PathBuf::from),
        cache_blocks: client.cache.size_kib,
        options: client.afsd_options.clone(),
    });
    ClientSettings {
        cache_manager: match csi.cache_manager {
            CacheManager::Auristor => CacheManagerKind::Auristor,
            CacheManager::Openafs => CacheManagerKind::Openafs,
            CacheManager::Kafs => CacheManagerKind::Kafs,
        },
        afs_root: PathBuf::from(&csi.afs_root),
        config_dir: PathBuf::from(client.config_dir(csi.cache_manager)),
        // auristor's only (admission refuses it with the others).
        cell_database_dir: client
            .cell_database_dir
            .as_ref()
            .filter(|_| csi.cache_manager == CacheManager::Auristor)
            .map(PathBuf::from),
        afsd,
    }
}

pub(super) fn config_map(ctx: &Ctx<'_>) -> Result<ConfigMap, BuildError> {
    let yaml = serde_norway::to_string(&kmod_config(ctx.spec)).map_err(BuildError::Config)?;
    let mut meta =
        ctx.namespaced_meta(kmod_config_map_name(ctx.name, ctx.revision), KMOD_COMPONENT);
    meta.labels
        .get_or_insert_default()
        .insert(REVISION_LABEL.to_owned(), ctx.revision.to_owned());
    Ok(ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(KMOD_CONFIG_KEY.to_owned(), yaml)])),
        ..ConfigMap::default()
    })
}

/// One DaemonSet per distinct kernel a mapping serves (sorted by kernel), and the
/// kernels none serves.
pub(super) fn daemon_sets(
    ctx: &Ctx<'_>,
    kernels: &[String],
) -> Result<(Vec<DaemonSet>, Vec<UnmappedKernel>), BuildError> {
    let kmod = &ctx.spec.kmod;
    let set = MappingSet::compile(&kmod.kernel_mappings).map_err(BuildError::KernelMappings)?;
    let volumes = Volumes::new(ctx)?;
    let mut daemon_sets = Vec::new();
    let mut unmapped = Vec::new();
    for kernel in kernels.iter().collect::<BTreeSet<_>>() {
        match select_image(&set, &kmod.version, kernel) {
            Ok(image) => daemon_sets.push(daemon_set(ctx, &volumes, kernel, &image)),
            Err(message) => unmapped.push(UnmappedKernel {
                kernel: kernel.clone(),
                message,
            }),
        }
    }
    Ok((daemon_sets, unmapped))
}

/// The image serving `kernel`, or why there is none (naming `kmod.kernelMappings`).
fn select_image(set: &MappingSet, version: &str, kernel: &str) -> Result<String, String> {
    let release = KernelRelease::parse(kernel)
        .map_err(|e| format!("kmod.kernelMappings cannot serve kernel {kernel:?}: {e}"))?;
    set.select(&release, Some(version))
        .map(|selection| selection.image)
        .map_err(|e| match e {
            MappingError::NoMatch { .. } => format!("kmod.kernelMappings: {e}"),
            // The others name `kernelMappings[i]` themselves.
            _ => format!("kmod.{e}"),
        })
}

fn daemon_set(ctx: &Ctx<'_>, volumes: &Volumes, kernel: &str, image: &str) -> DaemonSet {
    let kmod = &ctx.spec.kmod;
    let kernel_label = BTreeMap::from([(KERNEL_LABEL.to_owned(), kernel_label_value(kernel))]);
    let mut node_selector = ctx.spec.node_selector.clone();
    node_selector.extend(kernel_label.clone());
    let image_pull_secrets = kmod
        .image_pull_secrets
        .iter()
        .map(|name| LocalObjectReference { name: name.clone() })
        .collect::<Vec<_>>();
    // kAFS cells live per network namespace (/proc/fs/afs): kmod-manager must add them
    // in the host's, where the CSI node plugin (on the host network for kafs too)
    // mounts volumes.
    let host_network = ctx.spec.csi.cache_manager == CacheManager::Kafs;
    let spec = PodSpec {
        service_account_name: Some(ctx.object_name(KMOD_COMPONENT)),
        // The unload guard must see every process's mount namespace: a pod using an
        // AFS volume keeps the module in use, and only the host PID namespace shows
        // all of them.
        host_pid: Some(true),
        host_network: host_network.then_some(true),
        dns_policy: host_network.then(|| "ClusterFirstWithHostNet".to_owned()),
        priority_class_name: Some(NODE_CRITICAL.to_owned()),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        node_selector: Some(node_selector),
        tolerations: Some(readiness_tolerations()),
        image_pull_secrets: (!image_pull_secrets.is_empty()).then_some(image_pull_secrets),
        containers: vec![container(ctx, volumes, image)],
        volumes: Some(volumes.volumes.clone()),
        ..PodSpec::default()
    };
    on_delete_daemon_set(
        ctx,
        kmod_daemon_set_name(ctx.name, kernel),
        KMOD_COMPONENT,
        &kernel_label,
        spec,
    )
}

fn container(ctx: &Ctx<'_>, volumes: &Volumes, image: &str) -> Container {
    let kmod = &ctx.spec.kmod;
    let config_file = format!("{CONFIG_DIR}/{KMOD_CONFIG_KEY}");
    let ready_file = format!("{RUN_DIR}/ready");
    Container {
        name: "kmod-manager".to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: Some(kmod.image_pull_policy.as_str().to_owned()),
        command: Some(vec!["kmod-manager".to_owned(), "run".to_owned()]),
        env: Some(vec![
            env("KMOD_CONFIG", &config_file),
            env("KMOD_MODULE_VERSION", &kmod.version),
            env("KMOD_IMAGE", image),
            env("KMOD_READY_FILE", &ready_file),
            env("KMOD_REPORT_NODE", "true"),
            env_from_field("NODE_NAME", "spec.nodeName"),
            env("KMOD_FS_TYPES", &kmod.in_use_filesystems.join(",")),
            env("KMOD_CSI_DRIVER_NAME", &ctx.spec.csi.driver_name),
            env("KMOD_KUBELET_DIR", &ctx.spec.csi.kubelet_dir),
        ]),
        ports: Some(vec![named_port(HTTP_PORT_NAME, HTTP_PORT)]),
        readiness_probe: Some(http_probe("/readyz", HTTP_PORT_NAME)),
        liveness_probe: Some(http_probe("/healthz", HTTP_PORT_NAME)),
        security_context: Some(security_context(ctx.spec.csi.cache_manager)),
        volume_mounts: Some(volumes.mounts.clone()),
        ..Container::default()
    }
}

/// Not privileged: root with exactly [`CAP_SYS_MODULE`], [`CAP_SYS_PTRACE`],
/// [`CAP_SYS_ADMIN`] and [`CAP_SYS_CHROOT`], and [`CAP_SYS_NICE`] where afsd runs; no
/// privilege escalation.
fn security_context(cache_manager: CacheManager) -> SecurityContext {
    let base = hardened();
    let mut add: Vec<String> = [
        CAP_SYS_MODULE,
        CAP_SYS_PTRACE,
        CAP_SYS_ADMIN,
        CAP_SYS_CHROOT,
    ]
    .map(str::to_owned)
    .to_vec();
    if cache_manager != CacheManager::Kafs {
        add.push(CAP_SYS_NICE.to_owned());
    }
    SecurityContext {
        run_as_user: Some(ROOT),
        capabilities: Some(Capabilities {
            add: Some(add),
            ..base.capabilities.clone().unwrap_or_default()
        }),
        // The runtime's AppArmor profile allows ptrace reads only of processes under
        // the same profile, so the guard could not read the namespaces of kubelet or
        // privileged pods; it then refuses every unload. It also denies mount.
        app_armor_profile: Some(AppArmorProfile {
            type_: "Unconfined".to_owned(),
            localhost_profile: None,
        }),
        // Under SELinux, `container_t` may neither load modules nor read other
        // containers' /proc entries; `spc_t` is the type for such node agents. It is
        // ignored on nodes without SELinux.
        se_linux_options: Some(SELinuxOptions {
            type_: Some("spc_t".to_owned()),
            ..SELinuxOptions::default()
        }),
        ..base
    }
}

/// The driver container's volumes and mounts: its own, then `kmod.mapVolumes`.
#[derive(Debug)]
struct Volumes {
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
}

impl Volumes {
    fn new(ctx: &Ctx<'_>) -> Result<Self, BuildError> {
        // The guard must look where this group's kubelet publishes CSI targets.
        let kubelet_dir = ctx.spec.csi.kubelet_dir.as_str();
        let mut volumes = vec![
            config_map_volume(CONFIG_VOLUME, &kmod_config_map_name(ctx.name, ctx.revision)),
            empty_dir_volume(RUN_VOLUME),
            host_path_volume(KUBELET_VOLUME, kubelet_dir, "Directory"),
        ];
        let mut mounts = vec![
            read_only_mount(CONFIG_VOLUME, CONFIG_DIR),
            mount(RUN_VOLUME, RUN_DIR),
            // The guard reads which CSI targets kubelet published.
            VolumeMount {
                mount_propagation: Some(HOST_TO_CONTAINER.to_owned()),
                ..read_only_mount(KUBELET_VOLUME, kubelet_dir)
            },
        ];
        let own = mounts.len();
        for (index, map) in ctx.spec.kmod.map_volumes.iter().enumerate() {
            check_map_volume(index, map, &mounts[..own])?;
            let (volume, read_only) = map_volume(map);
            volumes.push(volume);
            mounts.push(VolumeMount {
                read_only: read_only.then_some(true),
                ..mount(&map.name, &map.target)
            });
        }
        Ok(Self { volumes, mounts })
    }
}

/// A `mapVolumes` entry as a volume, and whether it is mounted read-only (ConfigMaps
/// and Secrets are; host directories such as caches are written).
fn map_volume(map: &MapVolume) -> (Volume, bool) {
    match (&map.host_path, &map.config_map, &map.secret) {
        (Some(host), _, _) => (
            host_path_volume(&map.name, &host.path, "DirectoryOrCreate"),
            false,
        ),
        (None, Some(cm), _) => (config_map_volume(&map.name, &cm.name), true),
        (None, None, Some(secret)) => (secret_volume(&map.name, &secret.name), true),
        // The schema requires exactly one source; an entry without one (only possible
        // if the CRD was bypassed) becomes a private scratch directory.
        (None, None, None) => (empty_dir_volume(&map.name), false),
    }
}

/// A map volume may neither reuse the name of one of the container's own volumes nor
/// mount over, inside or above one of its own mount paths.
fn check_map_volume(index: usize, map: &MapVolume, own: &[VolumeMount]) -> Result<(), BuildError> {
    for m in own {
        if map.name == m.name {
            return Err(BuildError::MapVolumeConflict {
                index,
                field: "name",
                value: map.name.clone(),
                reserved: m.name.clone(),
            });
        }
        let (target, reserved) = (Path::new(&map.target), Path::new(&m.mount_path));
        if target.starts_with(reserved) || reserved.starts_with(target) {
            return Err(BuildError::MapVolumeConflict {
                index,
                field: "target",
                value: map.target.clone(),
                reserved: m.mount_path.clone(),
            });
        }
    }
    Ok(())
}
