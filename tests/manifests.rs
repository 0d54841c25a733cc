//! The install manifests: what `kubectl kustomize deploy/` renders, checked against the
//! code. The CRD is the generated one; every namespaced object lives in `afs-system`;
//! the operator's rights follow the controller's calls: cluster-wide (ClusterRole
//! `afs-operator`) only what it does across the cluster, its writes in an SR's
//! namespace only through the role it binds there (`afs-operator-namespace`), and the
//! rights of the components it deploys only as `bind` on the shipped roles it binds
//! them to; nothing more. The Deployment runs one replica, probes the paths the
//! operator serves and passes only flags and variables the operator reads; `afsctl
//! install` applies the same objects.
//!
//! Needs `kubectl` (1.27 or newer: it embeds kustomize v5) on `PATH`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use afs_operator::crd::SpecialResource;
use afs_operator::objects::{self, Inputs, OperatorAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use kube::{CustomResourceExt, Resource};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

const NAMESPACE: &str = "afs-system";
const OPERATOR: &str = "afs-operator";
/// The operator's rights in an SR namespace; bound there by the operator only.
const NAMESPACE_ROLE: &str = "afs-operator-namespace";
/// The ValidatingAdmissionPolicy (and its binding) narrowing kmod-manager's Node writes.
const KMOD_NODE_POLICY: &str = "afs-kmod-manager-node";
/// The ValidatingAdmissionPolicy (and its binding) narrowing the operator's namespace
/// and binding writes to SR namespaces.
const OPERATOR_NAMESPACE_POLICY: &str = "afs-operator-namespaces";
const IMAGE: &str = "registry.example.com/auristor/afs-operator";
const AFS: &str = "afs.csi.auristor.com";
const CORE: &str = "";
const APPS: &str = "apps";
const RBAC: &str = "rbac.authorization.k8s.io";
const STORAGE: &str = "storage.k8s.io";
const EVENTS: &str = "events.k8s.io";

/// Where the controller makes a call, and so where the operator needs the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    /// On cluster-scoped objects, or in any namespace: ClusterRole `afs-operator`.
    Anywhere,
    /// On objects of this one name, in any namespace: `afs-operator` by resourceNames.
    Named(&'static str),
    /// Only in SR namespaces: `afs-operator-namespace`, which the operator binds there.
    SrNamespace,
}
use Where::{Anywhere, Named, SrNamespace};

/// Every API call the operator makes itself, as (apiGroup, resource, where, verbs).
/// Kept by hand from `operator/src/controller.rs`; `the_call_table_follows_the_controller`
/// fails when the controller starts using a kind or subresource missing here, or stops
/// using one listed, and `server_side_apply_may_create` when an applied kind lacks
/// get, create or patch.
const CONTROLLER_CALLS: &[(&str, &str, Where, &[&str])] = &[
    // `run`: Controller::new (reflector: list, watch); `reconcile`: kube-runtime's
    // `finalizer` adds and removes the finalizer with a JSON patch.
    (
        AFS,
        "specialresources",
        Anywhere,
        &["list", "watch", "patch"],
    ),
    // `write_status`: Api::patch_status, server-side apply.
    (AFS, "specialresources/status", Anywhere, &["patch"]),
    // `objects::owner_reference`: blockOwnerDeletion on every owned object, which the
    // OwnerReferencesPermissionEnforcement admission plugin allows only to those who
    // may update the owner's finalizers.
    (AFS, "specialresources/finalizers", Anywhere, &["update"]),
    // `run`: .watches(Node); `observe`: list by the group's selector; `execute` (cordon)
    // and `cleanup`: get; `patch_node`: merge patches.
    (CORE, "nodes", Anywhere, &["get", "list", "watch", "patch"]),
    // `observe`: the SR's pods and all running pods, in every namespace.
    (CORE, "pods", Anywhere, &["list"]),
    // `execute`: Action::DeletePod, the SR's own pods.
    (CORE, "pods", SrNamespace, &["delete"]),
    // `execute`: Action::Evict (Api::evict) of AFS users, in any namespace.
    (CORE, "pods/eviction", Anywhere, &["create"]),
    // `observe`: the driver's volumes.
    (CORE, "persistentvolumes", Anywhere, &["list"]),
    // `observe`: which nodes registered the driver.
    (STORAGE, "csinodes", Anywhere, &["list"]),
    // `apply_desired`: `ensure` (get, then server-side apply: patch, and create when
    // the apply creates the object, which the API server checks as well). Never
    // deleted.
    (CORE, "namespaces", Anywhere, &["get", "create", "patch"]),
    // `bind_operator`: `ensure` of the operator's own RoleBinding in an SR namespace,
    // before it has any right there; `delete_objects`: get (is it still bound there?);
    // `unbind_operator`: delete.
    (
        RBAC,
        "rolebindings",
        Named(objects::OPERATOR_BINDING),
        &["get", "create", "patch", "delete"],
    ),
    // `apply_desired` / `delete_objects`: `ensure` (get, create, patch) and `prune`
    // (list, delete) of each kind below; `bind_operator` waits for its binding with a
    // list of service accounts.
    (
        CORE,
        "serviceaccounts",
        SrNamespace,
        &["get", "list", "create", "patch", "delete"],
    ),
    (
        CORE,
        "configmaps",
        SrNamespace,
        &["get", "list", "create", "patch", "delete"],
    ),
    (
        RBAC,
        "rolebindings",
        SrNamespace,
        &["get", "list", "create", "patch", "delete"],
    ),
    (
        RBAC,
        "clusterrolebindings",
        Anywhere,
        &["get", "list", "create", "patch", "delete"],
    ),
    (
        STORAGE,
        "storageclasses",
        Anywhere,
        &["get", "list", "create", "patch", "delete"],
    ),
    // ... and, watched by the controller (`run`: .watches) in every namespace.
    (
        APPS,
        "daemonsets",
        SrNamespace,
        &["get", "create", "patch", "delete"],
    ),
    (APPS, "daemonsets", Anywhere, &["list", "watch"]),
    (
        APPS,
        "deployments",
        SrNamespace,
        &["get", "create", "patch", "delete"],
    ),
    (APPS, "deployments", Anywhere, &["list", "watch"]),
    // `apply_desired`: `ensure`; `delete_objects`: get_opt, then delete by the last SR.
    (
        STORAGE,
        "csidrivers",
        Anywhere,
        &["get", "create", "patch", "delete"],
    ),
    // `warn_event`: kube-runtime's Recorder (events.k8s.io/v1: create, then patch of a
    // series); an SR is cluster-scoped, so its events go to `default`.
    (EVENTS, "events", Anywhere, &["create", "patch"]),
];

/// Where the controller's use of a subresource (or of a call made by kube-runtime)
/// shows in the code: (file under operator/src, text, the (apiGroup, resource) it
/// needs).
const CALL_MARKERS: &[(&str, &str, (&str, &str))] = &[
    ("controller.rs", ".evict(", (CORE, "pods/eviction")),
    (
        "controller.rs",
        ".patch_status(",
        (AFS, "specialresources/status"),
    ),
    ("controller.rs", "finalizer(&api", (AFS, "specialresources")),
    (
        "objects/mod.rs",
        "block_owner_deletion",
        (AFS, "specialresources/finalizers"),
    ),
    ("controller.rs", "recorder.publish(", (EVENTS, "events")),
];

// ---------------------------------------------------------------------------------
// Rendering

/// Every document `kubectl kustomize deploy/` prints, rendered once.
fn rendered() -> &'static [Value] {
    static RENDERED: OnceLock<Vec<Value>> = OnceLock::new();
    RENDERED.get_or_init(render)
}

