//! Service accounts and least-privilege RBAC: named verbs on named resources, never a
//! wildcard.
//!
//! - kmod-manager (`--report-node`) reads and patches its Node (ready label, status
//!   annotation, readiness taint). RBAC cannot narrow this to the pod's own node.
//! - The CSI node plugin needs nothing from the API: its service account token is not
//!   even mounted.
//! - The CSI controller's csi-provisioner gets the rules of kubernetes-csi's
//!   external-provisioner `deploy/kubernetes/rbac.yaml` (without the snapshot ones:
//!   the driver has no snapshots), and a Role for its leader-election Lease.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

use super::{CSI_CONTROLLER_COMPONENT, CSI_NODE_COMPONENT, Ctx, KMOD_COMPONENT};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const CORE: &str = "";
const STORAGE: &str = "storage.k8s.io";
const COORDINATION: &str = "coordination.k8s.io";
const READ: &[&str] = &["get", "list", "watch"];

fn rule(group: &str, resource: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

fn kmod_rules() -> Vec<PolicyRule> {
    vec![rule(CORE, "nodes", &["get", "patch"])]
}

fn provisioner_cluster_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            CORE,
            "persistentvolumes",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            CORE,
            "persistentvolumeclaims",
            &["get", "list", "watch", "update"],
        ),
        rule(STORAGE, "storageclasses", READ),
        rule(
            CORE,
            "events",
            &["get", "list", "watch", "create", "update", "patch"],
        ),
        rule(STORAGE, "csinodes", READ),
        rule(CORE, "nodes", READ),
        rule(STORAGE, "volumeattachments", READ),
    ]
}

fn provisioner_namespace_rules() -> Vec<PolicyRule> {
    vec![rule(
        COORDINATION,
        "leases",
        &["get", "watch", "list", "delete", "update", "create"],
    )]
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

/// The components with cluster-wide rules, and those rules.
fn cluster_grants(ctx: &Ctx<'_>) -> Vec<(&'static str, Vec<PolicyRule>)> {
    let mut grants = vec![(KMOD_COMPONENT, kmod_rules())];
    if ctx.runs_controller {
        grants.push((CSI_CONTROLLER_COMPONENT, provisioner_cluster_rules()));
    }
    grants
}

/// `afs-sr-<sr>-<component>`.
pub(super) fn cluster_roles(ctx: &Ctx<'_>) -> Vec<ClusterRole> {
    cluster_grants(ctx)
        .into_iter()
        .map(|(component, rules)| ClusterRole {
            metadata: ctx.meta(ctx.cluster_name(component), component),
            rules: Some(rules),
            aggregation_rule: None,
        })
        .collect()
}

pub(super) fn cluster_role_bindings(ctx: &Ctx<'_>) -> Vec<ClusterRoleBinding> {
    cluster_grants(ctx)
        .into_iter()
        .map(|(component, _)| ClusterRoleBinding {
            metadata: ctx.meta(ctx.cluster_name(component), component),
            role_ref: role_ref("ClusterRole", ctx.cluster_name(component)),
            subjects: Some(vec![service_account_subject(ctx, component)]),
        })
        .collect()
}

/// `afs-sr-<sr>-csi-controller` in the SR's namespace (the provisioner's Lease).
pub(super) fn roles(ctx: &Ctx<'_>) -> Vec<Role> {
    if !ctx.runs_controller {
        return Vec::new();
    }
    vec![Role {
        metadata: ctx.namespaced_meta(
            ctx.cluster_name(CSI_CONTROLLER_COMPONENT),
            CSI_CONTROLLER_COMPONENT,
        ),
        rules: Some(provisioner_namespace_rules()),
    }]
}

pub(super) fn role_bindings(ctx: &Ctx<'_>) -> Vec<RoleBinding> {
    if !ctx.runs_controller {
        return Vec::new();
    }
    let name = ctx.cluster_name(CSI_CONTROLLER_COMPONENT);
    vec![RoleBinding {
        metadata: ctx.namespaced_meta(name.clone(), CSI_CONTROLLER_COMPONENT),
        role_ref: role_ref("Role", name),
        subjects: Some(vec![service_account_subject(ctx, CSI_CONTROLLER_COMPONENT)]),
    }]
}

fn role_ref(kind: &str, name: String) -> RoleRef {
    RoleRef {
        api_group: Some(RBAC_GROUP.to_owned()),
        kind: kind.to_owned(),
        name,
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
