//! The operator's namespace policy (the ValidatingAdmissionPolicy
//! `afs-operator-namespaces` in deploy/rbac.yaml), evaluated without a cluster
//! (tests/admission.rs): its CEL runs on the requests the operator's own flows make,
//! with the objects the operator builds (creating an SR's namespace marked, applying its
//! labels to the marked namespace, taking them back when the SR goes, binding itself
//! and the SR's components), which pass; and on those a compromised operator could make
//! with its token (labelling a tenant's namespace, marking it, changing a mark, binding
//! itself into a tenant's namespace or cluster-wide), which are refused, saying what and
//! why. Other users are not its business. The opt-in end-to-end test
//! (operator/tests/e2e.rs, `trust_boundary`) makes such requests to a real API server.

#![allow(clippy::unwrap_used)]

use afs_operator::labels::{CREATED_BY_AFSCTL, CREATED_BY_ANNOTATION, NAMESPACE_OF_ANNOTATION};
use afs_operator::objects::{self, OperatorAccount};
use afs_operator::ownership;
use afs_repo_tests::admission::{self, Decision, Review};
use afs_repo_tests::fixtures;
use k8s_openapi::api::core::v1::Namespace;
use serde_json::{Value, json};

const POLICY: &str = "afs-operator-namespaces";
/// The SR of the tests and its namespace.
const SR: &str = "group-1";
const SR_NAMESPACE: &str = "afs-group-1";
/// A namespace that is no SR's.
const TENANT: &str = "team-a";
const PRIVILEGED: (&str, &str) = ("pod-security.kubernetes.io/enforce", "privileged");

fn policy() -> &'static Value {
    admission::policy(POLICY)
}

/// The operator's user name as deploy/ installs it.
fn operator() -> String {
    let account = OperatorAccount::default();
    format!(
        "system:serviceaccount:{}:{}",
        account.namespace, account.name
    )
}

/// Users the policy must leave alone: an admin, kmod-manager, the namespace
/// controller, and an account of the operator's name in another namespace.
const OTHERS: [&str; 4] = [
    "kubernetes-admin",
    "system:serviceaccount:afs-group-1:group-1-kmod",
    "system:serviceaccount:kube-system:namespace-controller",
    "system:serviceaccount:team-a:afs-operator",
];

// ---------------------------------------------------------------------------------
// Requests

/// A Namespace as the API server stores it, with these annotations and labels.
fn namespace(name: &str, annotations: Value, labels: Value) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/metadata.name"] = json!(name);
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "name": name, "uid": format!("uid-{name}"), "resourceVersion": "7",
            "creationTimestamp": "2026-11-21T00:00:00Z",
            "labels": labels, "annotations": annotations,
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// The SR's namespace, marked, as `afsctl deploy` creates it (before the operator
/// applies its labels).
fn marked() -> Value {
    namespace(
        SR_NAMESPACE,
        json!({NAMESPACE_OF_ANNOTATION: SR, CREATED_BY_ANNOTATION: CREATED_BY_AFSCTL}),
        json!({}),
    )
}

/// A tenant's namespace: no mark.
fn tenant() -> Value {
    namespace(TENANT, json!({"owner": "team-a"}), json!({"team": "a"}))
}

/// `value` with one change made to its JSON.
fn changed(value: &Value, change: impl FnOnce(&mut Value)) -> Value {
    let mut out = value.clone();
    change(&mut out);
    out
}

