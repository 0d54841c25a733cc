//! A SpecialResource file checked the way the API server will check it: the CRD's
//! OpenAPI schema (patterns, enums, bounds), then the Rust types, then the CEL rules.
//! So a bad file is refused before anything touches the cluster. Then, given the
//! ConfigMaps and Secrets it mounts ([`MapKeys`]), whether they hold the files its AFS
//! client reads ([`client_files`]).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use afs_operator::crd::{
    AURISTOR_CELL_DATABASE, AURISTOR_CONFIG, CELL_SERV_DB, CacheManager, SpecialResource, THIS_CELL,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{CustomResourceExt, ResourceExt};
use serde::Deserialize;
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

/// The CRD's OpenAPI schema of a SpecialResource.
static SCHEMA_VALUE: LazyLock<Value> = LazyLock::new(|| {
    let crd = serde_json::to_value(SpecialResource::crd()).unwrap_or_default();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
});

static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    // The schema is generated from our own types; a failure here is a bug caught by tests.
    #[allow(clippy::expect_used)]
    jsonschema::validator_for(&SCHEMA_VALUE).expect("the generated CRD schema compiles")
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
    let spec_schema = &SCHEMA_VALUE["properties"]["spec"];
    unknown_fields(&object["spec"], spec_schema, "/spec", &mut unknown);
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

