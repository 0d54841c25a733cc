//! A SpecialResource file checked the way the API server will check it: the CRD's
//! OpenAPI schema (patterns, enums, bounds), then the Rust types, then the CEL rules.
//! So a bad file is refused before anything touches the cluster.

use std::sync::LazyLock;

use afs_operator::crd::SpecialResource;
use kube::CustomResourceExt;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum InvalidSpecialResource {
    #[error("not YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error(
        "expected kind SpecialResource of apiVersion afs.csi.auristor.com/v1alpha1, found {kind} of {api_version}"
    )]
    WrongKind { kind: String, api_version: String },
    #[error("metadata.name is required")]
    MissingName,
    /// Each entry names the field (a JSON pointer) and the rule.
    #[error("refused by the CRD's rules:\n  {}", .0.join("\n  "))]
    Rules(Vec<String>),
}

static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let crd = serde_json::to_value(SpecialResource::crd()).unwrap_or_default();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    // The schema is generated from our own types; a failure here is a bug caught by tests.
    #[allow(clippy::expect_used)]
    jsonschema::validator_for(schema).expect("the generated CRD schema compiles")
});

/// Parses and admits one SpecialResource document.
pub fn special_resource(yaml: &str) -> Result<SpecialResource, InvalidSpecialResource> {
    let object: Value = serde_norway::from_str(yaml)?;
    special_resource_value(&object)
}

pub fn special_resource_value(object: &Value) -> Result<SpecialResource, InvalidSpecialResource> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    if kind != "SpecialResource" || api_version != "afs.csi.auristor.com/v1alpha1" {
        return Err(InvalidSpecialResource::WrongKind {
            kind: kind.to_owned(),
            api_version: api_version.to_owned(),
        });
    }
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Err(InvalidSpecialResource::MissingName);
    }
    let errors: Vec<String> = SCHEMA
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if !errors.is_empty() {
        return Err(InvalidSpecialResource::Rules(errors));
    }
    let sr: SpecialResource = serde_json::from_value(object.clone())
        .map_err(|e| InvalidSpecialResource::Rules(vec![e.to_string()]))?;
    let mut unknown = Vec::new();
    let known = serde_json::to_value(&sr).unwrap_or_default();
    unknown_fields(&object["spec"], &known["spec"], "/spec", &mut unknown);
    if !unknown.is_empty() {
        return Err(InvalidSpecialResource::Rules(unknown));
    }
    sr.validate_cel()
        .map_err(|e| InvalidSpecialResource::Rules(vec![e.to_string()]))?;
    Ok(sr)
}

/// Whether the API server would accept `new` as an update of `live` (the transition
/// rules: `spec.namespace` and `spec.csi.driverName` are immutable).
pub fn update(new: &SpecialResource, live: &SpecialResource) -> Result<(), InvalidSpecialResource> {
    new.validate_cel_update(live)
        .map_err(|e| InvalidSpecialResource::Rules(vec![e.to_string()]))
}

/// Fields of `given` that the types do not know: the API server would drop them
/// without a word, so a misspelt `mapVolume:` would deploy with no map volumes.
fn unknown_fields(given: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => {
            for (key, value) in given.iter().filter(|(_, v)| !v.is_null()) {
                let here = format!("{path}/{key}");
                match known.get(key) {
                    Some(k) => unknown_fields(value, k, &here, out),
                    None => out.push(format!("{here}: unknown field")),
                }
            }
        }
        (Value::Array(given), Value::Array(known)) => {
            for (i, (g, k)) in given.iter().zip(known).enumerate() {
                unknown_fields(g, k, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}
