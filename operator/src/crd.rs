//! The `SpecialResource` custom resource: one per node group.
//!
//! Generated into a CRD by `crdgen`; every rule a user can break is in the schema
//! (patterns, enums, bounds, CEL) so that the API server refuses a bad spec at admission
//! with a message naming the field. Defaults live here too, so `kubectl get -o yaml`
//! shows what the operator acts on.

// KubeSchema derives wrap each type in a private module, which trips this lint.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kmod_manager::mapping::KernelMapping;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const API_GROUP: &str = "afs.csi.auristor.com";
pub const DEFAULT_DRIVER_NAME: &str = "auristorfs.csi.auristor.com";

/// Semantic version 2.0 without a leading `v` (build metadata allowed).
const SEMVER: &str =
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$";
/// A DNS-1123 label (namespace names).
const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A DNS-1123 subdomain (CSI driver names, object names).
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An image reference without tag or digest: `registry[:port]/path`.
const IMAGE_REPOSITORY: &str =
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$";
/// A full image reference with a tag or digest.
const IMAGE_REFERENCE: &str = r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[\w][\w.-]{0,127}|@sha256:[a-f0-9]{64})$";
/// An absolute path without `..` components, NUL or newlines.
const ABSOLUTE_PATH: &str = r"^/([^/\x00\n]+/?)*$";
/// An AFS cell name as the CSI driver accepts it (DNS-like: labels of letters, digits
/// and `-` separated by single dots), or `*` for any cell.
const CELL_OR_ANY: &str =
    r"^(\*|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)$";
/// Kubelet's root directory unless `csi.kubeletDir` says otherwise.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";