fn render() -> Vec<Value> {
    let deploy = afs_repo_tests::repo_root().join("deploy");
    let output = match Command::new("kubectl")
        .arg("kustomize")
        .arg(&deploy)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "kubectl is not installed (not found on PATH): run bin/setup (it installs \
             Debian's kubernetes-client when no kubectl is present); these tests render \
             deploy/ with `kubectl kustomize`"
        ),
        Err(e) => panic!("cannot run kubectl: {e}"),
    };
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed:\n{}",
        deploy.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("kubectl prints UTF-8");
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("kubectl prints valid YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn id(object: &Value) -> String {
    format!("{} {}", kind(object), name(object))
}

/// The single rendered object of `kind` named `name`.
fn object(kind_: &str, name_: &str) -> &'static Value {
    let found: Vec<&Value> = rendered()
        .iter()
        .filter(|o| kind(o) == kind_ && name(o) == name_)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "deploy/ must render exactly one {kind_} {name_}"
    );
    found[0]
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

fn read(path: &str) -> String {
    let path = afs_repo_tests::repo_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------
// RBAC model

/// One permission: (apiGroup, resource, verb, resourceName: "" for every name).
type Grant = (String, String, String, String);

fn grant(group: &str, resource: &str, verb: &str, name: &str) -> Grant {
    (
        group.to_owned(),
        resource.to_owned(),
        verb.to_owned(),
        name.to_owned(),
    )
}

fn list(values: &Option<Vec<String>>) -> &[String] {
    values.as_deref().unwrap_or_default()
}

/// Whether `rules` allow `verb` on `group`/`resource` for a request naming `name` (""
/// for a request without a name: list, watch, a create by POST), as RBAC decides.
fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str, name: &str) -> bool {
    rules.iter().any(|rule| {
        list(&rule.api_groups).iter().any(|g| g == group)
            && list(&rule.resources).iter().any(|r| r == resource)
            && rule.verbs.iter().any(|v| v == verb)
            && (list(&rule.resource_names).is_empty()
                || (!name.is_empty() && list(&rule.resource_names).iter().any(|n| n == name)))
    })
}

/// Every (group, resource, verb, name) of a rule; name "" when it has no resourceNames.
fn expand(rule: &PolicyRule) -> Vec<Grant> {
    let names: Vec<&str> = if list(&rule.resource_names).is_empty() {
        vec![""]
    } else {
        list(&rule.resource_names)
            .iter()
            .map(String::as_str)
            .collect()
    };
    let mut grants = Vec::new();
    for group in list(&rule.api_groups) {
        for resource in list(&rule.resources) {
            for verb in &rule.verbs {
                for name in &names {
                    grants.push(grant(group, resource, verb, name));
                }
            }
        }
    }
    grants
}

fn role_rules(role: &str) -> Vec<PolicyRule> {
    serde_json::from_value(object("ClusterRole", role)["rules"].clone())
        .expect("ClusterRole rules parse")
}

/// The ClusterRole bound to the operator cluster-wide.
fn operator_rules() -> Vec<PolicyRule> {
    role_rules(OPERATOR)
}

/// The ClusterRole the operator binds to itself in each SR namespace.
fn namespace_rules() -> Vec<PolicyRule> {
    role_rules(NAMESPACE_ROLE)
}

/// Whether the operator may make a call of the table where the controller makes it.
fn may_call(group: &str, resource: &str, where_: Where, verb: &str) -> bool {
    match where_ {
        Anywhere => allows(&operator_rules(), group, resource, verb, ""),
        Named(name) => allows(&operator_rules(), group, resource, verb, name),
        // Granted in an SR namespace by the operator's binding there (or everywhere).
        SrNamespace => {
            allows(&namespace_rules(), group, resource, verb, "")
                || allows(&operator_rules(), group, resource, verb, "")
        }
    }
}

/// What the controller's calls need (cluster-wide, in SR namespaces).
fn needed_by_calls() -> (BTreeSet<Grant>, BTreeSet<Grant>) {
    let mut cluster = BTreeSet::new();
    let mut namespace = BTreeSet::new();
    for (group, resource, where_, verbs) in CONTROLLER_CALLS {
        for verb in *verbs {
            match where_ {
                Anywhere => cluster.insert(grant(group, resource, verb, "")),
                Named(name) => cluster.insert(grant(group, resource, verb, name)),
                SrNamespace => namespace.insert(grant(group, resource, verb, "")),
            };
        }
    }
    (cluster, namespace)
}

