//! deploy/'s ValidatingAdmissionPolicies evaluated without a cluster, the way the API
//! server evaluates them: the binding (it must deny), the match constraints (resource
//! rules), the match conditions, then the variables in order, then the validations in
//! order; the first validation that fails gives the message. Used by
//! tests/node_policy.rs (kmod-manager's Node policy) and tests/operator_policy.rs (the
//! operator's namespace policy); the opt-in end-to-end test (operator/tests/e2e.rs)
//! runs the same kinds of requests against a real API server.
//!
//! The evaluator is the `cel` crate: the Common Expression Language the API server
//! evaluates, without Kubernetes' extension libraries (their `join`, used by the
//! messages, is supplied here). The policies keep to what both understand. Unlike the
//! API server, which evaluates a variable only when an expression uses it, every
//! variable is evaluated here, and one that cannot be fails the test: so a policy's
//! variables hold for every request it matches.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use cel::extractors::This;
use cel::{Context, Program, Value as Cel};
use serde::Deserialize;
use serde_json::{Value, json};

/// The file of deploy/ that holds the policies (`afsctl install` applies it too).
pub const POLICY_FILE: &str = "deploy/rbac.yaml";

/// One admission request as a policy sees it.
#[derive(Debug, Clone)]
pub struct Review {
    /// `request`: operation, resource, subResource, name, namespace, userInfo.
    pub request: Value,
    /// `object`: the object as it would be stored (null for a DELETE).
    pub object: Value,
    /// `oldObject`: the object as it is (null for a CREATE).
    pub old_object: Value,
    /// `namespaceObject`: the namespace of a namespaced object (null for a
    /// cluster-scoped one, a Namespace included).
    pub namespace_object: Value,
}

/// What a policy decides.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Neither the resource rules nor the match conditions select the request: the
    /// policy says nothing.
    NotMatched,
    Admitted,
    /// Refused, with the message the API server returns.
    Refused(String),
}

/// The ValidatingAdmissionPolicy `name` as [`POLICY_FILE`] ships it. (That each is
/// bound to deny for every object is checked with the rendered manifests.)
pub fn policy(name: &str) -> &'static Value {
    static DOCUMENTS: OnceLock<Vec<Value>> = OnceLock::new();
    let documents = DOCUMENTS.get_or_init(|| {
        let path = crate::repo_root().join(POLICY_FILE);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_norway::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{POLICY_FILE}: {e}")))
            .collect()
    });
    documents
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{POLICY_FILE} has no ValidatingAdmissionPolicy {name}"))
}

