//! Desired Kubernetes objects of one SpecialResource (pure: no client, no I/O).
//!
//! [`build`] turns an SR, the revision its nodes converge to and the kernels running on
//! them into every object the controller applies with server-side apply. Nothing here
//! decides *when* a node moves to the new revision: the DaemonSets use `OnDelete`, and
//! the rollout planner deletes old pods node by node.
//!
//! - `rbac`: service accounts and the bindings of the fixed ClusterRoles shipped in
//!   `deploy/rbac.yaml` (no role is built here), including the operator's own
//!   RoleBinding in the SR's namespace.
//! - `kmod`: kmod-manager's config and one driver-container DaemonSet per kernel.
//! - `csi`: the CSI node plugin, the CSI controller, the CSIDriver, the StorageClass.
//! - `pod`: shapes shared by the pod templates (volumes, probes, tolerations).
//!
//! Ownership: every object carries an owner reference to its SR (controller, blocking
//! deletion) except the Namespace, which holds the user's ConfigMaps and Secrets, so it
//! is never owned (only marked as the SR's), and the CSIDriver, which SRs using the
//! same driver name share: each of them is a (non-controller) owner, so the CSIDriver
//! goes with the last one. Whether an existing namespace or CSIDriver may be used at
//! all is decided before building, in [`crate::ownership`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::crd::{KernelStatus, SpecialResource, SpecialResourceSpec};
use crate::labels::{
    COMPONENT_LABEL, KERNEL_LABEL, MANAGED_BY_LABEL, NAMESPACE_OF_ANNOTATION, SR_LABEL,
};

mod csi;
mod kmod;
mod pod;
mod rbac;
#[cfg(test)]
mod tests;

pub use csi::{DEFAULT_CLASS_ANNOTATION, EPHEMERAL_MODE, PERSISTENT_MODE};
pub use kmod::{KMOD_CONFIG_KEY, kmod_config, kmod_config_map_name, kmod_daemon_set_name};
pub use rbac::{
    BOUND_ROLES, KMOD_ROLE, OPERATOR_ACCOUNT, OPERATOR_ACCOUNT_NAMESPACE, OPERATOR_BINDING,
    OPERATOR_NAMESPACE_ROLE, OperatorAccount, PROVISIONER_LEASES_ROLE, PROVISIONER_ROLE,
    operator_role_binding,
};

/// Value of [`MANAGED_BY_LABEL`] on every object built here.
pub const MANAGED_BY: &str = crate::labels::FIELD_MANAGER;
/// [`COMPONENT_LABEL`] of the module config and driver-container DaemonSets.
pub const KMOD_COMPONENT: &str = "kmod";
/// [`COMPONENT_LABEL`] of the CSI node plugin.
pub const CSI_NODE_COMPONENT: &str = "csi-node";
/// [`COMPONENT_LABEL`] of the CSI controller.
pub const CSI_CONTROLLER_COMPONENT: &str = "csi-controller";
/// [`COMPONENT_LABEL`] of the driver-wide objects: the CSIDriver and the StorageClass.
pub const CSI_DRIVER_COMPONENT: &str = "csi-driver";
/// Pod Security admission label of the SR's namespace: the driver container needs
/// host PID, host paths and added capabilities, the node plugin is privileged.
pub const POD_SECURITY_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// Value of [`POD_SECURITY_ENFORCE_LABEL`] the operator sets (and takes back when the
/// SR goes).
pub const POD_SECURITY_LEVEL: &str = "privileged";

/// Longest label value (and DNS label).
const LABEL_MAX: usize = 63;
/// Hex digits of [`revision`].
const REVISION_HEX: usize = 12;
/// Hex digits of the hash naming a kernel (DaemonSet names, sanitized label values).
const KERNEL_HEX: usize = 10;