/// A SpecialResource as read from the API server (name and uid set).
fn sample_sr() -> SpecialResource {
    let spec = serde_json::from_value(json!({
        "namespace": "afs-group-1",
        "nodeSelector": {"afs-group": "group-1"},
        "kmod": {
            "module": "kafs",
            "version": "1.0.0",
            "kernelMappings": [{"regexp": "6\\.1\\..*", "containerImage": "registry.example/kmod:${KERNEL_FULL_VERSION}"}]
        },
        "csi": {
            "image": "registry.example/afs-csi",
            "version": "1.0.0",
            "allowedCells": ["example.com"],
            "storageClass": {"name": "afs"}
        }
    }))
    .expect("sample spec parses");
    let mut sr = SpecialResource::new("group-1", spec);
    sr.metadata.uid = Some("3d3c1f5e-0000-4000-8000-000000000001".to_owned());
    sr
}

/// Every binding the operator creates, named, with its roleRef: the SR's (with and
/// without the CSI controller, which only one SR per driver runs) and its own in the
/// SR's namespace.
fn built_bindings() -> Vec<(String, RoleRef)> {
    let sr = sample_sr();
    let revision = objects::revision(&sr.spec);
    let kernels = ["6.1.0-56-amd64".to_owned()];
    let own = objects::operator_role_binding("afs-group-1", &OperatorAccount::default());
    let mut bindings = vec![(
        format!("RoleBinding {}", own.metadata.name.unwrap_or_default()),
        own.role_ref,
    )];
    for runs_controller in [false, true] {
        let desired = objects::build(&Inputs {
            sr: &sr,
            revision: &revision,
            kernels: &kernels,
            runs_controller,
            csi_driver_owners: &[],
        })
        .expect("the sample SR builds");
        for b in desired.cluster_role_bindings {
            bindings.push((
                format!("ClusterRoleBinding {}", b.metadata.name.unwrap_or_default()),
                b.role_ref,
            ));
        }
        for b in desired.role_bindings {
            bindings.push((
                format!("RoleBinding {}", b.metadata.name.unwrap_or_default()),
                b.role_ref,
            ));
        }
    }
    bindings
}

/// `bind` on every ClusterRole a built binding refers to.
fn needed_binds() -> BTreeSet<Grant> {
    built_bindings()
        .iter()
        .map(|(_, role_ref)| grant(RBAC, "clusterroles", "bind", &role_ref.name))
        .collect()
}

/// Whether objects of `group`/`resource` (or of its parent, for a subresource) live in
/// namespaces.
fn namespaced(group: &str, resource: &str) -> bool {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{
        ConfigMap, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
        ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::api::storage::v1::{CSIDriver, CSINode, StorageClass, VolumeAttachment};
    use std::any::TypeId;
    let resource = resource.split('/').next().unwrap_or_default();
    macro_rules! scopes {
        ($($t:ty),* $(,)?) => {
            $(
                if group == <$t as k8s_openapi::Resource>::GROUP
                    && resource == <$t as k8s_openapi::Resource>::URL_PATH_SEGMENT
                {
                    return TypeId::of::<<$t as k8s_openapi::Resource>::Scope>()
                        == TypeId::of::<k8s_openapi::NamespaceResourceScope>();
                }
            )*
        };
    }
    scopes!(
        DaemonSet,
        Deployment,
        Lease,
        ConfigMap,
        Event,
        k8s_openapi::api::events::v1::Event,
        Namespace,
        Node,
        PersistentVolume,
        PersistentVolumeClaim,
        Pod,
        ServiceAccount,
        ClusterRole,
        ClusterRoleBinding,
        Role,
        RoleBinding,
        CSIDriver,
        CSINode,
        StorageClass,
        VolumeAttachment,
    );
    if group == SpecialResource::group(&()) {
        return false;
    }
    panic!("{group}/{resource}: add its kind to `namespaced`")
}

// ---------------------------------------------------------------------------------
// Rendering, kinds, namespaces, labels

#[test]
fn renders_the_expected_objects() {
    let mut kinds: Vec<String> = rendered().iter().map(id).collect();
    kinds.sort();
    let crd_name = SpecialResource::crd_name();
    let mut expected = vec![
        format!("CustomResourceDefinition {crd_name}"),
        format!("Namespace {NAMESPACE}"),
        format!("ServiceAccount {OPERATOR}"),
        format!("ClusterRole {OPERATOR}"),
        format!("ClusterRoleBinding {OPERATOR}"),
        // Not bound by deploy/: the operator binds them (tests below).
        format!("ClusterRole {NAMESPACE_ROLE}"),
        format!("ClusterRole {}", objects::KMOD_ROLE),
        format!("ClusterRole {}", objects::PROVISIONER_ROLE),
        format!("ClusterRole {}", objects::PROVISIONER_LEASES_ROLE),
        // kmod-manager's Node writes, narrowed (tests/node_policy.rs).
        format!("ValidatingAdmissionPolicy {KMOD_NODE_POLICY}"),
        format!("ValidatingAdmissionPolicyBinding {KMOD_NODE_POLICY}"),
        // The operator's namespace and binding writes, narrowed to SR namespaces
        // (tests/operator_policy.rs).
        format!("ValidatingAdmissionPolicy {OPERATOR_NAMESPACE_POLICY}"),
        format!("ValidatingAdmissionPolicyBinding {OPERATOR_NAMESPACE_POLICY}"),
        format!("Deployment {OPERATOR}"),
        format!("Service {OPERATOR}-metrics"),
    ];
    expected.sort();
    assert_eq!(kinds, expected);
    for o in rendered() {
        assert!(
            o["apiVersion"].is_string() && !name(o).is_empty(),
            "{}: apiVersion and metadata.name are required",
            id(o)
        );
    }
}

#[test]
fn the_crd_is_the_generated_one() {
    let rendered_crd = object("CustomResourceDefinition", SpecialResource::crd_name()).clone();
    let generated = serde_json::to_value(SpecialResource::crd()).unwrap();
    assert!(
        numbers_as_floats(rendered_crd) == numbers_as_floats(generated),
        "the CRD rendered from deploy/ differs from SpecialResource::crd(): run \
         `cargo run -p afs-operator --bin crdgen > deploy/crd.yaml`"
    );
}

/// `value` with every number as a float: the generated schema has `minimum: 0.0`,
/// which kustomize prints as `0`; the API server reads both as the same number.
fn numbers_as_floats(value: Value) -> Value {
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Number(n), Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_floats).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, numbers_as_floats(v)))
                .collect(),
        ),
        other => other,
    }
}