/// Where the AFS kernel module and CSI driver go, and how new versions roll out.
// Printer columns repeat `type_ = "string"`, which this lint takes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "afs.csi.auristor.com",
    version = "v1alpha1",
    kind = "SpecialResource",
    plural = "specialresources",
    shortname = "sr",
    status = "SpecialResourceStatus",
    derive = "PartialEq",
    cel,
    printcolumn(name = "Group", type_ = "string", json_path = ".status.group"),
    printcolumn(name = "Kmod", type_ = "string", json_path = ".spec.kmod.version"),
    printcolumn(name = "CSI", type_ = "string", json_path = ".spec.csi.version"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.readyNodes"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(config_dir_mapped_rule()).message(Message::Expression(config_dir_mapped_message())))]
#[x_kube(validation = Rule::new(format!("!has(self.client) || !has(self.client.cache) || !has(self.client.cache.directory) || {}", mapped("self.client.cache.directory", " && has(v.hostPath)"))).message(Message::Expression("'client.cache.directory ' + self.client.cache.directory + ' is not the target of a hostPath kmod.mapVolumes entry: afsd keeps its disk cache there, on the node; map a hostPath there, or leave client.cache.directory out for a memory cache'".into())))]
#[x_kube(validation = Rule::new(format!("!has(self.client) || !has(self.client.cellDatabaseDir) || {CEL_CACHE_MANAGER} == 'auristor'")).message("client.cellDatabaseDir needs cacheManager auristor (the directory of its cellservdb.conf); openafs and kafs read CellServDB from client.configDir"))]
#[x_kube(validation = Rule::new(format!("!has(self.client) || !has(self.client.cellDatabaseDir) || {}", mapped("self.client.cellDatabaseDir", ""))).message(Message::Expression("'client.cellDatabaseDir ' + self.client.cellDatabaseDir + ' is not the target of any kmod.mapVolumes entry: the auristor client reads cellservdb.conf from it; map a ConfigMap there'".into())))]
#[x_kube(validation = Rule::new(format!("!has(self.client) || !has(self.client.afsdOptions) || size(self.client.afsdOptions) == 0 || {CEL_CACHE_MANAGER} != 'kafs'")).message("client.afsdOptions needs cacheManager auristor or openafs: with kafs the kernel is the AFS client and no afsd runs; remove them"))]
pub struct SpecialResourceSpec {
    /// Namespace of this group's module and CSI objects. The operator creates it when
    /// missing and marks it as this SpecialResource's; an existing namespace without
    /// that mark is refused, never labelled. Immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    #[x_kube(validation = Rule::new("self != 'default'").message("namespace must not be default: the group's namespace is labelled privileged for Pod Security and runs privileged pods; give the group a namespace of its own"))]
    #[x_kube(validation = Rule::new("!self.startsWith('kube-')").message("namespace must not be a kube-* namespace (kube-system, kube-public, kube-node-lease, ...): they belong to Kubernetes"))]
    #[x_kube(validation = Rule::new("self != 'afs-system'").message("namespace must not be afs-system, the operator's own namespace"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("namespace is immutable: the group's pods would stay behind in the old one; delete the SpecialResource and create it again"))]
    pub namespace: String,
    /// The node group: a node belongs to it when it carries every one of these labels.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("nodeSelector must name at least one label: an empty selector would take every node of the cluster"))]
    #[schemars(length(max = 16))]
    pub node_selector: BTreeMap<String, String>,
    pub kmod: KmodSpec,
    pub csi: CsiSpec,
    /// The AFS client kmod-manager brings up on each node once the module is loaded,
    /// and takes down before unloading it: afsd mounting the AFS root (`csi.afsRoot`)
    /// with openafs and auristor; with kafs, the cells of `CellServDB` added to the
    /// kernel and its dynamic root mounted there. Its files come from
    /// `kmod.mapVolumes`.
    // Left out of the JSON at its default, so the revision of an SR stored before the
    // field existed stays the same.
    #[serde(default, skip_serializing_if = "ClientSpec::is_default")]
    pub client: ClientSpec,
    #[serde(default)]
    pub rollout: RolloutSpec,
}

/// CEL: `csi.cacheManager`, `auristor` when unset (its default).
const CEL_CACHE_MANAGER: &str = "(has(self.csi.cacheManager) ? self.csi.cacheManager : 'auristor')";

/// CEL: some `kmod.mapVolumes` entry has the target `path` (and meets `also`, a CEL
/// condition on the entry `v` starting with ` && `, or empty).
fn mapped(path: &str, also: &str) -> String {
    format!(
        "(has(self.kmod.mapVolumes) && self.kmod.mapVolumes.exists(v, v.target == {path}{also}))"
    )
}

/// CEL: the client's configuration directory, `client.configDir` or the cache
/// manager's default (see [`ClientSpec::config_dir`]).
fn cel_config_dir() -> String {
    format!(
        "(has(self.client) && has(self.client.configDir) ? self.client.configDir : ({CEL_CACHE_MANAGER} == 'auristor' ? '{AURISTOR_CONFIG_DIR}' : '{OPENAFS_CONFIG_DIR}'))"
    )
}

fn config_dir_mapped_rule() -> String {
    mapped(&cel_config_dir(), "")
}

/// E.g. `client.configDir /etc/openafs is not the target of any kmod.mapVolumes entry:
/// the openafs client reads CellServDB and ThisCell from it; map a ConfigMap there`.
fn config_dir_mapped_message() -> String {
    format!(
        "'client.configDir ' + {dir} + ' is not the target of any kmod.mapVolumes entry: the ' + {CEL_CACHE_MANAGER} + ' client reads ' + ({CEL_CACHE_MANAGER} == 'auristor' ? '{AURISTOR_CONFIG}' : '{CELL_SERV_DB} and {THIS_CELL}') + ' from it; map a ConfigMap there'",
        dir = cel_config_dir()
    )
}

/// The kernel module and its driver container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KmodSpec {
    /// Module to load (its dependencies come from the image's modules.dep): `kafs`,
    /// `openafs`, `yfs`. Its use by mounts or CSI volumes guards unloading.
    #[schemars(length(min = 1, max = 56), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub module: String,
    /// Module version (semver); `${MODULE_VERSION}` in image templates.
    #[schemars(length(max = 64), regex(pattern = SEMVER))]
    pub version: String,
    /// Which driver-container image serves which kernel; first match wins.
    #[x_kube(validation = Rule::new("self.all(m, [has(m.literal), has(m.regexp), has(m.semver)].filter(x, x).size() == 1)").message("kmod.kernelMappings: each mapping sets exactly one of literal, regexp, semver"))]
    #[x_kube(validation = Rule::new("self.all(m, m.containerImage.matches('^([^$]|[$][{](KERNEL_FULL_VERSION|KERNEL_VERSION|KERNEL_XYZ|KERNEL_X|KERNEL_Y|KERNEL_Z|KERNEL_KABI_TAG|MODULE_VERSION)[}])+$'))").message("kmod.kernelMappings[].containerImage: only ${KERNEL_FULL_VERSION}, ${KERNEL_VERSION}, ${KERNEL_XYZ}, ${KERNEL_X}, ${KERNEL_Y}, ${KERNEL_Z}, ${KERNEL_KABI_TAG} and ${MODULE_VERSION} may be used"))]
    #[schemars(schema_with = "kernel_mappings_schema")]
    pub kernel_mappings: Vec<KernelMapping>,
    /// Parameters passed to the module (`key=value`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(max = 256), regex(pattern = r"^[A-Za-z0-9_.-]+(=[^\s]*)?$"))
    )]
    pub parameters: Vec<String>,
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Secrets (in `namespace`) to pull the driver-container images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(regex(pattern = DNS_SUBDOMAIN)))]
    pub image_pull_secrets: Vec<String>,
    /// Files mounted into the driver container (cache, client config, keytabs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w.name == v.name))").message("kmod.mapVolumes[].name must be unique"))]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w.target == v.target))").message("kmod.mapVolumes[].target must be unique"))]
    pub map_volumes: Vec<MapVolume>,
    /// Filesystem types whose mounts keep the module in use.
    #[serde(default = "default_in_use_filesystems")]
    #[schemars(
        length(min = 1, max = 8),
        inner(regex(pattern = r"^[a-z0-9_.]{1,32}$"))
    )]
    pub in_use_filesystems: Vec<String>,
}