/// Fields of `given` that the schema does not know: the API server would drop them
/// without a word, so a misspelt `mapVolume:` would deploy with no map volumes. (The
/// schema, not the types' JSON: that leaves out fields written at their default.)
fn unknown_fields(given: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    match given {
        Value::Object(given) => {
            // Without `properties`, a map of any keys (`additionalProperties`).
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (key, value) in given.iter().filter(|(_, v)| !v.is_null()) {
                let here = format!("{path}/{key}");
                match properties.get(key) {
                    Some(field) => unknown_fields(value, field, &here, out),
                    None => out.push(format!("{here}: unknown field")),
                }
            }
        }
        Value::Array(given) => {
            if let Some(items) = schema.get("items") {
                for (i, item) in given.iter().enumerate() {
                    unknown_fields(item, items, &format!("{path}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

/// The keys (file names) of one ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapKeys {
    /// `ConfigMap` or `Secret`.
    pub kind: &'static str,
    pub name: String,
    pub keys: BTreeSet<String>,
}

impl MapKeys {
    pub fn config_map(map: &ConfigMap) -> Self {
        let keys = map.data.iter().flat_map(|d| d.keys());
        let binary = map.binary_data.iter().flat_map(|d| d.keys());
        Self {
            kind: "ConfigMap",
            name: map.name_any(),
            keys: keys.chain(binary).cloned().collect(),
        }
    }

    pub fn secret(secret: &Secret) -> Self {
        let keys = secret.data.iter().flat_map(|d| d.keys());
        let strings = secret.string_data.iter().flat_map(|d| d.keys());
        Self {
            kind: "Secret",
            name: secret.name_any(),
            keys: keys.chain(strings).cloned().collect(),
        }
    }

    /// The ConfigMaps and Secrets of a YAML text: its documents, and the items of its
    /// `List`s (what `kubectl get -o yaml` and `kubectl create --dry-run=client -o
    /// yaml` print). Other kinds are skipped.
    pub fn from_yaml(text: &str) -> Result<Vec<Self>, serde_norway::Error> {
        let mut maps = Vec::new();
        for document in serde_norway::Deserializer::from_str(text) {
            collect_maps(Value::deserialize(document)?, &mut maps)?;
        }
        Ok(maps)
    }
}

fn collect_maps(object: Value, out: &mut Vec<MapKeys>) -> Result<(), serde_norway::Error> {
    fn parse<T: serde::de::DeserializeOwned>(object: Value) -> Result<T, serde_norway::Error> {
        serde_json::from_value(object).map_err(serde::de::Error::custom)
    }
    match object["kind"].as_str() {
        Some("ConfigMap") => out.push(MapKeys::config_map(&parse(object)?)),
        Some("Secret") => out.push(MapKeys::secret(&parse(object)?)),
        Some("List") => {
            for item in object["items"].as_array().into_iter().flatten() {
                collect_maps(item.clone(), out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What `kmod.mapVolumes` mounts at a directory the client reads.
enum Mounted<'a> {
    /// A ConfigMap or Secret, and its keys when known.
    Map {
        kind: &'static str,
        name: &'a str,
        keys: Option<&'a BTreeSet<String>>,
    },
    /// A host directory, or nothing (admission refuses that): nothing to check here.
    Other,
}

fn mounted<'a>(sr: &'a SpecialResource, dir: &str, maps: &'a [MapKeys]) -> Mounted<'a> {
    let volume = sr.spec.kmod.map_volumes.iter().find(|v| v.target == dir);
    let (kind, name) = match volume.map(|v| (&v.config_map, &v.secret)) {
        Some((Some(source), _)) => ("ConfigMap", source.name.as_str()),
        Some((None, Some(source))) => ("Secret", source.name.as_str()),
        _ => return Mounted::Other,
    };
    let keys = maps
        .iter()
        .find(|m| m.kind == kind && m.name == name)
        .map(|m| &m.keys);
    Mounted::Map { kind, name, keys }
}

/// `which has no key K` / `which has no keys K1, K2`.
fn no_keys(missing: &[&str]) -> String {
    let plural = if missing.len() == 1 { "" } else { "s" };
    format!("which has no key{plural} {}", missing.join(", "))
}

/// What the SR's AFS client reads that the ConfigMaps and Secrets mounted for it lack,
/// one sentence each, e.g. `client: configDir /etc/openafs is ConfigMap etc-openafs,
/// which has no key ThisCell (the openafs client needs CellServDB and ThisCell)`.
/// `maps` are the ConfigMaps and Secrets known (the SR's namespace's, or files); a
/// directory mounted from a host path is not checked.
pub fn client_files(sr: &SpecialResource, maps: &[MapKeys]) -> Vec<String> {
    let manager = sr.spec.csi.cache_manager;
    let client = &sr.spec.client;
    let config_dir = client.config_dir(manager);
    let auristor = manager == CacheManager::Auristor;
    let needs = if auristor {
        format!(
            "the auristor client needs {AURISTOR_CONFIG} in configDir, and {AURISTOR_CELL_DATABASE} in configDir or cellDatabaseDir"
        )
    } else {
        format!(
            "the {} client needs {CELL_SERV_DB} and {THIS_CELL}",
            manager.as_str()
        )
    };
    // The cell database of auristor: in cellDatabaseDir when set, else in configDir.
    let cell_database_dir = client.cell_database_dir.as_deref().filter(|_| auristor);
    let mut problems = Vec::new();
    let config_keys = match mounted(sr, config_dir, maps) {
        Mounted::Map { kind, name, keys } => {
            let Some(keys) = keys else {
                problems.push(format!(
                    "client: configDir {config_dir} is {kind} {name}, which is not among the maps given"
                ));
                return problems;
            };
            let required: &[&str] = match (auristor, cell_database_dir) {
                (false, _) => &[CELL_SERV_DB, THIS_CELL],
                (true, None) => &[AURISTOR_CONFIG, AURISTOR_CELL_DATABASE],
                (true, Some(_)) => &[AURISTOR_CONFIG],
            };
            let missing: Vec<&str> = required
                .iter()
                .copied()
                .filter(|k| !keys.contains(*k))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "client: configDir {config_dir} is {kind} {name}, {} ({needs})",
                    no_keys(&missing)
                ));
            }
            Some(keys)
        }
        Mounted::Other => None,
    };
    if let Some(dir) = cell_database_dir
        && let Mounted::Map { kind, name, keys } = mounted(sr, dir, maps)
    {
        match keys {
            None => problems.push(format!(
                "client: cellDatabaseDir {dir} is {kind} {name}, which is not among the maps given"
            )),
            Some(keys)
                if !keys.contains(AURISTOR_CELL_DATABASE)
                    && config_keys.is_some_and(|k| !k.contains(AURISTOR_CELL_DATABASE)) =>
            {
                problems.push(format!(
                    "client: cellDatabaseDir {dir} is {kind} {name}, {}, and configDir {config_dir} has none either ({needs})",
                    no_keys(&[AURISTOR_CELL_DATABASE])
                ));
            }
            Some(_) => {}
        }
    }
    problems
}