/// Whether one of the policy's resource rules selects the request. Only what deploy/'s
/// policies use is understood: a rule with anything else fails the test.
fn matches_resource_rules(spec: &Value, request: &Value) -> bool {
    let constraints = spec["matchConstraints"]
        .as_object()
        .expect("matchConstraints");
    for key in constraints.keys() {
        assert!(
            key == "resourceRules",
            "matchConstraints.{key}: not evaluated by this harness"
        );
    }
    let resource = &request["resource"];
    let full = match request["subResource"].as_str() {
        Some(sub) if !sub.is_empty() => {
            format!("{}/{sub}", resource["resource"].as_str().unwrap_or(""))
        }
        _ => resource["resource"].as_str().unwrap_or("").to_owned(),
    };
    let listed = |rule: &Value, key: &str, value: &Value| {
        let values = rule[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {rule}"));
        assert!(
            !values
                .iter()
                .any(|v| v.as_str().is_some_and(|s| s.contains('*'))),
            "{key}: wildcards are not evaluated by this harness"
        );
        values.contains(value)
    };
    constraints["resourceRules"]
        .as_array()
        .expect("resourceRules")
        .iter()
        .any(|rule| {
            for key in rule.as_object().expect("a rule").keys() {
                assert!(
                    ["apiGroups", "apiVersions", "operations", "resources"].contains(&key.as_str()),
                    "resourceRules[].{key}: not evaluated by this harness"
                );
            }
            listed(rule, "apiGroups", &resource["group"])
                && listed(rule, "apiVersions", &resource["version"])
                && listed(rule, "operations", &request["operation"])
                && listed(rule, "resources", &json!(full))
        })
}

fn context(review: &Review, variables: &BTreeMap<String, Cel>) -> Context<'static> {
    let mut ctx = Context::default();
    ctx.add_variable("request", review.request.clone())
        .expect("request");
    ctx.add_variable("object", review.object.clone())
        .expect("object");
    ctx.add_variable("oldObject", review.old_object.clone())
        .expect("oldObject");
    ctx.add_variable("namespaceObject", review.namespace_object.clone())
        .expect("namespaceObject");
    let variables: HashMap<String, Cel> = variables
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ctx.add_variable_from_value("variables", variables);
    // Kubernetes' strings library: `list.join(separator)`.
    ctx.add_function(
        "join",
        |This(list): This<Arc<Vec<Cel>>>, separator: Arc<String>| -> String {
            list.iter()
                .map(|v| match v {
                    Cel::String(s) => s.as_str().to_owned(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(separator.as_str())
        },
    );
    ctx
}

fn eval(expression: &str, ctx: &Context<'_>) -> Result<Cel, String> {
    let program =
        Program::compile(expression).map_err(|e| format!("{expression}: does not parse: {e}"))?;
    program
        .execute(ctx)
        .map_err(|e| format!("{expression}: {e}"))
}

fn eval_bool(expression: &str, ctx: &Context<'_>) -> bool {
    match eval(expression, ctx) {
        Ok(Cel::Bool(b)) => b,
        other => panic!("{expression}: not a boolean: {other:?}"),
    }
}

/// What `policy` decides on `review`. Any expression that cannot be evaluated fails the
/// test (the API server would refuse the request, failurePolicy Fail, but for the
/// wrong reason), and so does a refusal whose reason is not Forbidden.
pub fn decide(policy: &Value, review: &Review) -> Decision {
    let spec = &policy["spec"];
    if !matches_resource_rules(spec, &review.request) {
        return Decision::NotMatched;
    }
    let mut variables = BTreeMap::new();
    for condition in spec["matchConditions"].as_array().into_iter().flatten() {
        let expression = condition["expression"].as_str().expect("an expression");
        if !eval_bool(expression, &context(review, &variables)) {
            return Decision::NotMatched;
        }
    }
    for variable in spec["variables"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().expect("a name");
        let expression = variable["expression"].as_str().expect("an expression");
        let value = eval(expression, &context(review, &variables))
            .unwrap_or_else(|e| panic!("variable {name}: {e}"));
        variables.insert(name.to_owned(), value);
    }
    for validation in spec["validations"].as_array().expect("validations") {
        let ctx = context(review, &variables);
        let expression = validation["expression"].as_str().expect("an expression");
        if eval_bool(expression, &ctx) {
            continue;
        }
        assert_eq!(validation["reason"], "Forbidden", "{validation}");
        let message = match validation["messageExpression"].as_str() {
            Some(expression) => match eval(expression, &ctx) {
                Ok(Cel::String(s)) => s.as_str().to_owned(),
                other => panic!("messageExpression {expression}: {other:?}"),
            },
            None => validation["message"]
                .as_str()
                .expect("a message")
                .to_owned(),
        };
        return Decision::Refused(message);
    }
    Decision::Admitted
}

/// `policy` refuses `review` with a message that says every one of `words`.
#[track_caller]
pub fn assert_refused(policy: &Value, review: &Review, words: &[&str]) {
    match decide(policy, review) {
        Decision::Refused(message) => {
            for word in words {
                assert!(
                    message.contains(word),
                    "the message should say {word:?}: {message}"
                );
            }
        }
        other => panic!("not refused ({other:?}): {review:#?}"),
    }
}