/// Everything [`build`] needs; the controller observes it, nothing here reads the API.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The SR, read from the API server (`metadata.name` and `metadata.uid` are set).
    pub sr: &'a SpecialResource,
    /// The revision nodes converge to: [`revision`] of the spec.
    pub revision: &'a str,
    /// Kernel releases among the group's nodes (`node.status.nodeInfo.kernelVersion`);
    /// duplicates are ignored.
    pub kernels: &'a [String],
    /// Whether this SR runs the CSI controller: only one SR per driver name does.
    pub runs_controller: bool,
    /// Every live SR using the same driver name (this one is added when missing): all
    /// own the shared CSIDriver.
    pub csi_driver_owners: &'a [&'a SpecialResource],
}

/// The objects of one SR. Cluster-scoped ones are named after the SR (or, for the
/// CSIDriver and StorageClass, after the spec), namespaced ones live in
/// `spec.namespace`.
#[derive(Debug, Clone)]
pub struct Desired {
    pub namespace: Namespace,
    pub service_accounts: Vec<ServiceAccount>,
    /// Bindings of the ClusterRoles in deploy/rbac.yaml ([`BOUND_ROLES`]) to the SR's
    /// accounts: cluster-wide ones, and those in the SR's namespace.
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub role_bindings: Vec<RoleBinding>,
    /// kmod-manager's config, named after the revision (see [`kmod_config_map_name`]).
    pub config_maps: Vec<ConfigMap>,
    /// One per distinct mapped kernel, sorted by kernel.
    pub kmod_daemon_sets: Vec<DaemonSet>,
    pub csi_node_daemon_set: DaemonSet,
    /// Present when [`Inputs::runs_controller`].
    pub csi_controller: Option<Deployment>,
    pub csi_driver: CSIDriver,
    /// Present when `csi.storageClass` is set.
    pub storage_class: Option<StorageClass>,
    /// Kernels no mapping serves: the controller reports them (Warning event, Degraded
    /// condition); their nodes get no module.
    pub unmapped: Vec<UnmappedKernel>,
}

impl Desired {
    /// The driver-container image serving `kernel`, when a mapping serves it.
    pub fn kmod_image(&self, kernel: &str) -> Option<&str> {
        let label = kernel_label_value(kernel);
        self.kmod_daemon_sets
            .iter()
            .find(|ds| {
                ds.spec
                    .selector
                    .match_labels
                    .as_ref()
                    .and_then(|l| l.get(KERNEL_LABEL))
                    == Some(&label)
            })
            .and_then(|ds| ds.spec.template.spec.as_ref())
            .and_then(|pod| pod.containers.first())
            .and_then(|c| c.image.as_deref())
    }
}

/// `status.kernels`: each kernel running on `nodes` (sorted), how many nodes run it,
/// and the image serving it or why none does.
pub fn kernel_statuses(desired: &Desired, nodes: &[Node]) -> Vec<KernelStatus> {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for kernel in nodes.iter().filter_map(crate::observe::node_kernel) {
        *counts.entry(kernel).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(kernel, nodes)| {
            let image = desired.kmod_image(kernel).map(str::to_owned);
            let message = image.is_none().then(|| {
                desired
                    .unmapped
                    .iter()
                    .find(|u| u.kernel == kernel)
                    .map_or_else(
                        || "no driver-container DaemonSet was built for this kernel".to_owned(),
                        |u| u.message.clone(),
                    )
            });
            KernelStatus {
                kernel: kernel.to_owned(),
                nodes,
                image,
                message,
            }
        })
        .collect()
}

/// A kernel of the group that no `kmod.kernelMappings` entry serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmappedKernel {
    pub kernel: String,
    /// Why, naming `kmod.kernelMappings` and every mapping tried.
    pub message: String,
}

