//! Every label, annotation, taint and name the operator writes, in one place.

/// Field manager of every server-side apply and patch.
pub const FIELD_MANAGER: &str = "afs-operator";
/// Finalizer on SpecialResources: cleanup runs node by node before the SR goes.
pub const FINALIZER: &str = "afs.csi.auristor.com/cleanup";

/// On every object built for an SR: the SR's name.
pub const SR_LABEL: &str = "afs.csi.auristor.com/special-resource";
/// `kmod`, `csi-node` or `csi-controller`.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// On pod templates: the revision (hash of module and driver specs) they run.
pub const REVISION_LABEL: &str = "afs.csi.auristor.com/revision";

/// On the namespace of an SR: the SR's name. Set only on a namespace created for that
/// SR (by the operator or `afsctl deploy`), or by an admin handing an existing
/// namespace over to it; the operator deploys into (and labels) a namespace only when
/// it names the SR, so naming `default` or a tenant's namespace widens nothing.
pub const NAMESPACE_OF_ANNOTATION: &str = "afs.csi.auristor.com/namespace-of";
/// On a namespace `afsctl deploy` created: [`CREATED_BY_AFSCTL`]. `afsctl undeploy`
/// deletes only such a namespace; one that existed before is kept.
pub const CREATED_BY_ANNOTATION: &str = "afs.csi.auristor.com/created-by";
/// Value of [`CREATED_BY_ANNOTATION`] written by `afsctl deploy`.
pub const CREATED_BY_AFSCTL: &str = "afsctl";

/// On nodes: the node's kernel release, label-safe, so a DaemonSet per kernel can
/// select its nodes without node-feature-discovery.
pub const KERNEL_LABEL: &str = "afs.csi.auristor.com/kernel";
/// On nodes: the rollout state (`upgrade-required`, ..., `upgrade-done`, `upgrade-failed`).
pub const UPGRADE_STATE_LABEL: &str = "afs.csi.auristor.com/upgrade-state";
/// On nodes: when the current state was entered (RFC 3339).
pub const UPGRADE_SINCE_ANNOTATION: &str = "afs.csi.auristor.com/upgrade-state-since";
/// On nodes: why the node is in its state (a failure names what blocked it).
pub const UPGRADE_REASON_ANNOTATION: &str = "afs.csi.auristor.com/upgrade-reason";
/// On nodes: "true" when the operator (not an admin) cordoned the node, so only then
/// does the operator uncordon it.
pub const CORDONED_BY_OPERATOR_ANNOTATION: &str = "afs.csi.auristor.com/cordoned-by-operator";
/// On nodes: CSI volumes of the driver currently published, as counted by kmod-manager
/// from the node's mounts.
pub const PUBLISHED_VOLUMES_ANNOTATION: &str = kmod_manager::node::PUBLISHED_VOLUMES_ANNOTATION;

/// NoSchedule taint held by the operator until the node's module is loaded and its CSI
/// node plugin is registered and ready.
pub const READINESS_TAINT: &str = "afs.csi.auristor.com/not-ready";
/// kmod-manager's own NoSchedule taint (module not loaded yet).
pub const KMOD_READINESS_TAINT: &str = kmod_manager::cli::DEFAULT_READINESS_TAINT;
/// Label kmod-manager sets to "true" once the module is loaded and live (and the AFS
/// client up), "false" otherwise.
pub const KMOD_READY_LABEL: &str = kmod_manager::cli::DEFAULT_READY_LABEL;
/// kmod-manager's word on its node beside [`KMOD_READY_LABEL`], e.g. `kafs loaded`,
/// `afsd exited (status 1)`.
pub const KMOD_STATUS_ANNOTATION: &str = kmod_manager::node::STATUS_ANNOTATION;
/// On nodes of a deleted SR: set once nothing on the node uses the driver's volumes; the
/// SR's DaemonSets do not run where it is set, so the module pod goes node by node.
pub const RELEASE_LABEL: &str = "afs.csi.auristor.com/released-by";