fn default_in_use_filesystems() -> Vec<String> {
    vec!["afs".to_owned()]
}

/// `csi.mountOptions`: each option checked on its own (so the refusal names it, and the
/// API server can cost the rule: one short string at a time).
fn mount_options_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 16,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "pattern": r"^[^\s,]+$",
            "x-kubernetes-validations": [{
                "rule": "self == 'ro' || self == 'noexec' || (self.startsWith('context=') && size(self) > 8)",
                "messageExpression": "'csi.mountOptions: ' + self + ' is not supported: the driver applies only ro, noexec and context=<SELinux context>, and refuses any other'"
            }]
        }
    })
}

/// The schema of kmod-manager's (Kubernetes-free) mapping type, with the bounds that
/// let the API server cost the CEL rules.
fn kernel_mappings_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 32,
        "items": {
            "type": "object",
            "description": "Exactly one of literal, regexp (anchored: it must match the whole release) or semver (a range over X.Y.Z), and the image template to use.",
            "properties": {
                "literal": {"type": "string", "maxLength": 256},
                "regexp": {"type": "string", "maxLength": 256},
                "semver": {"type": "string", "maxLength": 64},
                "containerImage": {"type": "string", "minLength": 1, "maxLength": 512}
            },
            "required": ["containerImage"]
        }
    })
}