/// Why the objects of an SR cannot be built; each names the field to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "{which}: metadata.{field} is missing (objects are built from SRs read from the API server)"
    )]
    MissingMetadata { which: String, field: &'static str },
    #[error(
        "metadata.name {name:?} is {len} characters long: at most {LABEL_MAX} fit in the {SR_LABEL} label of its objects"
    )]
    NameTooLong { name: String, len: usize },
    /// The mappings do not compile; the message starts with `spec.kmod.kernelMappings[i]`.
    #[error("spec.kmod.{0}")]
    KernelMappings(kmod_manager::mapping::MappingError),
    #[error(
        "spec.kmod.mapVolumes[{index}].{field} {value:?} collides with the driver container's own {reserved:?}"
    )]
    MapVolumeConflict {
        index: usize,
        field: &'static str,
        value: String,
        reserved: String,
    },
    #[error(
        "csi_driver_owners: SpecialResource {name:?} uses CSI driver {theirs:?}, not {ours:?}: it cannot own this CSIDriver"
    )]
    ForeignDriverOwner {
        name: String,
        theirs: String,
        ours: String,
    },
    #[error("cannot serialize kmod-manager's config: {0}")]
    Config(serde_norway::Error),
}

/// Builds every desired object of one SR.
pub fn build(inputs: &Inputs<'_>) -> Result<Desired, BuildError> {
    let ctx = Ctx::new(inputs)?;
    let (kmod_daemon_sets, unmapped) = kmod::daemon_sets(&ctx, inputs.kernels)?;
    Ok(Desired {
        namespace: namespace(&ctx),
        service_accounts: rbac::service_accounts(&ctx),
        cluster_role_bindings: rbac::cluster_role_bindings(&ctx),
        role_bindings: rbac::role_bindings(&ctx),
        config_maps: vec![kmod::config_map(&ctx)?],
        kmod_daemon_sets,
        csi_node_daemon_set: csi::node_daemon_set(&ctx),
        csi_controller: ctx.runs_controller.then(|| csi::controller(&ctx)),
        csi_driver: csi::csi_driver(inputs.sr, inputs.csi_driver_owners)?,
        storage_class: csi::storage_class(&ctx),
        unmapped,
    })
}

/// Short stable hash of everything in the spec that reaches a node's pods: the whole
/// `kmod` and `client` specs and the `csi` spec except what only the StorageClass or
/// the CSI controller use (`storageClass`, `mountOptions`, `sidecars.provisioner`): a
/// change of those is applied in place and must not drain nodes. Rollout settings, the
/// namespace and the node selector are not part of it either.
///
/// The hash is over the canonical JSON of those specs (fields in declaration order,
/// maps sorted), so it is the same in every run and every replica. A field added to
/// the API later keeps revisions stable only if it is left out of the JSON at its
/// default (`skip_serializing_if`); `client`, added later as a whole, is hashed only
/// when set.
pub fn revision(spec: &SpecialResourceSpec) -> String {
    let mut csi = spec.csi.clone();
    csi.storage_class = None;
    csi.mount_options.clear();
    csi.sidecars.provisioner.clear();
    let canonical = if spec.client.is_default() {
        serde_json::to_vec(&(&spec.kmod, &csi))
    } else {
        serde_json::to_vec(&(&spec.kmod, &csi, &spec.client))
    }
    .expect("specs serialize to JSON: every map key is a string");
    short_hash(&canonical, REVISION_HEX)
}

/// The value of [`crate::labels::KERNEL_LABEL`] for a kernel release.
///
/// A release that is already a valid label value (at most 63 characters of
/// `[A-Za-z0-9._-]`, starting and ending alphanumeric) is used as is, so nodes show
/// their kernel. Any other is sanitized (invalid characters become `_`, cut to fit)
/// and suffixed with `-` and a hash of the whole release, so two releases that differ
/// only in invalid characters or past the cut still get different values.
pub fn kernel_label_value(kernel: &str) -> String {
    if is_label_value(kernel) && !kernel.is_empty() {
        return kernel.to_owned();
    }
    let hash = short_hash(kernel.as_bytes(), KERNEL_HEX);
    let sanitized: String = kernel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(LABEL_MAX - KERNEL_HEX - 1)
        .collect();
    let stem = sanitized.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if stem.is_empty() {
        hash
    } else {
        format!("{stem}-{hash}")
    }
}

