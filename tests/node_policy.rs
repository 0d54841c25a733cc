//! kmod-manager's Node policy (the ValidatingAdmissionPolicy `afs-kmod-manager-node` in
//! deploy/rbac.yaml), evaluated without a cluster (tests/admission.rs): its CEL
//! expressions run on the admission requests kmod-manager makes (the exact merge
//! patches its `NodeReporter` sends, captured from a fake API server and applied to a
//! Node) and on those that root on a node could make with kmod-manager's token. The
//! opt-in end-to-end test (operator/tests/e2e.rs) runs the same kinds of requests
//! against a real API server; this runs in every `cargo test`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use afs_operator::objects::{self, OperatorAccount};
use afs_repo_tests::admission::{self, Decision, Review};
use afs_repo_tests::fixtures;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::NodeSpec;
use kmod_manager::guard::{ModuleUse, Usage};
use kmod_manager::node::{
    IN_USE_ANNOTATION, NodeReporter, PUBLISHED_VOLUMES_ANNOTATION, STATUS_ANNOTATION,
};
use kube::client::Body;
use serde_json::{Value, json};

const POLICY: &str = "afs-kmod-manager-node";
const NODE_NAME_CLAIM: &str = "authentication.kubernetes.io/node-name";
const READY_LABEL: &str = kmod_manager::cli::DEFAULT_READY_LABEL;
const READINESS_TAINT: &str = kmod_manager::cli::DEFAULT_READINESS_TAINT;
/// A kmod-manager account as the operator names it: `<sr>-kmod` in the SR's namespace.
const KMOD_USER: &str = "system:serviceaccount:afs-group-1:group-1-kmod";

// ---------------------------------------------------------------------------------
// kmod-manager's requests

/// An UPDATE of a Node as the API server's admission sees it.
#[derive(Debug, Clone)]
struct Update {
    username: String,
    /// The token's node claim; `None`: a token without one.
    node_claim: Option<String>,
    sub_resource: Option<&'static str>,
    old: Value,
    new: Value,
}

impl Update {
    /// kmod-manager, with the token of its pod on `claim`, changes `old` into `new`.
    fn by_kmod(claim: &str, old: &Value, new: Value) -> Self {
        Self {
            username: KMOD_USER.to_owned(),
            node_claim: Some(claim.to_owned()),
            sub_resource: None,
            old: old.clone(),
            new,
        }
    }

    fn review(&self) -> Review {
        let mut extra = serde_json::Map::new();
        // What a pod-bound token carries besides the node.
        extra.insert(
            "authentication.kubernetes.io/pod-name".to_owned(),
            json!(["group-1-kmod-abcde"]),
        );
        if let Some(node) = &self.node_claim {
            extra.insert(NODE_NAME_CLAIM.to_owned(), json!([node]));
        }
        let mut request = json!({
            "kind": {"group": "", "version": "v1", "kind": "Node"},
            "resource": {"group": "", "version": "v1", "resource": "nodes"},
            "name": self.new["metadata"]["name"],
            "operation": "UPDATE",
            "userInfo": {"username": self.username, "groups": ["system:serviceaccounts"], "extra": extra},
        });
        if let Some(sub) = self.sub_resource {
            request["subResource"] = json!(sub);
        }
        Review {
            request,
            object: self.new.clone(),
            old_object: self.old.clone(),
            namespace_object: Value::Null,
        }
    }
}

fn decide(update: &Update) -> Decision {
    admission::decide(admission::policy(POLICY), &update.review())
}

#[track_caller]
fn assert_refused(update: &Update, words: &[&str]) {
    admission::assert_refused(admission::policy(POLICY), &update.review(), words);
}

// ---------------------------------------------------------------------------------
// Nodes and kmod-manager's own patches