/// `Always`, `IfNotPresent` or `Never`, as in a container spec.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A file source mounted at `target` in the driver container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.hostPath), has(self.configMap), has(self.secret)].filter(x, x).size() == 1").message("kmod.mapVolumes[]: set exactly one of hostPath, configMap, secret"))]
pub struct MapVolume {
    /// Volume name (the original's `label`), e.g. `etc-yfs`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: String,
    /// Absolute mount path in the driver container, e.g. `/etc/yfs`.
    #[schemars(length(min = 2, max = 256), regex(pattern = ABSOLUTE_PATH))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(c, c == '..')").message("kmod.mapVolumes[].target must not contain '..'"))]
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<NamedSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<NamedSource>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HostPathSource {
    /// Absolute path on the node; created as a directory when missing.
    #[schemars(length(min = 1, max = 256), regex(pattern = ABSOLUTE_PATH))]
    pub path: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NamedSource {
    /// Name of the ConfigMap or Secret in the SR's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// The CSI driver: node plugin on every node of the group, one controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.mountOptions) || self.cacheManager == 'kafs' || !self.mountOptions.exists(o, o.startsWith('context='))").message("csi.mountOptions: context= needs cacheManager kafs, where each volume is its own afs mount; with auristor or openafs a volume is a bind of the AFS root and carries the SELinux label of the AFS root's own mount (set context= where the AFS client mounts the AFS root)"))]
#[x_kube(validation = Rule::new("has(self.allowedCells)").message("csi.allowedCells is required: the cells whose volumes the node plugin may publish, or [\"*\"] for any cell"))]
#[x_kube(validation = Rule::new("!has(self.storageClass) || !('cell-name' in self.storageClass.parameters) || (has(self.allowedCells) && self.allowedCells.exists(c, c == '*' || c == self.storageClass.parameters['cell-name']))").message(Message::Expression("'csi.storageClass.parameters.cell-name ' + self.storageClass.parameters['cell-name'] + ' is not in csi.allowedCells: the driver would refuse every volume of the class'".into())))]
#[x_kube(validation = Rule::new("!has(self.storageClass) || !('mount-type' in self.storageClass.parameters) || self.storageClass.parameters['mount-type'] != 'root' || (has(self.allowRootMounts) && self.allowRootMounts)").message("csi.storageClass.parameters.mount-type root needs csi.allowRootMounts: true (a root mount shows every cell the node's AFS client reaches); the driver would refuse every volume of the class"))]
pub struct CsiSpec {
    /// Driver image repository without tag; the tag is `version`.
    #[schemars(length(min = 1, max = 256), regex(pattern = IMAGE_REPOSITORY))]
    pub image: String,
    /// Driver version (semver), the image tag.
    #[schemars(length(max = 64), regex(pattern = SEMVER))]
    pub version: String,
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// CSI driver name; SRs with the same name share one CSIDriver object. A CSIDriver
    /// of that name that SpecialResources do not own (another vendor's) is refused,
    /// never taken over. Immutable.
    #[serde(default = "default_driver_name")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_SUBDOMAIN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("csi.driverName is immutable: volumes, the CSIDriver and the node registrations are bound to the name; delete the SpecialResource and create it again"))]
    pub driver_name: String,
    #[serde(default)]
    pub cache_manager: CacheManager,
    /// Where the AFS client mounts the AFS root on the node.
    #[serde(default = "default_afs_root")]
    #[schemars(length(min = 2, max = 256), regex(pattern = ABSOLUTE_PATH))]
    pub afs_root: String,
    /// Mount options of provisioned volumes: only `ro`, `noexec` and (cacheManager
    /// `kafs` only) `context=<SELinux context>`, e.g.
    /// `context=system_u:object_r:container_file_t:s0`; the driver refuses any other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "mount_options_schema")]
    pub mount_options: Vec<String>,
    /// Kubelet's root directory on the group's nodes (`--root-dir` of kubelet): the
    /// node plugin's sockets, registration and pod volumes are under it.
    #[serde(
        default = "default_kubelet_dir",
        skip_serializing_if = "is_default_kubelet_dir"
    )]
    #[schemars(length(min = 2, max = 256), regex(pattern = ABSOLUTE_PATH), extend("default" = "/var/lib/kubelet"))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(c, c == '..')").message("csi.kubeletDir must not contain '..'"))]
    pub kubelet_dir: String,
    /// Cells whose volumes the node plugin publishes (cell names, or the single entry
    /// `*` for any cell); a volume of another cell is refused. Required at admission;
    /// an SR stored before the field existed reads as empty (no cell: fail closed) and
    /// is reported Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 64), regex(pattern = CELL_OR_ANY)))]
    #[x_kube(validation = Rule::new("!self.exists(c, c == '*') || size(self) == 1").message("csi.allowedCells: '*' (any cell) must be the only entry"))]
    pub allowed_cells: Vec<String>,
    /// Allow `mount-type: root` publishes (the whole AFS namespace: every cell the
    /// node's AFS client reaches, whatever `allowedCells` says).
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(extend("default" = false))]
    pub allow_root_mounts: bool,
    /// Allow inline ephemeral CSI volumes (in a pod spec, without a claim). The
    /// shared CSIDriver lists the `Ephemeral` mode only when an SR of the driver
    /// allows them.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(extend("default" = false))]
    pub allow_ephemeral: bool,
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default)]
    pub sidecars: Sidecars,
    /// A StorageClass for dynamically provisioned volumes of this driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<StorageClassSpec>,
}

