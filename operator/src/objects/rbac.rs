//! Service accounts and the bindings that give them their rights. No role is built
//! here: every rule lives in a fixed ClusterRole shipped in `deploy/rbac.yaml`,
//! reviewed once, and the operator holds `bind` on exactly those names. So it never
//! holds the rules it hands out (before, RBAC escalation prevention made it hold all
//! of them, cluster-wide), and every right it hands out shows as a binding.
//!
//! - kmod-manager (`--report-node`) reads and patches its Node: [`KMOD_ROLE`], bound
//!   cluster-wide (a Node is cluster-scoped). RBAC cannot narrow that to the pod's own
//!   Node and to kmod-manager's keys; the ValidatingAdmissionPolicy
//!   `afs-kmod-manager-node` in `deploy/rbac.yaml` does. It recognises these accounts
//!   by their name, `<sr>-kmod`: that suffix is load-bearing (tests/manifests.rs and
//!   tests/node_policy.rs hold it and the policy together).
//! - The CSI node plugin needs nothing from the API: its token is not even mounted.
//! - The CSI controller's csi-provisioner: [`PROVISIONER_ROLE`] cluster-wide (the
//!   rules of kubernetes-csi's external-provisioner, without snapshots) and
//!   [`PROVISIONER_LEASES_ROLE`] in the SR's namespace, for its leader-election Lease.
//! - The operator itself: [`OPERATOR_NAMESPACE_ROLE`] in the SR's namespace
//!   ([`operator_role_binding`]); it holds no namespaced write anywhere else.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{CSI_CONTROLLER_COMPONENT, CSI_NODE_COMPONENT, Ctx, KMOD_COMPONENT, MANAGED_BY};
use crate::labels::{COMPONENT_LABEL, MANAGED_BY_LABEL};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The operator's namespaced rights (ServiceAccounts, ConfigMaps, DaemonSets,
/// Deployments, RoleBindings, pod deletion), bound in each SR's namespace only.
pub const OPERATOR_NAMESPACE_ROLE: &str = "afs-operator-namespace";
/// kmod-manager's rights on Nodes (get, patch).
pub const KMOD_ROLE: &str = "afs-kmod-manager";
/// csi-provisioner's cluster-wide rights.
pub const PROVISIONER_ROLE: &str = "afs-csi-provisioner";
/// csi-provisioner's leader-election Lease, bound in the SR's namespace.
pub const PROVISIONER_LEASES_ROLE: &str = "afs-csi-provisioner-leases";
/// Every ClusterRole a binding built here refers to: the operator's `bind` rule names
/// exactly these (deploy/rbac.yaml).
pub const BOUND_ROLES: [&str; 4] = [
    OPERATOR_NAMESPACE_ROLE,
    KMOD_ROLE,
    PROVISIONER_ROLE,
    PROVISIONER_LEASES_ROLE,
];
/// Name of the operator's RoleBinding in each SR namespace (its cluster-wide rule on
/// rolebindings is restricted to this name).
pub const OPERATOR_BINDING: &str = "afs-operator";
/// The operator's ServiceAccount and its namespace as deploy/ installs them.
pub const OPERATOR_ACCOUNT: &str = "afs-operator";
pub const OPERATOR_ACCOUNT_NAMESPACE: &str = "afs-system";
/// [`COMPONENT_LABEL`] of the operator's own RoleBinding.
const OPERATOR_COMPONENT: &str = "operator";

/// The ServiceAccount the operator runs as: the subject of its RoleBinding in each SR
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorAccount {
    pub name: String,
    pub namespace: String,
}

impl Default for OperatorAccount {
    fn default() -> Self {
        Self {
            name: OPERATOR_ACCOUNT.to_owned(),
            namespace: OPERATOR_ACCOUNT_NAMESPACE.to_owned(),
        }
    }
}