/// A Node as kubelet and the cluster's controllers leave it, with kmod-manager's keys
/// from an earlier report.
fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": format!("uid-{name}"), "resourceVersion": "41",
            "labels": {
                "kubernetes.io/hostname": name,
                "auristor.com/auristorfs-group": "group-1",
                "afs.csi.auristor.com/kernel": "6.1.0-56-amd64",
                READY_LABEL: "false",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "afs.csi.auristor.com/upgrade-state-since": "2026-11-21T00:00:00Z",
                STATUS_ANNOTATION: "loading kafs",
            },
        },
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "podCIDRs": ["10.244.1.0/24"],
            "providerID": format!("test://{name}"),
            "taints": [
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-11-21T00:00:00Z"},
                {"key": READINESS_TAINT, "effect": "NoSchedule"},
                {"key": "afs.csi.auristor.com/not-ready", "effect": "NoSchedule"},
            ],
        },
        "status": {"nodeInfo": {"kernelVersion": "6.1.0-56-amd64"}},
    })
}

fn usage(csi_targets: usize, mounts: usize, refcount: i64) -> Usage {
    Usage {
        module: ModuleUse::Loaded {
            refcount,
            holders: vec![],
        },
        csi_targets,
        mounts,
    }
}

/// The merge patch kmod-manager's `NodeReporter::report` sends for `node`, captured
/// from a fake API server that serves `node`.
async fn reported_patch(node: &Value, ready: bool, detail: &str, usage: Option<&Usage>) -> Value {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let name = node["metadata"]["name"].as_str().unwrap().to_owned();
    let reporter = NodeReporter::new(
        kube::Client::new(svc, "default"),
        name.clone(),
        READY_LABEL.to_owned(),
        READINESS_TAINT.to_owned(),
    );
    let served = node.clone();
    let server = tokio::spawn(async move {
        let respond = |body: &Value| {
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap()
        };
        let (request, send) = handle.next_request().await.expect("GET");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), format!("/api/v1/nodes/{name}"));
        send.send_response(respond(&served));
        let (request, send) = handle.next_request().await.expect("PATCH");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request
                .headers()
                .get("content-type")
                .map(|v| v.as_bytes().to_vec()),
            Some(b"application/merge-patch+json".to_vec()),
            "a merge patch"
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let patch: Value = serde_json::from_slice(&body).unwrap();
        send.send_response(respond(&served));
        patch
    });
    tokio::time::timeout(
        Duration::from_secs(5),
        reporter.report(ready, detail, usage),
    )
    .await
    .expect("no timeout")
    .expect("reported");
    server.await.unwrap()
}