fn default_driver_name() -> String {
    DEFAULT_DRIVER_NAME.to_owned()
}

fn default_afs_root() -> String {
    "/afs".to_owned()
}

fn default_kubelet_dir() -> String {
    DEFAULT_KUBELET_DIR.to_owned()
}

/// Fields added to the API later are left out of the JSON at their default, so the
/// revision (a hash of that JSON) of an unchanged spec stays the same.
fn is_default_kubelet_dir(dir: &str) -> bool {
    dir == DEFAULT_KUBELET_DIR
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_false(value: &bool) -> bool {
    !value
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CacheManager {
    /// AuriStorFS (`yfs` module, afsd).
    #[default]
    Auristor,
    /// OpenAFS (`openafs` module, afsd).
    Openafs,
    /// The Linux in-kernel AFS client (`kafs` module).
    Kafs,
}

impl CacheManager {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auristor => "auristor",
            Self::Openafs => "openafs",
            Self::Kafs => "kafs",
        }
    }
}

/// `client.configDir` of auristor when unset.
pub const AURISTOR_CONFIG_DIR: &str = "/etc/yfs";
/// `client.configDir` of openafs and kafs when unset.
pub const OPENAFS_CONFIG_DIR: &str = "/etc/openafs";
/// The files the AFS client reads from `client.configDir` (and, for auristor,
/// [`AURISTOR_CELL_DATABASE`] from there or `client.cellDatabaseDir`).
pub const CELL_SERV_DB: &str = "CellServDB";
pub const THIS_CELL: &str = "ThisCell";
pub const AURISTOR_CONFIG: &str = "yfs-client.conf";
pub const AURISTOR_CELL_DATABASE: &str = "cellservdb.conf";
/// `client.cache.sizeKiB` when unset.
pub const DEFAULT_CACHE_KIB: u64 = kmod_manager::config::default_cache_blocks();
/// afsd options kmod-manager sets itself (from `csi.afsRoot`, `client.configDir` and
/// `client.cache`), or that would break its afsd lifecycle (`-nomount`, `-shutdown`);
/// refused in `client.afsdOptions`, abbreviations included.
pub const RESERVED_AFSD_OPTIONS: [&str; 7] = [
    "-mountdir",
    "-cachedir",
    "-blocks",
    "-confdir",
    "-memcache",
    "-nomount",
    "-shutdown",
];

/// The AFS client of the group's nodes (`spec.client`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientSpec {
    /// Directory of the client configuration, the target of a `kmod.mapVolumes` entry
    /// (a ConfigMap, usually). Default: `/etc/yfs` for auristor, `/etc/openafs` for
    /// openafs and kafs. Required files: openafs and kafs: `CellServDB` and `ThisCell`
    /// (OpenAFS formats); auristor: `yfs-client.conf`, and `cellservdb.conf` here or
    /// in `cellDatabaseDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 256), regex(pattern = ABSOLUTE_PATH))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(c, c == '..')").message("client.configDir must not contain '..'"))]
    pub config_dir: Option<String>,
    /// auristor only: the directory of `cellservdb.conf` when it is not in
    /// `configDir`, the target of a `kmod.mapVolumes` entry, e.g. `/usr/share/yfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 256), regex(pattern = ABSOLUTE_PATH))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(c, c == '..')").message("client.cellDatabaseDir must not contain '..'"))]
    pub cell_database_dir: Option<String>,
    #[serde(default, skip_serializing_if = "CacheSpec::is_default")]
    pub cache: CacheSpec,
    /// Further afsd options, one token each: an option (`-dynroot`, `-stat`) or its
    /// value (`2000`), e.g. `[-dynroot, -fakestat, -stat, "2000"]`. kmod-manager sets
    /// `-mountdir`, `-cachedir`, `-blocks`, `-confdir` and `-memcache` itself, and
    /// runs `-shutdown`; those and `-nomount` are refused. openafs and auristor only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 1, max = 128),
            regex(pattern = r"^(-[A-Za-z0-9][A-Za-z0-9-]*|[A-Za-z0-9._/:][A-Za-z0-9._/:-]*)$")
        )
    )]
    #[x_kube(validation = Rule::new(reserved_afsd_options_rule()).message(Message::Expression(reserved_afsd_options_message())))]
    pub afsd_options: Vec<String>,
}