/// `<sr>-kmod` and `<sr>-csi-node` always; `<sr>-csi-controller` when the SR runs the
/// controller.
pub(super) fn service_accounts(ctx: &Ctx<'_>) -> Vec<ServiceAccount> {
    let mut accounts = vec![
        ServiceAccount {
            metadata: ctx.namespaced_meta(ctx.object_name(KMOD_COMPONENT), KMOD_COMPONENT),
            ..ServiceAccount::default()
        },
        ServiceAccount {
            metadata: ctx.namespaced_meta(ctx.object_name(CSI_NODE_COMPONENT), CSI_NODE_COMPONENT),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
    ];
    if ctx.runs_controller {
        accounts.push(ServiceAccount {
            metadata: ctx.namespaced_meta(
                ctx.object_name(CSI_CONTROLLER_COMPONENT),
                CSI_CONTROLLER_COMPONENT,
            ),
            ..ServiceAccount::default()
        });
    }
    accounts
}

/// `afs-sr-<sr>-<role without its afs- prefix>`: bindings are named after the role
/// they bind. (Not the names of the per-SR roles of earlier versions: a binding's
/// roleRef is immutable, so an upgrade creates these and prunes those.)
fn binding_name(ctx: &Ctx<'_>, role: &str) -> String {
    ctx.cluster_name(role.strip_prefix("afs-").unwrap_or(role))
}

/// The components with cluster-wide rights and the ClusterRole they get.
fn cluster_grants(ctx: &Ctx<'_>) -> Vec<(&'static str, &'static str)> {
    let mut grants = vec![(KMOD_COMPONENT, KMOD_ROLE)];
    if ctx.runs_controller {
        grants.push((CSI_CONTROLLER_COMPONENT, PROVISIONER_ROLE));
    }
    grants
}

pub(super) fn cluster_role_bindings(ctx: &Ctx<'_>) -> Vec<ClusterRoleBinding> {
    cluster_grants(ctx)
        .into_iter()
        .map(|(component, role)| ClusterRoleBinding {
            metadata: ctx.meta(binding_name(ctx, role), component),
            role_ref: cluster_role_ref(role),
            subjects: Some(vec![service_account_subject(ctx, component)]),
        })
        .collect()
}

/// In the SR's namespace: the provisioner's Lease, when the SR runs the controller.
pub(super) fn role_bindings(ctx: &Ctx<'_>) -> Vec<RoleBinding> {
    if !ctx.runs_controller {
        return Vec::new();
    }
    vec![RoleBinding {
        metadata: ctx.namespaced_meta(
            binding_name(ctx, PROVISIONER_LEASES_ROLE),
            CSI_CONTROLLER_COMPONENT,
        ),
        role_ref: cluster_role_ref(PROVISIONER_LEASES_ROLE),
        subjects: Some(vec![service_account_subject(ctx, CSI_CONTROLLER_COMPONENT)]),
    }]
}

/// The operator's own RoleBinding in an SR namespace: [`OPERATOR_NAMESPACE_ROLE`] to
/// `account`. Neither owned by an SR nor labelled with one: SRs may share a namespace,
/// and the binding must outlive the SR's objects until its cleanup has deleted them;
/// the controller deletes it when the last SR of the namespace is gone.
pub fn operator_role_binding(namespace: &str, account: &OperatorAccount) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(OPERATOR_BINDING.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (COMPONENT_LABEL.to_owned(), OPERATOR_COMPONENT.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        role_ref: cluster_role_ref(OPERATOR_NAMESPACE_ROLE),
        subjects: Some(vec![Subject {
            api_group: None,
            kind: "ServiceAccount".to_owned(),
            name: account.name.clone(),
            namespace: Some(account.namespace.clone()),
        }]),
    }
}

fn cluster_role_ref(name: &str) -> RoleRef {
    RoleRef {
        api_group: Some(RBAC_GROUP.to_owned()),
        kind: "ClusterRole".to_owned(),
        name: name.to_owned(),
    }
}

/// The service account `<sr>-<component>` in the SR's namespace.
fn service_account_subject(ctx: &Ctx<'_>, component: &str) -> Subject {
    Subject {
        api_group: None,
        kind: "ServiceAccount".to_owned(),
        name: ctx.object_name(component),
        namespace: Some(ctx.namespace().to_owned()),
    }
}