/// `value` after a merge patch (RFC 7386).
fn patched(value: &Value, patch: &Value) -> Value {
    let mut out = value.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// A request of `user`: `operation` on `resource` (`group`, v1), the object named
/// `name`, in `namespace` when it is namespaced.
fn request(
    user: &str,
    operation: &str,
    (group, resource): (&str, &str),
    name: &Value,
    namespace: Option<&str>,
) -> Value {
    let mut request = json!({
        "resource": {"group": group, "version": "v1", "resource": resource},
        "name": name,
        "operation": operation,
        "userInfo": {"username": user, "groups": ["system:serviceaccounts", "system:authenticated"]},
    });
    if let Some(namespace) = namespace {
        request["namespace"] = json!(namespace);
    }
    request
}

/// `user` updates the namespace `old` into `new` (a patch, a server-side apply or a
/// replace: all UPDATEs to admission).
fn update_namespace(user: &str, old: &Value, new: Value) -> Review {
    Review {
        request: request(
            user,
            "UPDATE",
            ("", "namespaces"),
            &new["metadata"]["name"],
            None,
        ),
        object: new,
        old_object: old.clone(),
        namespace_object: Value::Null,
    }
}

/// `user` creates `new`, a namespace.
fn create_namespace(user: &str, new: Value) -> Review {
    Review {
        request: request(
            user,
            "CREATE",
            ("", "namespaces"),
            &new["metadata"]["name"],
            None,
        ),
        object: new,
        old_object: Value::Null,
        namespace_object: Value::Null,
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// `user` creates (no `old`) or updates the RoleBinding `binding` in the namespace
/// `namespace` (as the API server has it).
fn write_role_binding(user: &str, binding: Value, old: Option<Value>, namespace: &Value) -> Review {
    let name = namespace["metadata"]["name"].as_str().unwrap();
    let mut binding = binding;
    binding["metadata"]["namespace"] = json!(name);
    let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
    Review {
        request: request(
            user,
            operation,
            (RBAC, "rolebindings"),
            &binding["metadata"]["name"],
            Some(name),
        ),
        object: binding,
        old_object: old.unwrap_or(Value::Null),
        namespace_object: namespace.clone(),
    }
}

/// `user` creates the ClusterRoleBinding `binding`.
fn create_cluster_role_binding(user: &str, binding: Value) -> Review {
    Review {
        request: request(
            user,
            "CREATE",
            (RBAC, "clusterrolebindings"),
            &binding["metadata"]["name"],
            None,
        ),
        object: binding,
        old_object: Value::Null,
        namespace_object: Value::Null,
    }
}

/// The operator's own RoleBinding (afs-operator-namespace, to itself) in `namespace`.
fn operator_binding(namespace: &str) -> Value {
    serde_json::to_value(objects::operator_role_binding(
        namespace,
        &OperatorAccount::default(),
    ))
    .unwrap()
}

#[track_caller]
fn assert_admitted(review: &Review) {
    assert_eq!(
        admission::decide(policy(), review),
        Decision::Admitted,
        "{review:#?}"
    );
}

#[track_caller]
fn assert_refused(review: &Review, words: &[&str]) {
    admission::assert_refused(policy(), review, words);
}

/// The same request by every user in [`OTHERS`] is none of the policy's business.
#[track_caller]
fn assert_others_not_matched(review: &Review) {
    for user in OTHERS {
        let mut theirs = review.clone();
        theirs.request["userInfo"]["username"] = json!(user);
        assert_eq!(
            admission::decide(policy(), &theirs),
            Decision::NotMatched,
            "{user}"
        );
    }
}

// ---------------------------------------------------------------------------------
// What the operator does passes

#[test]
fn the_operators_namespace_flows_pass() {
    let sr = fixtures::special_resource(SR, SR_NAMESPACE);
    let desired = serde_json::to_value(fixtures::desired(&sr).namespace).unwrap();
    assert_eq!(
        desired["metadata"]["annotations"][NAMESPACE_OF_ANNOTATION], SR,
        "the operator creates the namespace marked"
    );
    assert_eq!(desired["metadata"]["labels"][PRIVILEGED.0], PRIVILEGED.1);

    // A missing namespace: created (POST), marked and labelled. Not matched at all.
    let created = patched(&namespace(SR_NAMESPACE, json!({}), json!({})), &desired);
    assert_eq!(
        admission::decide(policy(), &create_namespace(&operator(), created.clone())),
        Decision::NotMatched
    );
    // Server-side apply of the same when it exists: with `afsctl deploy`'s mark, with
    // an admin's hand-over (the mark and the tenant's own keys), and unchanged.
    let handed_over = changed(&tenant(), |n| {
        n["metadata"]["annotations"][NAMESPACE_OF_ANNOTATION] = json!(SR)
    });
    for old in [marked(), handed_over, created] {
        let applied = patched(&old, &desired);
        assert_admitted(&update_namespace(&operator(), &old, applied));
    }

    // The SR goes: its labels are taken back with a merge patch; the mark stays.
    let labelled = patched(&marked(), &desired);
    let release = ownership::namespace_release_patch(
        SR,
        &serde_json::from_value::<Namespace>(labelled.clone()).unwrap(),
    )
    .expect("the operator takes its labels back");
    let released = patched(&labelled, &release);
    assert!(released["metadata"]["labels"][PRIVILEGED.0].is_null());
    assert_admitted(&update_namespace(&operator(), &labelled, released));

    // Its other changes to its own namespace (labels, other annotations) pass too.
    let team = changed(&labelled, |n| {
        n["metadata"]["labels"]["team"] = json!("afs");
        n["metadata"]["annotations"]["note"] = json!("x");
    });
    assert_admitted(&update_namespace(&operator(), &labelled, team));
}

#[test]
fn the_operators_bindings_pass() {
    let sr = fixtures::special_resource(SR, SR_NAMESPACE);
    let desired = fixtures::desired(&sr);
    let namespace = patched(
        &marked(),
        &serde_json::to_value(&desired.namespace).unwrap(),
    );
    // Its own binding, made right after the namespace (a server-side apply that
    // creates), and applied again.
    let own = operator_binding(SR_NAMESPACE);
    assert_admitted(&write_role_binding(
        &operator(),
        own.clone(),
        None,
        &namespace,
    ));
    assert_admitted(&write_role_binding(
        &operator(),
        own.clone(),
        Some(own),
        &namespace,
    ));
    // The SR's component bindings: in its namespace, and cluster-wide.
    assert!(!desired.role_bindings.is_empty() && !desired.cluster_role_bindings.is_empty());
    for binding in &desired.role_bindings {
        let binding = serde_json::to_value(binding).unwrap();
        assert_admitted(&write_role_binding(&operator(), binding, None, &namespace));
    }
    for binding in &desired.cluster_role_bindings {
        let binding = serde_json::to_value(binding).unwrap();
        assert_admitted(&create_cluster_role_binding(&operator(), binding));
    }
    // Deleting its binding (the namespace's last SR is gone) is not matched, in any
    // namespace.
    for ns in [SR_NAMESPACE, TENANT] {
        let delete = Review {
            request: request(
                &operator(),
                "DELETE",
                (RBAC, "rolebindings"),
                &json!(objects::OPERATOR_BINDING),
                Some(ns),
            ),
            object: Value::Null,
            old_object: operator_binding(ns),
            namespace_object: namespace.clone(),
        };
        assert_eq!(admission::decide(policy(), &delete), Decision::NotMatched);
    }
}

// ---------------------------------------------------------------------------------
// What a compromised operator could do is refused, saying what and why

#[test]
fn labelling_a_namespace_without_the_mark_is_refused() {
    let tenant = tenant();
    let why = [
        "the operator may change only the namespace of a SpecialResource",
        NAMESPACE_OF_ANNOTATION,
        "namespace team-a does not",
        "kubectl annotate namespace team-a",
    ];
    for new in [
        // The operator's own labels, as its apply would set them.
        changed(&tenant, |n| {
            n["metadata"]["labels"][PRIVILEGED.0] = json!(PRIVILEGED.1)
        }),
        // Anything else.
        changed(&tenant, |n| n["metadata"]["labels"]["team"] = json!("b")),
        changed(&tenant, |n| {
            n["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .remove("owner");
        }),
        changed(&tenant, |n| {
            n["metadata"]["finalizers"] = json!(["example.com/keep"])
        }),
    ] {
        let review = update_namespace(&operator(), &tenant, new);
        assert_refused(&review, &why);
        assert_others_not_matched(&review);
    }
    // A namespace without any annotation, as `kubectl create namespace` makes it.
    let bare = changed(&tenant, |n| {
        n["metadata"].as_object_mut().unwrap().remove("annotations");
    });
    let labelled = changed(&bare, |n| {
        n["metadata"]["labels"][PRIVILEGED.0] = json!(PRIVILEGED.1)
    });
    assert_refused(&update_namespace(&operator(), &bare, labelled), &why);
}

#[test]
fn marking_a_namespace_is_refused() {
    let tenant = tenant();
    // With its labels, as its apply would, or the mark alone.
    let sr = fixtures::special_resource(SR, TENANT);
    let desired = serde_json::to_value(fixtures::desired(&sr).namespace).unwrap();
    for new in [
        patched(&tenant, &desired),
        changed(&tenant, |n| {
            n["metadata"]["annotations"][NAMESPACE_OF_ANNOTATION] = json!(SR)
        }),
    ] {
        let review = update_namespace(&operator(), &tenant, new);
        assert_refused(
            &review,
            &[
                "may change only the namespace of a SpecialResource",
                "team-a",
            ],
        );
        assert_others_not_matched(&review);
    }
}

#[test]
fn changing_or_removing_the_mark_is_refused() {
    let ours = marked();
    for (what, new) in [
        (
            NAMESPACE_OF_ANNOTATION,
            changed(&ours, |n| {
                n["metadata"]["annotations"][NAMESPACE_OF_ANNOTATION] = json!("group-2")
            }),
        ),
        (
            NAMESPACE_OF_ANNOTATION,
            changed(&ours, |n| {
                n["metadata"]["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove(NAMESPACE_OF_ANNOTATION);
            }),
        ),
        (
            NAMESPACE_OF_ANNOTATION,
            changed(&ours, |n| {
                n["metadata"].as_object_mut().unwrap().remove("annotations");
            }),
        ),
        // afsctl's record that it created the namespace: `afsctl undeploy` deletes such
        // a namespace, so adding it to a handed-over one would have the admin delete it.
        (
            CREATED_BY_ANNOTATION,
            changed(&ours, |n| {
                n["metadata"]["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove(CREATED_BY_ANNOTATION);
            }),
        ),
    ] {
        let review = update_namespace(&operator(), &ours, new);
        assert_refused(
            &review,
            &[
                "the operator may not add, change or remove ",
                what,
                &format!(" on namespace {SR_NAMESPACE}: they say whose the namespace is"),
            ],
        );
        assert_others_not_matched(&review);
    }
    let handed_over = namespace(
        SR_NAMESPACE,
        json!({NAMESPACE_OF_ANNOTATION: SR}),
        json!({"team": "a"}),
    );
    let review = update_namespace(
        &operator(),
        &handed_over,
        changed(&handed_over, |n| {
            n["metadata"]["annotations"][CREATED_BY_ANNOTATION] = json!(CREATED_BY_AFSCTL)
        }),
    );
    assert_refused(
        &review,
        &[&format!(
            "may not add, change or remove {CREATED_BY_ANNOTATION}"
        )],
    );
}

#[test]
fn namespace_subresources_are_refused() {
    let ours = marked();
    for sub in ["status", "finalize"] {
        let mut review = update_namespace(
            &operator(),
            &ours,
            changed(&ours, |n| n["spec"]["finalizers"] = json!([])),
        );
        review.request["subResource"] = json!(sub);
        assert_refused(
            &review,
            &["may not write a namespace's status or finalizers"],
        );
        assert_others_not_matched(&review);
    }
}

#[test]
fn binding_itself_outside_an_srs_namespace_is_refused() {
    let tenant = tenant();
    let own = operator_binding(TENANT);
    let why = [
        "the operator may bind roles only in the namespace of a SpecialResource",
        NAMESPACE_OF_ANNOTATION,
        "namespace team-a does not: RoleBinding afs-operator of ClusterRole afs-operator-namespace refused",
    ];
    // Created, or an existing one (an admin's, say) updated.
    for old in [None, Some(own.clone())] {
        let review = write_role_binding(&operator(), own.clone(), old, &tenant);
        assert_refused(&review, &why);
        assert_others_not_matched(&review);
    }
    // Another role it may bind (the provisioner's Leases), under its binding's name.
    let leases = changed(&own, |b| {
        b["roleRef"]["name"] = json!(objects::PROVISIONER_LEASES_ROLE)
    });
    assert_refused(
        &write_role_binding(&operator(), leases, None, &tenant),
        &["afs-csi-provisioner-leases refused"],
    );
    // A namespace that had the mark: one the operator could have stripped is no
    // different from a tenant's.
    let bare = namespace(SR_NAMESPACE, json!({}), json!({}));
    assert_refused(
        &write_role_binding(&operator(), operator_binding(SR_NAMESPACE), None, &bare),
        &["namespace afs-group-1 does not"],
    );
}

#[test]
fn binding_itself_cluster_wide_is_refused() {
    // Every role the operator may bind, other than the two it binds cluster-wide (to
    // the SR's components).
    let sr = fixtures::special_resource(SR, SR_NAMESPACE);
    let cluster_wide: Vec<String> = fixtures::desired(&sr)
        .cluster_role_bindings
        .iter()
        .map(|b| b.role_ref.name.clone())
        .collect();
    let mut refused = 0;
    for role in objects::BOUND_ROLES {
        if cluster_wide.iter().any(|r| r == role) {
            continue;
        }
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "afs-operator-everywhere"},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "afs-operator", "namespace": "afs-system"}],
        });
        let review = create_cluster_role_binding(&operator(), binding);
        assert_refused(
            &review,
            &[
                "the operator binds cluster-wide only afs-kmod-manager and afs-csi-provisioner",
                &format!(
                    "not ClusterRole {role}: ClusterRoleBinding afs-operator-everywhere refused"
                ),
            ],
        );
        assert_others_not_matched(&review);
        refused += 1;
    }
    assert_eq!(
        refused, 2,
        "afs-operator-namespace and afs-csi-provisioner-leases"
    );
}

// ---------------------------------------------------------------------------------
// Whose requests, which ones

#[test]
fn others_are_not_matched_where_the_operator_is_refused() {
    // Each refusal above also checks its request by every user in OTHERS; here they
    // label and mark a tenant's namespace, the way an admin hands one over.
    let tenant = tenant();
    let handed_over = changed(&tenant, |n| {
        n["metadata"]["annotations"][NAMESPACE_OF_ANNOTATION] = json!(SR)
    });
    for user in OTHERS {
        assert_eq!(
            admission::decide(
                policy(),
                &update_namespace(user, &tenant, handed_over.clone())
            ),
            Decision::NotMatched,
            "{user}"
        );
    }
}

#[test]
fn the_policy_matches_the_operators_writes_and_fails_closed() {
    let spec = &policy()["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    assert_eq!(
        spec["matchConstraints"]["resourceRules"],
        json!([
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                "resources": ["namespaces", "namespaces/status", "namespaces/finalize"]},
            {"apiGroups": [RBAC], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["rolebindings", "clusterrolebindings"]},
        ])
    );
    // The operator's account as deploy/ installs it (tests/manifests.rs checks the
    // ServiceAccount and the Deployment).
    assert_eq!(operator(), "system:serviceaccount:afs-system:afs-operator");
}