/// CEL: whether the afsd option `option` is one of [`RESERVED_AFSD_OPTIONS`] or an
/// abbreviation of one (afsd's parser takes unique prefixes).
fn cel_reserved(option: &str) -> String {
    let list = RESERVED_AFSD_OPTIONS.map(|o| format!("'{o}'")).join(", ");
    format!("[{list}].exists(r, r.startsWith({option}))")
}

fn reserved_afsd_options_rule() -> String {
    format!("!self.exists(o, {})", cel_reserved("o"))
}

fn reserved_afsd_options_message() -> String {
    format!(
        "'client.afsdOptions: ' + self.filter(o, {})[0] + ' is set by kmod-manager itself ({}, or an abbreviation of one: from csi.afsRoot, client.configDir and client.cache, or its own afsd lifecycle); remove it'",
        cel_reserved("o"),
        RESERVED_AFSD_OPTIONS.join(", ")
    )
}

impl ClientSpec {
    /// Serialized only when set (see [`SpecialResourceSpec::client`]).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// `configDir`, or the default of `cache_manager`.
    pub fn config_dir(&self, cache_manager: CacheManager) -> &str {
        self.config_dir.as_deref().unwrap_or(match cache_manager {
            CacheManager::Auristor => AURISTOR_CONFIG_DIR,
            CacheManager::Openafs | CacheManager::Kafs => OPENAFS_CONFIG_DIR,
        })
    }
}

/// afsd's cache (openafs, auristor; ignored for kafs).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Disk cache directory: the target of a `hostPath` entry of `kmod.mapVolumes`
    /// (the cache stays on the node). Absent: a memory cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 256), regex(pattern = ABSOLUTE_PATH))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(c, c == '..')").message("client.cache.directory must not contain '..'"))]
    pub directory: Option<String>,
    /// Cache size in KiB (afsd's 1 KiB blocks), from 1 MiB to 1 TiB.
    #[serde(
        rename = "sizeKiB",
        default = "default_cache_kib",
        skip_serializing_if = "is_default_cache_kib"
    )]
    #[schemars(range(min = 1024, max = 1_073_741_824), extend("default" = DEFAULT_CACHE_KIB))]
    pub size_kib: u64,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            directory: None,
            size_kib: DEFAULT_CACHE_KIB,
        }
    }
}

impl CacheSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_cache_kib() -> u64 {
    DEFAULT_CACHE_KIB
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_default_cache_kib(size: &u64) -> bool {
    *size == DEFAULT_CACHE_KIB
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Full image references of the CSI sidecars.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sidecars {
    #[serde(default = "default_registrar")]
    #[schemars(length(max = 512), regex(pattern = IMAGE_REFERENCE))]
    pub node_driver_registrar: String,
    #[serde(default = "default_liveness_probe")]
    #[schemars(length(max = 512), regex(pattern = IMAGE_REFERENCE))]
    pub liveness_probe: String,
    #[serde(default = "default_provisioner")]
    #[schemars(length(max = 512), regex(pattern = IMAGE_REFERENCE))]
    pub provisioner: String,
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
}

impl Default for Sidecars {
    fn default() -> Self {
        Self {
            node_driver_registrar: default_registrar(),
            liveness_probe: default_liveness_probe(),
            provisioner: default_provisioner(),
            image_pull_policy: PullPolicy::default(),
        }
    }
}

fn default_registrar() -> String {
    "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.15.0".to_owned()
}

fn default_liveness_probe() -> String {
    "registry.k8s.io/sig-storage/livenessprobe:v2.17.0".to_owned()
}

fn default_provisioner() -> String {
    "registry.k8s.io/sig-storage/csi-provisioner:v6.0.0".to_owned()
}

/// An optional StorageClass of the driver.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageClassSpec {
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// Volume parameters: `mount-type`, `cell-name`, `volume-name`, `read-only`.
    /// Values are bounded so the API server can cost the CEL rules comparing them.
    #[serde(default)]
    #[schemars(length(max = 16), extend("additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[x_kube(validation = Rule::new("!('mount-type' in self) || self['mount-type'] in ['volume', 'root']").message("csi.storageClass.parameters.mount-type must be volume or root"))]
    pub parameters: BTreeMap<String, String>,
    /// Make it the cluster's default StorageClass.
    #[serde(default)]
    pub is_default: bool,
}

/// How a change of module or driver reaches the group's nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Most nodes of the group out of service at once (a count, or a percent of the
    /// group rounded up), counting nodes NotReady or cordoned for other reasons.
    #[serde(default = "default_max_unavailable")]
    #[x_kube(validation = Rule::new("string(self).matches('^[1-9][0-9]{0,5}$') || string(self).matches('^([1-9][0-9]?|100)%$')").message("rollout.maxUnavailable must be a count >= 1 or a percent between 1% and 100%"))]
    #[schemars(schema_with = "int_or_string_schema")]
    pub max_unavailable: IntOrString,
    /// Most nodes upgrading at once.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_parallel: u32,
    /// Start no new node while true (nodes in progress finish).
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub eviction: EvictionSpec,
    /// Pods matching this selector are waited for, never evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_non_interrupt_labels: Option<LabelSelector>,
    #[serde(default)]
    pub phase_timeouts: PhaseTimeouts,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
            max_parallel: 1,
            paused: false,
            eviction: EvictionSpec::default(),
            pod_non_interrupt_labels: None,
            phase_timeouts: PhaseTimeouts::default(),
        }
    }
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