#[test]
fn admission_policies_are_bound_to_deny_and_fail_closed() {
    let policies: Vec<&Value> = rendered()
        .iter()
        .filter(|o| kind(o) == "ValidatingAdmissionPolicy")
        .collect();
    assert_eq!(
        policies.len(),
        2,
        "{KMOD_NODE_POLICY}, {OPERATOR_NAMESPACE_POLICY}"
    );
    for policy in policies {
        let name = name(policy);
        assert_eq!(policy["spec"]["failurePolicy"], "Fail", "{name}");
        // `afsctl install` and kustomize apply the binding with its policy (checked
        // below): a policy without its Deny binding enforces nothing.
        let binding = object("ValidatingAdmissionPolicyBinding", name);
        assert_eq!(binding["spec"]["policyName"], name);
        assert_eq!(
            binding["spec"]["validationActions"],
            json!(["Deny"]),
            "{name}"
        );
        assert!(
            binding["spec"]["matchResources"].is_null(),
            "{name}: every object"
        );
    }
    // The operator's policy holds the account the operator runs as (see
    // `the_binding_gives_the_role_to_the_operator_account`), and only it.
    let conditions =
        &object("ValidatingAdmissionPolicy", OPERATOR_NAMESPACE_POLICY)["spec"]["matchConditions"];
    assert_eq!(
        conditions,
        &json!([{"name": "operator-service-account", "expression": format!(
            "request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{OPERATOR}'"
        )}])
    );
}

#[test]
fn namespaced_objects_live_in_afs_system() {
    const CLUSTER_SCOPED: &[&str] = &[
        "CustomResourceDefinition",
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    for o in rendered() {
        let namespace = o["metadata"]["namespace"].as_str();
        if CLUSTER_SCOPED.contains(&kind(o)) {
            assert_eq!(namespace, None, "{} is cluster-scoped", id(o));
        } else {
            assert_eq!(namespace, Some(NAMESPACE), "{}", id(o));
        }
    }
    let ns = object("Namespace", NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
        "only the hardened operator runs in {NAMESPACE}"
    );
}

fn common_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), OPERATOR.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "afs".to_owned()),
    ])
}

#[test]
fn common_labels_everywhere_but_in_selectors() {
    // The CRD is generated from the types as is; every other object carries the labels
    // in its own file (the kustomization adds none, so afsctl applies the same objects).
    for o in rendered()
        .iter()
        .filter(|o| kind(o) != "CustomResourceDefinition")
    {
        let labels = string_map(&o["metadata"]["labels"]);
        for (k, v) in common_labels() {
            assert_eq!(labels.get(&k), Some(&v), "{}: label {k}", id(o));
        }
    }
    // A Deployment's selector is immutable: keep the part-of label out of it, so that
    // regrouping the install later never breaks the next apply.
    let deployment = object("Deployment", OPERATOR);
    let selector = string_map(&deployment["spec"]["selector"]["matchLabels"]);
    assert!(
        !selector.contains_key("app.kubernetes.io/part-of"),
        "the common labels must not enter the Deployment's selector: {selector:?}"
    );
    let template = string_map(&deployment["spec"]["template"]["metadata"]["labels"]);
    for (k, v) in &selector {
        assert_eq!(template.get(k), Some(v), "pod template label {k}");
    }
}

// ---------------------------------------------------------------------------------
// RBAC

/// Every ClusterRole and Role deploy/ renders, with its rules.
fn rendered_roles() -> Vec<(String, Vec<PolicyRule>)> {
    rendered()
        .iter()
        .filter(|o| matches!(kind(o), "ClusterRole" | "Role"))
        .map(|o| {
            (
                id(o),
                serde_json::from_value(o["rules"].clone()).expect("rules parse"),
            )
        })
        .collect()
}

#[test]
fn no_wildcard_in_any_rule() {
    let roles = rendered_roles();
    assert!(roles.len() >= 2, "deploy/ renders no role: {roles:?}");
    for (role, rules) in &roles {
        for rule in rules {
            let fields = [
                ("apiGroups", list(&rule.api_groups)),
                ("resources", list(&rule.resources)),
                ("verbs", rule.verbs.as_slice()),
                ("resourceNames", list(&rule.resource_names)),
                ("nonResourceURLs", list(&rule.non_resource_urls)),
            ];
            for (field, values) in fields {
                assert!(
                    !values.iter().any(|v| v.contains('*')),
                    "{role}: wildcard in {field}: {values:?}"
                );
            }
            assert!(
                rule.non_resource_urls.is_none(),
                "{role}: no rule needs nonResourceURLs"
            );
        }
    }
    for o in rendered().iter().filter(|o| kind(o) == "ClusterRole") {
        assert!(
            o.get("aggregationRule").is_none(),
            "{}: an aggregated role can grow beyond what is reviewed here",
            id(o)
        );
    }
}