/// `node` after a merge patch (RFC 7386), as the API server computes it.
fn patched(node: &Value, patch: &Value) -> Value {
    let mut out = node.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// `node` with one change made to its JSON.
fn changed(node: &Value, change: impl FnOnce(&mut Value)) -> Value {
    let mut out = node.clone();
    change(&mut out);
    out
}

// ---------------------------------------------------------------------------------
// What kmod-manager does passes

#[tokio::test]
async fn kmod_managers_own_patches_pass_on_its_node() {
    let n1 = node("n1");
    // Ready: label true, status and usage annotations, its taint removed.
    let ready = reported_patch(&n1, true, "kafs loaded", Some(&usage(2, 3, 4))).await;
    assert!(ready["spec"]["taints"].is_array(), "{ready}");
    let after = patched(&n1, &ready);
    assert_eq!(after["metadata"]["labels"][READY_LABEL], "true");
    assert_eq!(
        decide(&Update::by_kmod("n1", &n1, after.clone())),
        Decision::Admitted,
        "kmod-manager's ready report: {ready}"
    );
    // Not ready again (its taint back), the usage unknown (annotations removed).
    let unready = reported_patch(&after, false, "kafs kept: in use", None).await;
    let again = patched(&after, &unready);
    assert!(
        again["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == READINESS_TAINT)
    );
    assert_eq!(
        decide(&Update::by_kmod("n1", &after, again.clone())),
        Decision::Admitted,
        "kmod-manager's not-ready report: {unready}"
    );
    // The usage loop's patches: annotations only.
    for (last, now) in [
        (None, usage(0, 0, 0)),
        (Some(usage(0, 0, 0)), usage(1, 2, 1)),
    ] {
        let patch = kmod_manager::node::usage_patch(last.as_ref(), &now).expect("a change");
        assert_eq!(
            decide(&Update::by_kmod("n1", &again, patched(&again, &patch))),
            Decision::Admitted,
            "kmod-manager's usage patch: {patch}"
        );
    }
    // The keys it writes are the ones the policy names (a rename in kmod-manager
    // must reach the policy).
    for key in [
        STATUS_ANNOTATION,
        PUBLISHED_VOLUMES_ANNOTATION,
        IN_USE_ANNOTATION,
    ] {
        let new = changed(&again, |n| n["metadata"]["annotations"][key] = json!("x"));
        assert_eq!(
            decide(&Update::by_kmod("n1", &again, new)),
            Decision::Admitted,
            "{key}"
        );
    }
}

#[tokio::test]
async fn kmod_managers_patch_of_another_node_is_refused() {
    let n2 = node("n2");
    let patch = reported_patch(&n2, true, "kafs loaded", Some(&usage(0, 0, 0))).await;
    assert_refused(
        &Update::by_kmod("n1", &n2, patched(&n2, &patch)),
        &["kmod-manager on node n1 may patch only that Node, not n2"],
    );
}

#[test]
fn a_token_without_a_node_claim_is_refused() {
    let n1 = node("n1");
    let new = changed(&n1, |n| {
        n["metadata"]["labels"][READY_LABEL] = json!("true")
    });
    let update = Update {
        node_claim: None,
        ..Update::by_kmod("n1", &n1, new)
    };
    assert_refused(
        &update,
        &[
            "names no node",
            NODE_NAME_CLAIM,
            "may patch only the Node its pod runs on",
        ],
    );
}

// ---------------------------------------------------------------------------------
// Anything else on its own node is refused, naming it

#[test]
fn other_labels_are_refused() {
    let n1 = node("n1");
    let cases: [(&str, Value); 4] = [
        (
            "kubernetes.io/hostname",
            changed(&n1, |n| {
                n["metadata"]["labels"]["kubernetes.io/hostname"] = json!("elsewhere")
            }),
        ),
        (
            "node-role.kubernetes.io/control-plane",
            changed(&n1, |n| {
                n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("")
            }),
        ),
        (
            "auristor.com/auristorfs-group",
            changed(&n1, |n| {
                n["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("auristor.com/auristorfs-group");
            }),
        ),
        // The operator's labels are the operator's, not kmod-manager's.
        (
            "afs.csi.auristor.com/upgrade-state",
            changed(&n1, |n| {
                n["metadata"]["labels"]["afs.csi.auristor.com/upgrade-state"] =
                    json!("upgrade-done")
            }),
        ),
    ];
    for (key, new) in cases {
        assert_refused(
            &Update::by_kmod("n1", &n1, new),
            &[&format!(
                "may change only its label {READY_LABEL}, not {key}"
            )],
        );
    }
    // Its own label, to something else than true or false.
    assert_refused(
        &Update::by_kmod(
            "n1",
            &n1,
            changed(&n1, |n| {
                n["metadata"]["labels"][READY_LABEL] = json!("maybe")
            }),
        ),
        &["true or false"],
    );
    // A node without labels at all: the policy reads it as none, not as an error.
    let bare = changed(&n1, |n| {
        n["metadata"].as_object_mut().unwrap().remove("labels");
    });
    let labelled = changed(&bare, |n| {
        n["metadata"]["labels"] = json!({READY_LABEL: "true"})
    });
    assert_eq!(
        decide(&Update::by_kmod("n1", &bare, labelled)),
        Decision::Admitted
    );
}

#[test]
fn other_annotations_are_refused() {
    let n1 = node("n1");
    for (key, new) in [
        (
            "afs.csi.auristor.com/upgrade-state-since",
            changed(&n1, |n| {
                n["metadata"]["annotations"]["afs.csi.auristor.com/upgrade-state-since"] =
                    json!("2000-01-01T00:00:00Z")
            }),
        ),
        (
            "afs.csi.auristor.com/cordoned-by-operator",
            changed(&n1, |n| {
                n["metadata"]["annotations"]["afs.csi.auristor.com/cordoned-by-operator"] =
                    json!("true")
            }),
        ),
        (
            "node.alpha.kubernetes.io/ttl",
            changed(&n1, |n| {
                n["metadata"]["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove("node.alpha.kubernetes.io/ttl");
            }),
        ),
    ] {
        assert_refused(
            &Update::by_kmod("n1", &n1, new),
            &["may change only its annotations", &format!(", not {key}")],
        );
    }
}

#[test]
fn other_taints_and_the_cordon_are_refused() {
    let n1 = node("n1");
    let taints = |n: &mut Value| n["spec"]["taints"].as_array_mut().unwrap().clone();
    for (what, new) in [
        (
            "evict",
            changed(&n1, |n| {
                let mut t = taints(n);
                t.push(json!({"key": "evict", "effect": "NoExecute"}));
                n["spec"]["taints"] = json!(t);
            }),
        ),
        (
            "afs.csi.auristor.com/not-ready",
            changed(&n1, |n| {
                let t: Vec<Value> = taints(n)
                    .into_iter()
                    .filter(|t| t["key"] != "afs.csi.auristor.com/not-ready")
                    .collect();
                n["spec"]["taints"] = json!(t);
            }),
        ),
        (
            "node.kubernetes.io/unreachable",
            changed(&n1, |n| {
                n["spec"]["taints"][0]["effect"] = json!("NoSchedule");
            }),
        ),
        (
            "the order of the others",
            changed(&n1, |n| {
                let mut t = taints(n);
                t.swap(0, 2);
                n["spec"]["taints"] = json!(t);
            }),
        ),
    ] {
        assert_refused(
            &Update::by_kmod("n1", &n1, new),
            &[
                &format!("may add or remove only its taint {READINESS_TAINT}"),
                what,
            ],
        );
    }
    // Its own taint, made to evict.
    assert_refused(
        &Update::by_kmod(
            "n1",
            &n1,
            changed(&n1, |n| {
                n["spec"]["taints"][1]["effect"] = json!("NoExecute")
            }),
        ),
        &["NoSchedule"],
    );
    // Cordon, and uncordon of a cordoned node.
    let cordoned = changed(&n1, |n| n["spec"]["unschedulable"] = json!(true));
    assert_refused(
        &Update::by_kmod("n1", &n1, cordoned.clone()),
        &["spec.unschedulable"],
    );
    let uncordoned = changed(&cordoned, |n| {
        n["spec"].as_object_mut().unwrap().remove("unschedulable");
    });
    assert_refused(
        &Update::by_kmod("n1", &cordoned, uncordoned),
        &["spec.unschedulable"],
    );
}

/// A value of the JSON schema `property` describes, and another one.
fn two_values(property: &Value) -> (Value, Value) {
    match property["type"].as_str() {
        Some("string") => (json!("a"), json!("b")),
        Some("array") => (json!(["a"]), json!(["b"])),
        Some("boolean") => (json!(true), json!(false)),
        Some("integer") => (json!(1), json!(2)),
        // Objects and references to object types.
        _ => (json!({"a": "1"}), json!({"a": "2"})),
    }
}

#[test]
fn every_other_field_of_the_spec_is_refused() {
    // Every field of NodeSpec as k8s-openapi knows it (its `latest`, ahead of the API
    // servers in use: 1.37 adds spec.podPreemptionPolicy), and one it does not know yet:
    // the policy compares the spec by field name, not by a list of today's fields.
    let schema = serde_json::to_value(schemars::schema_for!(NodeSpec)).unwrap();
    let properties = schema["properties"]
        .as_object()
        .expect("NodeSpec properties");
    assert!(properties.contains_key("podCIDR") && properties.contains_key("taints"));
    let future = json!({"type": "object"});
    for (field, property) in properties
        .iter()
        .chain([(&"fieldOfAFutureRelease".to_owned(), &future)])
    {
        if field == "taints" || field == "unschedulable" {
            continue; // above
        }
        let (a, b) = two_values(property);
        let without = changed(&node("n1"), |n| {
            n["spec"].as_object_mut().unwrap().remove(field);
        });
        let with_a = changed(&without, |n| n["spec"][field] = a);
        let with_b = changed(&without, |n| n["spec"][field] = b);
        for (old, new) in [(&without, &with_a), (&with_a, &without), (&with_a, &with_b)] {
            assert_refused(
                &Update::by_kmod("n1", old, new.clone()),
                &[&format!(
                    "may change only its taint in a Node spec, not spec.{field}"
                )],
            );
        }
    }
}

#[test]
fn owner_references_finalizers_and_status_are_refused() {
    let n1 = node("n1");
    assert_refused(
        &Update::by_kmod(
            "n1",
            &n1,
            changed(&n1, |n| {
                n["metadata"]["finalizers"] = json!(["example.com/keep"])
            }),
        ),
        &["not metadata.finalizers"],
    );
    assert_refused(
        &Update::by_kmod(
            "n1",
            &n1,
            changed(
                &n1,
                |n| {
                    n["metadata"]["ownerReferences"] =
                        json!([{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}])
                },
            ),
        ),
        &["not metadata.ownerReferences"],
    );
    let status = Update {
        sub_resource: Some("status"),
        ..Update::by_kmod(
            "n1",
            &n1,
            changed(&n1, |n| {
                n["status"]["nodeInfo"]["kernelVersion"] = json!("x")
            }),
        )
    };
    assert_refused(&status, &["status"]);
}

// ---------------------------------------------------------------------------------
// Whose requests

#[test]
fn the_policy_holds_every_kmod_account_the_operator_makes_and_no_other() {
    let anything = |username: &str| {
        let n1 = node("n1");
        Update {
            username: username.to_owned(),
            node_claim: None,
            ..Update::by_kmod(
                "n1",
                &n1,
                changed(&n1, |n| n["spec"]["unschedulable"] = json!(true)),
            )
        }
    };
    // The accounts the operator builds, for SRs of any name: kmod-manager's are held,
    // the CSI components' are not (they do not write Nodes; RBAC gives them none).
    for (name, namespace) in [
        ("group-1", "afs-group-1"),
        ("g", "x"),
        (
            "a-very-long-name-of-a-node-group-that-still-fits-63-characters",
            "afs",
        ),
    ] {
        let desired = fixtures::desired(&fixtures::special_resource(name, namespace));
        for account in &desired.service_accounts {
            let account_name = account.metadata.name.as_deref().unwrap();
            let user = format!("system:serviceaccount:{namespace}:{account_name}");
            let component =
                account.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"].as_str();
            let decision = decide(&anything(&user));
            if component == objects::KMOD_COMPONENT {
                assert!(
                    matches!(decision, Decision::Refused(_)),
                    "{user}: {decision:?}"
                );
            } else {
                assert_eq!(decision, Decision::NotMatched, "{user}");
            }
        }
    }
    // Not the operator (it cordons), not kubelets, not admins.
    let operator = OperatorAccount::default();
    for user in [
        format!(
            "system:serviceaccount:{}:{}",
            operator.namespace, operator.name
        ),
        "system:node:n1".to_owned(),
        "kubernetes-admin".to_owned(),
        "system:serviceaccount:kube-system:node-controller".to_owned(),
    ] {
        assert_eq!(decide(&anything(&user)), Decision::NotMatched, "{user}");
    }
}

#[test]
fn the_policy_matches_node_updates_only_and_fails_closed() {
    let spec = &admission::policy(POLICY)["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    assert_eq!(
        spec["matchConstraints"]["resourceRules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
            "resources": ["nodes", "nodes/status"]}])
    );
}