fn one() -> u32 {
    1
}

fn int_or_string_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 4}]
    })
}

/// Pod eviction (through the Eviction API, so PodDisruptionBudgets hold).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvictionSpec {
    /// How long the eviction phase of one node may take before the node fails.
    #[serde(default = "default_eviction_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: u32,
    /// Grace period given to evicted pods (default: the pod's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub grace_period_seconds: Option<u32>,
}

impl Default for EvictionSpec {
    fn default() -> Self {
        Self {
            timeout_seconds: default_eviction_timeout(),
            grace_period_seconds: None,
        }
    }
}

fn default_eviction_timeout() -> u32 {
    600
}

/// Per-phase limits of one node's upgrade; a node past one fails with the reason.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTimeouts {
    /// Until no volume of the driver is published on the node.
    #[serde(default = "default_phase_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub unmount_seconds: u32,
    /// Until the old module pod is gone (its unload guard passed).
    #[serde(default = "default_phase_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub module_swap_seconds: u32,
    /// Until the new module and CSI node plugin are ready.
    #[serde(default = "default_phase_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub validation_seconds: u32,
}

impl Default for PhaseTimeouts {
    fn default() -> Self {
        Self {
            unmount_seconds: default_phase_timeout(),
            module_swap_seconds: default_phase_timeout(),
            validation_seconds: default_phase_timeout(),
        }
    }
}

fn default_phase_timeout() -> u32 {
    600
}

/// What the operator observed and did.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpecialResourceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The node selector as `key=value,...` (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `ready/total` nodes (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_nodes: Option<String>,
    /// Ready, Progressing, Paused, Degraded, Conflict, Refused, Deleting (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The revision (hash of module and driver specs) nodes converge to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Node counts by rollout state.
    #[serde(default)]
    pub nodes: NodeCounts,
    /// Kernels seen among the group's nodes and the image serving each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelStatus>,
    /// What still uses AFS volumes of the driver, per node (while deleting or upgrading).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<NodeUsage>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub total: u32,
    /// Module loaded and CSI node plugin ready at the current revision.
    pub ready: u32,
    pub upgrade_required: u32,
    pub upgrading: u32,
    pub failed: u32,
    /// Not Ready, or cordoned by someone else.
    pub unavailable: u32,
    /// Kernels without a mapping.
    pub unmapped: u32,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KernelStatus {
    pub kernel: String,
    pub nodes: u32,
    /// The driver-container image, or absent when no mapping matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Why there is no image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeUsage {
    pub node: String,
    /// `namespace/name` of pods using volumes of the driver.
    pub pods: Vec<String>,
}