#[test]
fn operator_may_make_every_call_of_the_controller() {
    let mut missing = Vec::new();
    for (group, resource, where_, verbs) in CONTROLLER_CALLS {
        for verb in *verbs {
            if !may_call(group, resource, *where_, verb) {
                missing.push(format!("{where_:?}: {group}/{resource} {verb}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/rbac.yaml (ClusterRoles {OPERATOR} and {NAMESPACE_ROLE}) lacks calls the \
         controller makes:\n{}",
        missing.join("\n")
    );
}

#[test]
fn operator_is_granted_nothing_else() {
    let (cluster, namespace) = needed_by_calls();
    let cluster: BTreeSet<Grant> = cluster.into_iter().chain(needed_binds()).collect();
    for (role, rules, needed) in [
        (OPERATOR, operator_rules(), cluster),
        (NAMESPACE_ROLE, namespace_rules(), namespace),
    ] {
        let expanded: Vec<Grant> = rules.iter().flat_map(expand).collect();
        let granted: BTreeSet<Grant> = expanded.iter().cloned().collect();
        let extra: Vec<&Grant> = granted.difference(&needed).collect();
        assert!(
            extra.is_empty(),
            "ClusterRole {role} grants what the controller does not call there, nor needs \
             to bind (least privilege): {extra:?}"
        );
        // Redundant rules hide what a change really grants.
        assert_eq!(
            expanded.len(),
            granted.len(),
            "{role}: a permission is granted twice"
        );
    }
}

#[test]
fn namespaced_writes_only_in_sr_namespaces() {
    // Held in every namespace, the operator's rights would let a compromised operator
    // (or a bug) write DaemonSets, ConfigMaps or Leases anywhere. Its cluster-wide role
    // writes no namespaced object but these, each for a reason deploy/rbac.yaml gives.
    let allowed = |g: &Grant| {
        let (group, resource, verb, name) =
            (g.0.as_str(), g.1.as_str(), g.2.as_str(), g.3.as_str());
        // Its own RoleBinding, by name: made before it has any right in the namespace.
        (group, resource, name) == (RBAC, "rolebindings", objects::OPERATOR_BINDING)
            // AFS users are evicted wherever they run.
            || (group, resource, verb) == (CORE, "pods/eviction", "create")
            // An SR's events go to `default`.
            || (group, resource) == (EVENTS, "events")
    };
    let writes = ["create", "update", "patch", "delete", "deletecollection"];
    let wide: Vec<Grant> = operator_rules()
        .iter()
        .flat_map(expand)
        .filter(|g| writes.contains(&g.2.as_str()) && namespaced(&g.0, &g.1) && !allowed(g))
        .collect();
    assert!(
        wide.is_empty(),
        "ClusterRole {OPERATOR} (bound cluster-wide) writes namespaced objects in every \
         namespace; those belong in {NAMESPACE_ROLE}, bound in SR namespaces only: {wide:?}"
    );
    // And the namespaced role is bound by the operator alone, per SR namespace: deploy/
    // binds nothing but the operator's cluster-wide role.
    let bound: Vec<String> = rendered()
        .iter()
        .filter(|o| matches!(kind(o), "ClusterRoleBinding" | "RoleBinding"))
        .map(|o| {
            format!(
                "{} -> {}",
                id(o),
                o["roleRef"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        bound,
        [format!("ClusterRoleBinding {OPERATOR} -> {OPERATOR}")]
    );
}

#[test]
fn operator_binds_only_shipped_roles_it_may_bind() {
    let bindings = built_bindings();
    assert!(
        bindings
            .iter()
            .any(|(b, _)| b.starts_with("ClusterRoleBinding "))
            && bindings.iter().any(|(b, _)| b.starts_with("RoleBinding ")),
        "the sample SR should build both kinds of bindings: {bindings:?}"
    );
    let ours = operator_rules();
    for (binding, role_ref) in &bindings {
        assert_eq!(
            (role_ref.api_group.as_deref(), role_ref.kind.as_str()),
            (Some(RBAC), "ClusterRole"),
            "{binding}: binds a shipped ClusterRole"
        );
        // Shipped in deploy/: exactly one rendered ClusterRole of that name.
        object("ClusterRole", &role_ref.name);
        assert!(
            allows(&ours, RBAC, "clusterroles", "bind", &role_ref.name),
            "{binding}: the API server refuses it unless ClusterRole {OPERATOR} may bind \
             {} (deploy/rbac.yaml)",
            role_ref.name
        );
    }
    let mut built: Vec<&str> = bindings.iter().map(|(_, r)| r.name.as_str()).collect();
    built.sort_unstable();
    built.dedup();
    let mut shipped = objects::BOUND_ROLES.to_vec();
    shipped.sort_unstable();
    assert_eq!(built, shipped, "objects::BOUND_ROLES names what is bound");
    // Bound, not held: of the rights it hands out the operator holds only those it
    // calls itself (before, it held them all, cluster-wide, to be allowed to grant them).
    let (cluster, namespace) = needed_by_calls();
    for role in [
        objects::KMOD_ROLE,
        objects::PROVISIONER_ROLE,
        objects::PROVISIONER_LEASES_ROLE,
    ] {
        for (group, resource, verb, _) in role_rules(role).iter().flat_map(expand) {
            let called = cluster.contains(&grant(&group, &resource, &verb, ""))
                || namespace.contains(&grant(&group, &resource, &verb, ""));
            if called {
                continue;
            }
            assert!(
                !allows(&ours, &group, &resource, &verb, "")
                    && !allows(&namespace_rules(), &group, &resource, &verb, ""),
                "the operator holds {group}/{resource} {verb} of ClusterRole {role}: it \
                 needs only `bind` on that role"
            );
        }
    }
}

/// The rules of a shipped role as sorted (group, resource, verb) triples.
fn triples(role: &str) -> Vec<(String, String, String)> {
    let mut all: Vec<(String, String, String)> = role_rules(role)
        .iter()
        .flat_map(expand)
        .map(|(g, r, v, name)| {
            assert_eq!(name, "", "{role}: no resourceNames");
            (g, r, v)
        })
        .collect();
    all.sort();
    all
}

fn expected(rules: &[(&str, &str, &[&str])]) -> Vec<(String, String, String)> {
    let mut all: Vec<(String, String, String)> = rules
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(|v| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        })
        .collect();
    all.sort();
    all
}

#[test]
fn component_roles_are_what_the_components_call() {
    // kmod-manager's NodeReporter gets its Node and merge-patches it (the policy
    // afs-kmod-manager-node narrows that to its Node and keys: tests/node_policy.rs).
    assert_eq!(
        triples(objects::KMOD_ROLE),
        expected(&[(CORE, "nodes", &["get", "patch"])])
    );
    // kubernetes-csi/external-provisioner deploy/kubernetes/rbac.yaml, without the
    // snapshot rules (the driver has none).
    let read: &[&str] = &["get", "list", "watch"];
    assert_eq!(
        triples(objects::PROVISIONER_ROLE),
        expected(&[
            (
                CORE,
                "persistentvolumes",
                &["get", "list", "watch", "create", "patch", "delete"]
            ),
            (
                CORE,
                "persistentvolumeclaims",
                &["get", "list", "watch", "update"]
            ),
            (STORAGE, "storageclasses", read),
            (
                CORE,
                "events",
                &["get", "list", "watch", "create", "update", "patch"]
            ),
            (STORAGE, "csinodes", read),
            (CORE, "nodes", read),
            (STORAGE, "volumeattachments", read),
        ])
    );
    // Its leader election (`--leader-election`): a Lease in the SR's namespace.
    assert_eq!(
        triples(objects::PROVISIONER_LEASES_ROLE),
        expected(&[(
            "coordination.k8s.io",
            "leases",
            &["get", "list", "watch", "create", "update", "delete"]
        )])
    );
}

/// (apiGroup, resource) of a kind the controller names as `Api::<Kind>`.
fn api_resource(kind: &str) -> Option<(String, String)> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::core::v1::{
        ConfigMap, Namespace, Node, PersistentVolume, Pod, ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::api::storage::v1::{CSIDriver, CSINode, StorageClass};
    macro_rules! resources {
        ($($t:ty),* $(,)?) => {
            $(
                if kind == <$t as k8s_openapi::Resource>::KIND {
                    return Some((
                        <$t as k8s_openapi::Resource>::GROUP.to_owned(),
                        <$t as k8s_openapi::Resource>::URL_PATH_SEGMENT.to_owned(),
                    ));
                }
            )*
        };
    }
    resources!(
        DaemonSet,
        Deployment,
        ConfigMap,
        Namespace,
        Node,
        PersistentVolume,
        Pod,
        ServiceAccount,
        ClusterRole,
        ClusterRoleBinding,
        Role,
        RoleBinding,
        CSIDriver,
        CSINode,
        StorageClass,
    );
    (kind == SpecialResource::kind(&())).then(|| {
        (
            SpecialResource::group(&()).into_owned(),
            SpecialResource::plural(&()).into_owned(),
        )
    })
}

#[test]
fn the_call_table_follows_the_controller() {
    let controller = read("operator/src/controller.rs");
    let typed = Regex::new(r"\b(?:Api|prune)::<(\w+)>").unwrap();
    let kinds: BTreeSet<&str> = typed
        .captures_iter(&controller)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert!(kinds.contains("SpecialResource") && kinds.contains("Node"));
    let table: BTreeSet<(String, String)> = CONTROLLER_CALLS
        .iter()
        .map(|(g, r, _, _)| ((*g).to_owned(), (*r).to_owned()))
        .collect();
    let mut used = BTreeSet::new();
    for kind in &kinds {
        let resource = api_resource(kind).unwrap_or_else(|| {
            panic!("controller.rs uses Api::<{kind}>: add it to api_resource and CONTROLLER_CALLS")
        });
        assert!(
            table.contains(&resource),
            "controller.rs uses Api::<{kind}> ({resource:?}) but CONTROLLER_CALLS and \
             deploy/rbac.yaml do not list it"
        );
        used.insert(resource);
    }
    for (file, text, (group, resource)) in CALL_MARKERS {
        let source = read(&format!("operator/src/{file}"));
        let resource = ((*group).to_owned(), (*resource).to_owned());
        if source.contains(text) {
            assert!(
                table.contains(&resource),
                "operator/src/{file} calls `{text}`: CONTROLLER_CALLS needs {resource:?}"
            );
            used.insert(resource);
        }
    }
    let stale: Vec<&(String, String)> = table.difference(&used).collect();
    assert!(
        stale.is_empty(),
        "CONTROLLER_CALLS lists resources the controller no longer uses (remove them here \
         and in deploy/rbac.yaml): {stale:?}"
    );
}

/// Kinds the controller server-side applies with `ensure(ctx, &api, ..)`, in the order
/// of the code, `api` resolved through the last `let api = Api::<Kind>` before it.
fn applied_kinds(controller: &str) -> Vec<String> {
    let event =
        Regex::new(r"let\s+(\w+)\s*=\s*Api::<(\w+)>|ensure\(\s*ctx,\s*&(?:Api::<(\w+)>|(\w+)\b)")
            .unwrap();
    let mut apis: BTreeMap<&str, &str> = BTreeMap::new();
    let mut kinds = Vec::new();
    for c in event.captures_iter(controller) {
        if let (Some(var), Some(kind)) = (c.get(1), c.get(2)) {
            apis.insert(var.as_str(), kind.as_str());
        } else if let Some(kind) = c.get(3) {
            kinds.push(kind.as_str().to_owned());
        } else if let Some(var) = c.get(4) {
            let kind = apis.get(var.as_str()).unwrap_or_else(|| {
                panic!(
                    "controller.rs: ensure(ctx, &{}): no `let {0} = Api::<..>` before",
                    var.as_str()
                )
            });
            kinds.push((*kind).to_owned());
        }
    }
    kinds
}

#[test]
fn server_side_apply_may_create() {
    // An apply that creates its object is authorized as create as well as patch: the
    // API server refused `ensure` of a new Namespace with patch alone.
    let controller = read("operator/src/controller.rs");
    let kinds = applied_kinds(&controller);
    assert!(
        kinds.iter().any(|k| k == "Namespace") && kinds.iter().any(|k| k == "RoleBinding"),
        "the parser of ensure(..) calls found {kinds:?}"
    );
    for kind in &kinds {
        let (group, resource) = api_resource(kind).expect("a known kind");
        for verb in ["get", "create", "patch"] {
            // Wherever the table says the controller applies this kind.
            let places: Vec<Where> = CONTROLLER_CALLS
                .iter()
                .filter(|(g, r, _, verbs)| *g == group && *r == resource && verbs.contains(&verb))
                .map(|(_, _, w, _)| *w)
                .collect();
            assert!(
                !places.is_empty() && places.iter().all(|w| may_call(&group, &resource, *w, verb)),
                "controller.rs applies {kind}: CONTROLLER_CALLS and deploy/rbac.yaml need \
                 {group}/{resource} {verb} ({places:?})"
            );
        }
    }
}

#[test]
fn the_binding_gives_the_role_to_the_operator_account() {
    let binding = object("ClusterRoleBinding", OPERATOR);
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}])
    );
    object("ServiceAccount", OPERATOR);
    let pod = &object("Deployment", OPERATOR)["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], OPERATOR);
    assert_ne!(
        pod["automountServiceAccountToken"], false,
        "the operator needs its token"
    );
}

// ---------------------------------------------------------------------------------
// Deployment

fn container() -> &'static Value {
    let containers = &object("Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"];
    let containers = containers.as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The long flags of the operator (`#[arg(long ...)]` fields of `Args`) with their
/// defaults, and the environment variables it reads.
fn operator_interface() -> (BTreeMap<String, Option<String>>, BTreeSet<String>) {
    let main = read("operator/src/main.rs");
    let arg = Regex::new(r"(?s)#\[arg\((.*?)\)\]\s*(?:pub\s+)?(\w+)\s*:").unwrap();
    let long = Regex::new(r#"\blong\s*=\s*"([^"]+)""#).unwrap();
    let env = Regex::new(r#"\benv\s*=\s*"([^"]+)""#).unwrap();
    let default = Regex::new(r#"\bdefault_value\s*=\s*"([^"]*)""#).unwrap();
    let is_long = Regex::new(r"\blong\b").unwrap();
    let mut flags = BTreeMap::new();
    let mut vars = BTreeSet::new();
    for c in arg.captures_iter(&main) {
        let attributes = c.get(1).unwrap().as_str();
        let field = c.get(2).unwrap().as_str();
        if !is_long.is_match(attributes) {
            continue;
        }
        let flag = long
            .captures(attributes)
            .map_or_else(|| field.replace('_', "-"), |l| l[1].to_owned());
        let value = default.captures(attributes).map(|d| d[1].to_owned());
        flags.insert(format!("--{flag}"), value);
        vars.extend(env.captures(attributes).map(|e| e[1].to_owned()));
    }
    if main.contains("EnvFilter::try_from_default_env") {
        vars.insert("RUST_LOG".to_owned());
    }
    let var = Regex::new(r#"std::env::var(?:_os)?\("([^"]+)"\)"#).unwrap();
    for source in rust_files(&afs_repo_tests::repo_root().join("operator/src")) {
        let text = std::fs::read_to_string(&source).unwrap();
        vars.extend(var.captures_iter(&text).map(|v| v[1].to_owned()));
    }
    (flags, vars)
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn interface_parser_finds_the_operators_flags() {
    // Guards the parser below: if main.rs changes shape, fail here, not vacuously.
    let (flags, vars) = operator_interface();
    assert!(flags.contains_key("--metrics-address"), "{flags:?}");
    assert!(flags.contains_key("--log-json"), "{flags:?}");
    assert!(flags.contains_key("--service-account"), "{flags:?}");
    assert!(vars.contains("RUST_LOG"), "{vars:?}");
}

/// The port the operator listens on with the Deployment's arguments.
fn listen_port(args: &[String], flags: &BTreeMap<String, Option<String>>) -> u16 {
    let address = args
        .iter()
        .find_map(|a| a.strip_prefix("--metrics-address=").map(str::to_owned))
        .or_else(|| flags.get("--metrics-address").cloned().flatten())
        .expect("a metrics address");
    let address: std::net::SocketAddr = address.parse().expect("a socket address");
    address.port()
}

#[test]
fn container_passes_only_what_the_operator_reads() {
    let (flags, vars) = operator_interface();
    let c = container();
    assert!(
        c.get("command").is_none(),
        "the image's entrypoint is the operator"
    );
    let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap_or_default();
    for arg in &args {
        let flag = arg.split('=').next().unwrap_or_default();
        assert!(
            flags.contains_key(flag),
            "argument {arg:?}: operator/src/main.rs has no flag {flag} (flags: {:?})",
            flags.keys().collect::<Vec<_>>()
        );
    }
    assert!(
        args.iter().any(|a| a == "--log-json"),
        "logs as JSON lines: {args:?}"
    );
    let env: Vec<Value> = serde_json::from_value(c["env"].clone()).unwrap_or_default();
    for e in &env {
        let var = e["name"].as_str().unwrap_or_default();
        assert!(
            vars.contains(var),
            "env {var}: the operator reads no such variable (it reads {vars:?})"
        );
    }
    assert!(
        env.contains(&json!({"name": "RUST_LOG", "value": "info"})),
        "RUST_LOG=info: {env:?}"
    );
    assert!(
        env.iter().any(|e| e["name"] == "POD_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"),
        "POD_NAME names the instance in events: {env:?}"
    );
    // The operator binds its namespaced role to the account it runs as: the pod's
    // own, whatever the install names it.
    for (var, field) in [
        ("AFS_OPERATOR_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ("AFS_OPERATOR_NAMESPACE", "metadata.namespace"),
    ] {
        assert!(
            env.iter()
                .any(|e| e["name"] == var && e["valueFrom"]["fieldRef"]["fieldPath"] == field),
            "{var} from the downward API's {field}: {env:?}"
        );
    }
    // The listening port is the one declared, probed and scraped.
    let port = listen_port(&args, &flags);
    let ports = c["ports"].as_array().expect("container ports");
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"] == port && p["name"] == "metrics"),
        "container port {port} named metrics: {ports:?}"
    );
}

#[test]
fn deployment_runs_one_operator_at_a_time() {
    let spec = &object("Deployment", OPERATOR)["spec"];
    assert_eq!(
        spec["replicas"], 1,
        "no leader election: exactly one replica"
    );
    assert_eq!(
        spec["strategy"],
        json!({"type": "Recreate"}),
        "no leader election: a rollout must not run the old and the new pod together"
    );
    assert!(
        spec["template"]["spec"]["terminationGracePeriodSeconds"].is_u64(),
        "terminationGracePeriodSeconds set"
    );
}

#[test]
fn probes_ask_the_paths_the_operator_serves() {
    let http = read("operator/src/http.rs");
    let route = Regex::new(r#"\.route\(\s*"([^"]+)""#).unwrap();
    let routes: BTreeSet<String> = route
        .captures_iter(&http)
        .map(|r| r[1].to_owned())
        .collect();
    let (flags, _) = operator_interface();
    let c = container();
    let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap_or_default();
    let port = listen_port(&args, &flags);
    let ports = c["ports"].as_array().expect("container ports");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            routes.contains(path),
            "{probe}: operator/src/http.rs serves no {path} ({routes:?})"
        );
        let target = &get["port"];
        let probed = if target.is_string() {
            ports
                .iter()
                .find(|p| &p["name"] == target)
                .map(|p| p["containerPort"].clone())
        } else {
            Some(target.clone())
        };
        assert_eq!(
            probed,
            Some(json!(port)),
            "{probe} must reach the operator's port {port}"
        );
    }
    assert!(routes.contains("/metrics"));
}

#[test]
fn resources_are_requested_and_memory_limited() {
    let resources = &container()["resources"];
    for r in ["cpu", "memory"] {
        assert!(resources["requests"][r].is_string(), "requests.{r}");
    }
    assert!(resources["limits"]["memory"].is_string(), "limits.memory");
}

#[test]
fn container_is_hardened() {
    let pod = &object("Deployment", OPERATOR)["spec"]["template"]["spec"];
    let c = container();
    // The container's setting wins over the pod's.
    let effective = |field: &str| {
        let own = &c["securityContext"][field];
        if own.is_null() {
            pod["securityContext"][field].clone()
        } else {
            own.clone()
        }
    };
    assert_eq!(effective("runAsNonRoot"), true);
    assert_eq!(effective("runAsUser"), 65532);
    assert_eq!(effective("seccompProfile")["type"], "RuntimeDefault");
    let own = &c["securityContext"];
    assert_eq!(own["allowPrivilegeEscalation"], false);
    assert_eq!(own["readOnlyRootFilesystem"], true);
    assert_ne!(own["privileged"], true);
    assert_eq!(own["capabilities"]["drop"], json!(["ALL"]));
    assert!(own["capabilities"]["add"].is_null(), "no capability added");
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host], true, "{host}");
    }
}

#[test]
fn image_is_overridable_and_versioned() {
    let kustomization: Value =
        serde_norway::from_str(&read("deploy/kustomization.yaml")).expect("kustomization parses");
    let images = kustomization["images"].as_array().expect("an images: list");
    assert!(
        images.iter().any(|i| i["name"] == IMAGE),
        "`images:` names {IMAGE}, so that users can override it: {images:?}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        container()["image"],
        format!("{IMAGE}:{version}"),
        "the default image is tagged with the workspace version"
    );
}

#[test]
fn metrics_service_selects_the_operator() {
    let service = object("Service", &format!("{OPERATOR}-metrics"));
    let template =
        string_map(&object("Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"]);
    let selector = string_map(&service["spec"]["selector"]);
    assert!(!selector.is_empty());
    for (k, v) in &selector {
        assert_eq!(template.get(k), Some(v), "selector {k}");
    }
    assert!(!selector.contains_key("app.kubernetes.io/part-of"));
    let ports = service["spec"]["ports"].as_array().expect("service ports");
    assert_eq!(
        ports
            .iter()
            .map(|p| (p["port"].clone(), p["targetPort"].clone()))
            .collect::<Vec<_>>(),
        vec![(json!(8080), json!("metrics"))]
    );
    let annotations = string_map(&service["metadata"]["annotations"]);
    assert_eq!(
        annotations.get("prometheus.io/port").map(String::as_str),
        Some("8080")
    );
    assert_eq!(
        annotations.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
}

// ---------------------------------------------------------------------------------
// The other install path

#[test]
fn afsctl_installs_what_kustomize_renders() {
    // `afsctl install` applies the generated CRD and deploy/'s files without
    // kustomize: exactly the same objects.
    let strip = numbers_as_floats;
    let mut ours: Vec<Value> = rendered().iter().cloned().map(strip).collect();
    let mut afsctl: Vec<Value> = afsctl::install::objects(None)
        .expect("afsctl reads deploy/")
        .iter()
        .map(|o| strip(serde_json::to_value(o).unwrap()))
        .collect();
    ours.sort_by_key(id);
    afsctl.sort_by_key(id);
    assert_eq!(
        afsctl.iter().map(id).collect::<Vec<_>>(),
        ours.iter().map(id).collect::<Vec<_>>(),
        "afsctl install (operator/afsctl/src/install.rs) and deploy/kustomization.yaml \
         must install the same objects"
    );
    for (a, k) in afsctl.iter().zip(&ours) {
        assert!(
            a == k,
            "{}: afsctl applies\n{a:#}\nkustomize renders\n{k:#}",
            id(a)
        );
    }
}