/// Whether `value` is a valid label value (the empty value included).
fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => true,
        (Some(first), Some(last)) => {
            bytes.len() <= LABEL_MAX
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
    }
}

/// The first `hex` lowercase hex digits of the SHA-256 of `bytes`.
fn short_hash(bytes: &[u8], hex: usize) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(digest.len() * 2);
    for byte in digest.iter() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out.truncate(hex);
    out
}

/// An owner reference to `sr`; `controller` also blocks the SR's foreground deletion
/// until the object is gone.
fn owner_reference(
    sr: &SpecialResource,
    which: &str,
    controller: bool,
) -> Result<OwnerReference, BuildError> {
    let missing = |field| BuildError::MissingMetadata {
        which: which.to_owned(),
        field,
    };
    Ok(OwnerReference {
        api_version: SpecialResource::api_version(&()).into_owned(),
        kind: SpecialResource::kind(&()).into_owned(),
        name: sr.metadata.name.clone().ok_or_else(|| missing("name"))?,
        uid: sr.metadata.uid.clone().ok_or_else(|| missing("uid"))?,
        controller: Some(controller),
        block_owner_deletion: controller.then_some(true),
    })
}

/// What every builder of one SR shares.
#[derive(Debug)]
struct Ctx<'a> {
    name: &'a str,
    spec: &'a SpecialResourceSpec,
    revision: &'a str,
    runs_controller: bool,
    owner: OwnerReference,
}

impl<'a> Ctx<'a> {
    fn new(inputs: &Inputs<'a>) -> Result<Self, BuildError> {
        let owner = owner_reference(inputs.sr, "SpecialResource", true)?;
        let name = inputs.sr.metadata.name.as_deref().unwrap_or_default();
        if name.len() > LABEL_MAX {
            return Err(BuildError::NameTooLong {
                name: name.to_owned(),
                len: name.len(),
            });
        }
        Ok(Self {
            name,
            spec: &inputs.sr.spec,
            revision: inputs.revision,
            runs_controller: inputs.runs_controller,
            owner,
        })
    }

    fn namespace(&self) -> &'a str {
        &self.spec.namespace
    }

    /// `<sr>-<suffix>`: names of namespaced objects.
    fn object_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    /// `afs-sr-<sr>-<suffix>`: names of cluster-scoped RBAC objects, recognisable
    /// among the cluster's others.
    fn cluster_name(&self, suffix: &str) -> String {
        format!("afs-sr-{}-{suffix}", self.name)
    }

    /// The immutable labels a workload selects its pods by.
    fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (SR_LABEL.to_owned(), self.name.to_owned()),
            (COMPONENT_LABEL.to_owned(), component.to_owned()),
        ])
    }

    fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
        labels
    }

    /// Metadata of a cluster-scoped object owned by the SR.
    fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Metadata of an object in the SR's namespace owned by the SR.
    fn namespaced_meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(self.namespace().to_owned()),
            ..self.meta(name, component)
        }
    }
}

/// The SR's namespace, marked as the SR's ([`NAMESPACE_OF_ANNOTATION`]): the controller
/// creates or labels only a namespace so marked (see [`crate::ownership`]). Never owned
/// (it holds the user's ConfigMaps and Secrets, and deleting an SR must not delete
/// them), and without the SR label, so that no cleanup by label can take it.
fn namespace(ctx: &Ctx<'_>) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(ctx.namespace().to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (
                    POD_SECURITY_ENFORCE_LABEL.to_owned(),
                    POD_SECURITY_LEVEL.to_owned(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                NAMESPACE_OF_ANNOTATION.to_owned(),
                ctx.name.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}
