//! The files under `examples/` are what users copy, so each is checked by what will
//! read it: SpecialResources by the CRD's own admission (schema, types, CEL), every
//! other manifest by the Kubernetes type of its kind and, for CSI attributes, by the
//! driver's own parser; the map scripts by running them against a stub `kubectl`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use afs_operator::crd::{CacheManager, DEFAULT_DRIVER_NAME, SpecialResource};
use afs_operator::group;
use afs_repo_tests::repo_root;
use afsctl::validate::{MapKeys, client_files};
use csi_driver::volume::{VolumeSpec, parse_attributes};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, PodSpec};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The node-group label of the examples, as in the original system.
const GROUP_LABEL: &str = "auristor.com/auristorfs-group";
const MOUNT_TYPES: [&str; 2] = ["volume", "root"];
const SCENARIOS: [&str; 4] = [
    "static.yaml",
    "dynamic.yaml",
    "rwx-deployment.yaml",
    "ephemeral.yaml",
];

fn examples() -> PathBuf {
    repo_root().join("examples")
}

/// `*.yaml` and `*.yml` files under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The documents of a (multi-document) YAML text; empty documents are skipped.
fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Fields of `written` that are missing from, or different in, `parsed` (the same
/// object after a trip through its Rust type). Those types ignore unknown fields, so a
/// misspelt or misplaced field would otherwise vanish without a word; `kubectl apply`
/// refuses it.
fn dropped_fields(written: &Value, parsed: &Value, at: &str, problems: &mut Vec<String>) {
    match (written, parsed) {
        (Value::Object(w), Value::Object(p)) => {
            for (key, value) in w {
                let here = format!("{at}.{key}");
                match p.get(key) {
                    Some(parsed_value) => dropped_fields(value, parsed_value, &here, problems),
                    None => problems.push(format!("{here} is not a field of the type")),
                }
            }
        }
        (Value::Array(w), Value::Array(p)) if w.len() == p.len() => {
            for (i, (value, parsed_value)) in w.iter().zip(p).enumerate() {
                dropped_fields(value, parsed_value, &format!("{at}[{i}]"), problems);
            }
        }
        _ if written == parsed => {}
        _ => problems.push(format!("{at}: written {written}, read back as {parsed}")),
    }
}

/// `doc` as a `T`, refusing fields that `T` does not know.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: does not parse into its type: {e}"));
    let back = serde_json::to_value(&object).expect("a parsed object serializes back");
    let mut problems = Vec::new();
    dropped_fields(doc, &back, "", &mut problems);
    assert!(
        problems.is_empty(),
        "{origin}: fields lost on parsing:\n  {}",
        problems.join("\n  ")
    );
    object
}

// ---------------------------------------------------------------------------------
// SpecialResources
// ---------------------------------------------------------------------------------

/// Every SpecialResource example, admitted as the API server would admit it.
fn special_resources() -> Vec<(PathBuf, SpecialResource)> {
    let files = yaml_files(&examples().join("specialresources"));
    assert!(!files.is_empty(), "no SpecialResource examples found");
    files
        .into_iter()
        .map(|path| {
            let text = read(&path);
            let sr = afsctl::validate::special_resource(&text)
                .unwrap_or_else(|e| panic!("{}: refused: {e}", path.display()));
            // The schema keeps no list of allowed fields, and the API server prunes
            // unknown ones silently: catch typos here.
            let written = documents(&text, &path.display().to_string());
            typed::<SpecialResource>(&written[0], &path.display().to_string());
            (path, sr)
        })
        .collect()
}

fn special_resource(file: &str) -> SpecialResource {
    let path = examples().join("specialresources").join(file);
    special_resources()
        .into_iter()
        .find(|(p, _)| *p == path)
        .map(|(_, sr)| sr)
        .unwrap_or_else(|| panic!("{} is missing", path.display()))
}

/// `X.Y.Z` as numbers, for ordering versions.
fn version(v: &str) -> Vec<u64> {
    v.split(['-', '+'])
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or_else(|e| panic!("version {v:?}: {e}")))
        .collect()
}

/// ConfigMaps and Secrets an SR mounts into its driver container, as `(kind, name)`.
fn referenced_maps(sr: &SpecialResource) -> BTreeSet<(&'static str, String)> {
    sr.spec
        .kmod
        .map_volumes
        .iter()
        .filter_map(|v| match (&v.config_map, &v.secret) {
            (Some(c), _) => Some(("ConfigMap", c.name.clone())),
            (_, Some(s)) => Some(("Secret", s.name.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn special_resources_are_admitted_as_the_api_server_would() {
    for (path, sr) in special_resources() {
        let origin = path.display();
        assert_eq!(sr.spec.kmod.module, "yfs", "{origin}: AuriStorFS module");
        assert_eq!(
            sr.spec.csi.cache_manager,
            CacheManager::Auristor,
            "{origin}"
        );
        assert_eq!(sr.spec.csi.driver_name, DEFAULT_DRIVER_NAME, "{origin}");
        let targets: BTreeSet<&str> = sr
            .spec
            .kmod
            .map_volumes
            .iter()
            .map(|v| v.target.as_str())
            .collect();
        for target in [
            "/var/cache/yfs",
            "/etc/yfs",
            "/usr/share/yfs",
            "/etc/yfs-keytabs",
        ] {
            assert!(
                targets.contains(target),
                "{origin}: no map volume at {target}"
            );
        }
        // The AFS client reads its configuration and cell database from the maps and
        // keeps its disk cache on the node.
        let client = &sr.spec.client;
        assert_eq!(
            client.config_dir(CacheManager::Auristor),
            "/etc/yfs",
            "{origin}"
        );
        assert_eq!(
            client.cell_database_dir.as_deref(),
            Some("/usr/share/yfs"),
            "{origin}"
        );
        assert_eq!(
            client.cache.directory.as_deref(),
            Some("/var/cache/yfs"),
            "{origin}"
        );
        if let Some(class) = &sr.spec.csi.storage_class {
            let attributes: HashMap<String, String> =
                class.parameters.clone().into_iter().collect();
            let (_, unknown) = parse_attributes(&attributes)
                .unwrap_or_else(|e| panic!("{origin}: csi.storageClass.parameters: {e}"));
            assert!(
                unknown.is_empty(),
                "{origin}: unknown parameters {unknown:?}"
            );
        }
    }
}

#[test]
fn the_two_groups_are_disjoint_and_at_different_versions() {
    let one = special_resource("group-1.yaml");
    let two = special_resource("group-2.yaml");
    assert_eq!(
        one.spec.node_selector.get(GROUP_LABEL).map(String::as_str),
        Some("group-1")
    );
    assert_eq!(
        two.spec.node_selector.get(GROUP_LABEL).map(String::as_str),
        Some("group-2")
    );
    assert_ne!(
        one.spec.namespace, two.spec.namespace,
        "each group has its own namespace"
    );
    assert_ne!(one.metadata.name, two.metadata.name);

    // No node can be in both: the selectors want different values of one key.
    let conflicting = one
        .spec
        .node_selector
        .iter()
        .any(|(key, value)| two.spec.node_selector.get(key).is_some_and(|v| v != value));
    assert!(conflicting, "a node could carry the labels of both groups");
    // A node labelled for one group is taken by it, not by the other (the operator's
    // own membership test).
    for (member, other) in [(&one, &two), (&two, &one)] {
        let node_labels = &member.spec.node_selector;
        assert!(group::selects(&member.spec.node_selector, node_labels));
        assert!(!group::selects(&other.spec.node_selector, node_labels));
    }

    // group-2 is the newer one, for the module and for the driver.
    assert!(
        version(&one.spec.kmod.version) < version(&two.spec.kmod.version),
        "kmod: group-1 {} should be older than group-2 {}",
        one.spec.kmod.version,
        two.spec.kmod.version
    );
    assert!(
        version(&one.spec.csi.version) < version(&two.spec.csi.version),
        "csi: group-1 {} should be older than group-2 {}",
        one.spec.csi.version,
        two.spec.csi.version
    );

    // A StorageClass is cluster-wide: two SRs declaring one name would fight over it.
    let classes: Vec<&str> = [&one, &two]
        .iter()
        .filter_map(|sr| sr.spec.csi.storage_class.as_ref())
        .map(|c| c.name.as_str())
        .collect();
    let unique: BTreeSet<&str> = classes.iter().copied().collect();
    assert_eq!(
        classes.len(),
        unique.len(),
        "StorageClass declared twice: {classes:?}"
    );
}

// ---------------------------------------------------------------------------------
// Kubernetes manifests (CSI examples)
// ---------------------------------------------------------------------------------

/// The objects of one example file, by kind.
#[derive(Debug, Default)]
struct Objects {
    volumes: Vec<PersistentVolume>,
    claims: Vec<PersistentVolumeClaim>,
    classes: Vec<StorageClass>,
    pods: Vec<Pod>,
    deployments: Vec<Deployment>,
}

impl Objects {
    fn load(path: &Path) -> Self {
        let origin = path.display().to_string();
        let docs = documents(&read(path), &origin);
        assert!(!docs.is_empty(), "{origin}: no documents");
        let mut objects = Self::default();
        for (i, doc) in docs.iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or_default();
            let at = format!("{origin} (document {}, {kind})", i + 1);
            match kind {
                "PersistentVolume" => objects.volumes.push(typed(doc, &at)),
                "PersistentVolumeClaim" => objects.claims.push(typed(doc, &at)),
                "StorageClass" => objects.classes.push(typed(doc, &at)),
                "Pod" => objects.pods.push(typed(doc, &at)),
                "Deployment" => objects.deployments.push(typed(doc, &at)),
                other => panic!("{at}: unknown kind {other:?}; teach tests/examples.rs its type"),
            }
        }
        objects
    }

    /// Every pod spec, with the name of the object holding it.
    fn pod_specs(&self) -> Vec<(String, &PodSpec)> {
        let pods = self.pods.iter().map(|p| {
            let spec = p.spec.as_ref().expect("a pod has a spec");
            (format!("Pod {}", name(&p.metadata)), spec)
        });
        let deployments = self.deployments.iter().map(|d| {
            let spec = d
                .spec
                .template
                .spec
                .as_ref()
                .expect("a deployment has a pod template");
            (format!("Deployment {}", name(&d.metadata)), spec)
        });
        pods.chain(deployments).collect()
    }

    /// Claim names mounted by the pod specs, with the object mounting them.
    fn mounted_claims(&self) -> Vec<(String, String)> {
        self.pod_specs()
            .into_iter()
            .flat_map(|(owner, spec)| {
                spec.volumes
                    .iter()
                    .flatten()
                    .filter_map(|v| v.persistent_volume_claim.as_ref())
                    .map(move |c| (owner.clone(), c.claim_name.clone()))
            })
            .collect()
    }

    fn claim(&self, wanted: &str) -> Option<&PersistentVolumeClaim> {
        self.claims.iter().find(|c| name(&c.metadata) == wanted)
    }

    /// Every set of CSI attributes in the file (PVs, StorageClasses, inline volumes)
    /// parsed by the driver's own parser.
    fn volume_specs(&self, origin: &str) -> Vec<VolumeSpec> {
        let mut sets: Vec<(String, &str, BTreeMap<String, String>)> = Vec::new();
        for pv in &self.volumes {
            let csi = pv
                .spec
                .as_ref()
                .and_then(|s| s.csi.as_ref())
                .unwrap_or_else(|| {
                    panic!("{origin}: PV {} is not a CSI volume", name(&pv.metadata))
                });
            let attributes = csi.volume_attributes.clone().unwrap_or_default();
            sets.push((
                format!("PV {}", name(&pv.metadata)),
                &csi.driver,
                attributes,
            ));
        }
        for class in &self.classes {
            let parameters = class.parameters.clone().unwrap_or_default();
            sets.push((
                format!("StorageClass {}", name(&class.metadata)),
                &class.provisioner,
                parameters,
            ));
        }
        for (owner, spec) in self.pod_specs() {
            for volume in spec.volumes.iter().flatten() {
                if let Some(csi) = &volume.csi {
                    let attributes = csi.volume_attributes.clone().unwrap_or_default();
                    sets.push((
                        format!("{owner} volume {}", volume.name),
                        &csi.driver,
                        attributes,
                    ));
                }
            }
        }
        sets.into_iter()
            .map(|(what, driver, attributes)| {
                assert_eq!(driver, DEFAULT_DRIVER_NAME, "{origin}: {what}: driver");
                let attributes: HashMap<String, String> = attributes.into_iter().collect();
                let (spec, unknown) = parse_attributes(&attributes)
                    .unwrap_or_else(|e| panic!("{origin}: {what}: refused by the driver: {e}"));
                assert!(
                    unknown.is_empty(),
                    "{origin}: {what}: unknown attributes {unknown:?}"
                );
                spec
            })
            .collect()
    }
}

fn name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// Every YAML file under `examples/` but the SpecialResources.
fn manifest_files() -> Vec<PathBuf> {
    let special = examples().join("specialresources");
    let files: Vec<PathBuf> = yaml_files(&examples())
        .into_iter()
        .filter(|p| !p.starts_with(&special))
        .collect();
    assert!(!files.is_empty(), "no example manifests found");
    files
}

#[test]
fn manifests_parse_into_the_type_of_their_kind() {
    for path in manifest_files() {
        let objects = Objects::load(&path);
        let origin = path.display();
        for (owner, spec) in objects.pod_specs() {
            let volumes: BTreeSet<&str> = spec
                .volumes
                .iter()
                .flatten()
                .map(|v| v.name.as_str())
                .collect();
            for container in &spec.containers {
                for mount in container.volume_mounts.iter().flatten() {
                    assert!(
                        volumes.contains(mount.name.as_str()),
                        "{origin}: {owner}: container {} mounts unknown volume {}",
                        container.name,
                        mount.name
                    );
                }
            }
        }
        for deployment in &objects.deployments {
            let spec = &deployment.spec;
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            let wanted = spec.selector.match_labels.clone().unwrap_or_default();
            assert!(
                !wanted.is_empty() && group::selects(&wanted, &labels),
                "{origin}: Deployment {}: selector does not match its template",
                name(&deployment.metadata)
            );
        }
    }
}

#[test]
fn csi_attributes_pass_the_drivers_own_checks() {
    let mut checked = 0;
    for path in manifest_files() {
        checked += Objects::load(&path)
            .volume_specs(&path.display().to_string())
            .len();
    }
    assert!(checked > 0, "no CSI attributes found in the examples");
}

#[test]
fn claims_classes_and_volumes_resolve_within_each_file() {
    let operator_classes: BTreeSet<String> = special_resources()
        .into_iter()
        .filter_map(|(_, sr)| sr.spec.csi.storage_class.map(|c| c.name))
        .collect();
    for path in manifest_files() {
        let objects = Objects::load(&path);
        let origin = path.display();
        for class in &objects.classes {
            assert!(
                !operator_classes.contains(name(&class.metadata)),
                "{origin}: StorageClass {} is also kept by the operator for an example SR",
                name(&class.metadata)
            );
        }
        for claim in &objects.claims {
            let claim_name = name(&claim.metadata);
            let spec = claim.spec.as_ref().expect("a claim has a spec");
            let modes = spec.access_modes.clone().unwrap_or_default();
            assert_eq!(
                modes,
                ["ReadWriteMany"],
                "{origin}: claim {claim_name}: access modes"
            );
            let class = spec.storage_class_name.as_deref();
            match (class, spec.volume_name.as_deref()) {
                // Static: no class, bound to a PV of this file.
                (Some(""), Some(volume)) => {
                    let pv = objects
                        .volumes
                        .iter()
                        .find(|v| name(&v.metadata) == volume)
                        .unwrap_or_else(|| panic!("{origin}: claim {claim_name}: no PV {volume}"));
                    let pv_spec = pv.spec.as_ref().expect("a PV has a spec");
                    assert_eq!(
                        pv_spec.storage_class_name.as_deref(),
                        Some(""),
                        "{origin}: PV {volume} must have the claim's empty class to bind"
                    );
                    assert_eq!(
                        pv_spec.access_modes.clone().unwrap_or_default(),
                        modes,
                        "{origin}: PV {volume}: access modes"
                    );
                }
                // Dynamic: a class of this file, provisioned by the driver.
                (Some(class), None) if !class.is_empty() => {
                    assert!(
                        objects.classes.iter().any(|c| name(&c.metadata) == class),
                        "{origin}: claim {claim_name}: no StorageClass {class} in the file"
                    );
                }
                other => panic!(
                    "{origin}: claim {claim_name}: set either storageClassName \"\" and \
                     volumeName, or a storageClassName of this file (found {other:?})"
                ),
            }
        }
        for (owner, claim) in objects.mounted_claims() {
            assert!(
                objects.claim(&claim).is_some(),
                "{origin}: {owner} mounts claim {claim}, which is not in the file"
            );
        }
    }
}

#[test]
fn both_mount_types_have_all_four_scenarios() {
    for mount_type in MOUNT_TYPES {
        for scenario in SCENARIOS {
            let path = examples().join("csi").join(mount_type).join(scenario);
            assert!(path.is_file(), "{} is missing", path.display());
            let origin = path.display().to_string();
            let objects = Objects::load(&path);

            let specs = objects.volume_specs(&origin);
            assert!(!specs.is_empty(), "{origin}: no CSI volume");
            for spec in specs {
                let found = match spec {
                    VolumeSpec::Volume { .. } => "volume",
                    VolumeSpec::Root { .. } => "root",
                };
                assert_eq!(found, mount_type, "{origin}: mount-type");
            }

            let claims = objects.mounted_claims();
            match scenario {
                "static.yaml" => {
                    assert!(!objects.volumes.is_empty(), "{origin}: no PersistentVolume");
                    assert!(!objects.pods.is_empty(), "{origin}: no Pod");
                    assert!(
                        claims.iter().any(|(_, c)| objects
                            .claim(c)
                            .and_then(|c| c.spec.as_ref())
                            .is_some_and(|s| s.volume_name.is_some())),
                        "{origin}: no pod mounts a claim bound to a PV by name"
                    );
                }
                "dynamic.yaml" => {
                    assert!(!objects.classes.is_empty(), "{origin}: no StorageClass");
                    assert!(!objects.pods.is_empty(), "{origin}: no Pod");
                    assert!(
                        claims.iter().any(|(_, c)| objects
                            .claim(c)
                            .and_then(|c| c.spec.as_ref())
                            .and_then(|s| s.storage_class_name.as_deref())
                            .is_some_and(|class| !class.is_empty())),
                        "{origin}: no pod mounts a claim of a StorageClass"
                    );
                }
                "rwx-deployment.yaml" => {
                    let shared = objects
                        .deployments
                        .iter()
                        .any(|d| d.spec.replicas.unwrap_or(1) >= 2);
                    assert!(shared, "{origin}: no Deployment of 2 or more replicas");
                    assert!(
                        claims
                            .iter()
                            .any(|(owner, _)| owner.starts_with("Deployment ")),
                        "{origin}: the Deployment mounts no claim"
                    );
                }
                "ephemeral.yaml" => {
                    let inline = objects.pods.iter().any(|p| {
                        p.spec
                            .iter()
                            .flat_map(|s| s.volumes.iter().flatten())
                            .any(|v| v.csi.is_some())
                    });
                    assert!(inline, "{origin}: no pod with an inline CSI volume");
                    assert!(
                        objects.volumes.is_empty() && objects.claims.is_empty(),
                        "{origin}: an ephemeral volume needs no PV or claim"
                    );
                }
                other => unreachable!("scenario {other}"),
            }
        }
    }
}

/// The node plugin publishes only what its SR allows (`csi.allowedCells`,
/// `allowRootMounts`, `allowEphemeral`), and the example pods may land on a node of
/// either group: every group must allow every cell, root mount and inline volume the
/// examples use, or they would be refused.
#[test]
fn every_group_allows_what_the_examples_mount() {
    let mut cells = BTreeSet::new();
    let mut root = Vec::new();
    let mut inline = Vec::new();
    for path in manifest_files() {
        let origin = path.display().to_string();
        let objects = Objects::load(&path);
        for spec in objects.volume_specs(&origin) {
            match spec {
                VolumeSpec::Volume { cell, .. } => {
                    cells.insert(cell);
                }
                VolumeSpec::Root { .. } => root.push(origin.clone()),
            }
        }
        if objects
            .pod_specs()
            .iter()
            .any(|(_, spec)| spec.volumes.iter().flatten().any(|v| v.csi.is_some()))
        {
            inline.push(origin);
        }
    }
    assert!(!cells.is_empty() && !root.is_empty() && !inline.is_empty());
    for (path, sr) in special_resources() {
        let origin = path.display();
        let csi = &sr.spec.csi;
        for cell in &cells {
            assert!(
                csi.allowed_cells.iter().any(|c| c == "*" || c == cell),
                "{origin}: csi.allowedCells lacks {cell}, used by the examples"
            );
        }
        assert!(
            csi.allow_root_mounts,
            "{origin}: csi.allowRootMounts is needed by {root:?}"
        );
        assert!(
            csi.allow_ephemeral,
            "{origin}: csi.allowEphemeral is needed by {inline:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Map scripts
// ---------------------------------------------------------------------------------

/// A stand-in for `kubectl`. It records each call in a directory of its own under
/// `$KUBECTL_STUB_CALLS` (calls in a pipeline run at the same time): `args`
/// (NUL-separated), `stdin` for `-f -`, and `files/<key>` for each
/// `--from-file=<key>=<path>`. It acts as a cluster where every map already exists
/// and none can be found, i.e. a second run: a real `create` fails, and so does a
/// `delete` without `--ignore-not-found`. `create ... --dry-run=client -o yaml`
/// prints the object with its kind, name and namespace.
const KUBECTL_STUB: &str = r#"#!/bin/sh
set -eu
call=$(mktemp -d "$KUBECTL_STUB_CALLS/call.XXXXXX")
printf '%s\0' "$@" >"$call/args"
mkdir "$call/files"
kind= name= namespace= prev= verb= dry_run= yaml= stdin= ignore=
for arg in "$@"; do
    case $prev in
        configmap) kind=ConfigMap name=$arg ;;
        generic) kind=Secret name=$arg ;;
        -n | --namespace) namespace=$arg ;;
        -o | --output) [ "$arg" = yaml ] && yaml=1 ;;
        -f | --filename) [ "$arg" = - ] && stdin=1 ;;
    esac
    case $arg in
        create | delete | apply) [ -z "$verb" ] && verb=$arg ;;
        --namespace=*) namespace=${arg#*=} ;;
        --dry-run=client) dry_run=1 ;;
        -oyaml | --output=yaml) yaml=1 ;;
        --filename=-) stdin=1 ;;
        --ignore-not-found | --ignore-not-found=true) ignore=1 ;;
        --from-file=*=*)
            spec=${arg#--from-file=}
            cp "${spec#*=}" "$call/files/${spec%%=*}"
            ;;
    esac
    prev=$arg
done
if [ -n "$stdin" ]; then cat >"$call/stdin"; fi
case $verb in
    create)
        if [ -z "$dry_run" ]; then echo "Error from server (AlreadyExists)" >&2; exit 1; fi
        if [ -n "$yaml" ]; then
            printf 'apiVersion: v1\nkind: %s\nmetadata:\n  name: %s\n' "$kind" "$name"
            if [ -n "$namespace" ]; then printf '  namespace: %s\n' "$namespace"; fi
        fi
        ;;
    delete)
        if [ -z "$ignore" ]; then echo "Error from server (NotFound)" >&2; exit 1; fi
        ;;
esac
"#;

/// One recorded `kubectl` call.
#[derive(Debug)]
struct Call {
    args: Vec<String>,
    stdin: Option<String>,
    /// `--from-file` contents by key.
    files: BTreeMap<String, Vec<u8>>,
}

impl Call {
    fn verb(&self) -> Option<&str> {
        self.args
            .iter()
            .map(String::as_str)
            .find(|a| matches!(*a, "create" | "delete" | "apply"))
    }

    /// The value of `--flag value` or `--flag=value` (or the short form).
    fn flag(&self, long: &str, short: Option<&str>) -> Option<&str> {
        self.args.iter().enumerate().find_map(|(i, arg)| {
            if arg == long || short.is_some_and(|s| arg == s) {
                self.args.get(i + 1).map(String::as_str)
            } else {
                arg.strip_prefix(long)
                    .and_then(|rest| rest.strip_prefix('='))
            }
        })
    }

    fn namespace(&self) -> Option<&str> {
        self.flag("--namespace", Some("-n"))
    }

    /// Positional arguments after the verb (flags and their values left out).
    fn operands(&self) -> Vec<&str> {
        const WITH_VALUE: [&str; 7] = [
            "-n",
            "--namespace",
            "--context",
            "--kubeconfig",
            "-o",
            "--output",
            "-f",
        ];
        let mut operands = Vec::new();
        let mut args = self
            .args
            .iter()
            .map(String::as_str)
            .skip_while(|a| Some(*a) != self.verb());
        args.next();
        while let Some(arg) = args.next() {
            if WITH_VALUE.contains(&arg) {
                args.next();
            } else if !arg.starts_with('-') {
                operands.push(arg);
            }
        }
        operands
    }
}

/// `configmap`, `cm`, `secret` ... as a kind.
fn kind_of(resource: &str) -> &'static str {
    match resource {
        "configmap" | "configmaps" | "cm" => "ConfigMap",
        "secret" | "secrets" => "Secret",
        other => panic!("a map script touches {other:?}, neither ConfigMaps nor Secrets"),
    }
}

/// A map script's run against the stub.
#[derive(Debug)]
struct ScriptRun {
    output: Output,
    calls: Vec<Call>,
}

impl ScriptRun {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn assert_success(&self, what: &str) {
        assert!(
            self.output.status.success(),
            "{what} failed ({}):\n{}",
            self.output.status,
            self.stderr()
        );
    }

    fn calls_of(&self, verb: &str) -> impl Iterator<Item = &Call> {
        self.calls.iter().filter(move |c| c.verb() == Some(verb))
    }

    /// `(kind, name, namespace)` of every object applied.
    fn applied(&self) -> BTreeSet<(String, String, String)> {
        self.calls_of("apply")
            .flat_map(|call| {
                let input = call.stdin.as_deref().unwrap_or_default();
                documents(input, "kubectl apply input")
                    .into_iter()
                    .map(move |doc| {
                        let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                        let namespace = doc["metadata"]["namespace"]
                            .as_str()
                            .or(call.namespace())
                            .unwrap_or_default()
                            .to_owned();
                        (
                            field(&doc["kind"]),
                            field(&doc["metadata"]["name"]),
                            namespace,
                        )
                    })
            })
            .collect()
    }

    /// `(kind, name, namespace)` of every object deleted.
    fn deleted(&self) -> BTreeSet<(String, String, String)> {
        let mut deleted = BTreeSet::new();
        for call in self.calls_of("delete") {
            let namespace = call.namespace().unwrap_or_default().to_owned();
            let operands = call.operands();
            let mut resource = None;
            for operand in operands {
                if let Some((kind, name)) = operand.split_once('/') {
                    deleted.insert((kind_of(kind).to_owned(), name.to_owned(), namespace.clone()));
                } else if let Some(kind) = resource {
                    deleted.insert((
                        kind_of(kind).to_owned(),
                        operand.to_owned(),
                        namespace.clone(),
                    ));
                } else {
                    resource = Some(operand);
                }
            }
        }
        deleted
    }

    /// The `create` call that renders the map `(kind, name)`.
    fn create_call(&self, kind: &str, name: &str) -> Option<&Call> {
        self.calls_of("create").find(|call| {
            let operands = call.operands();
            let (resource, rest) = operands.split_first().unwrap_or((&"", &[]));
            let rest: Vec<&str> = rest.iter().copied().filter(|o| *o != "generic").collect();
            kind_of(resource) == kind && rest.first() == Some(&name)
        })
    }
}

/// Runs `examples/maps/<script>` with bash, the stub first on PATH, from a directory
/// outside the repository (the script must find its files by itself), with `env`
/// and nothing else of the caller's Kubernetes settings.
fn run_script(script: &str, env: &[(&str, &str)]) -> ScriptRun {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let bin = scratch.path().join("bin");
    let calls = scratch.path().join("calls");
    let cwd = scratch.path().join("cwd");
    for dir in [&bin, &calls, &cwd] {
        fs::create_dir(dir).expect("a directory in the temporary directory");
    }
    let stub = bin.join("kubectl");
    fs::write(&stub, KUBECTL_STUB).expect("write the kubectl stub");
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755))
        .expect("make the stub executable");

    let path = std::env::var("PATH").unwrap_or_default();
    let mut command = Command::new("bash");
    command
        .arg(examples().join("maps").join(script))
        .current_dir(&cwd)
        .env("PATH", format!("{}:{path}", bin.display()))
        .env("KUBECTL_STUB_CALLS", &calls)
        .env("KUBECONFIG", scratch.path().join("no-kubeconfig"));
    for variable in [
        "SPECIAL_RESOURCE_FILE",
        "SPECIAL_RESOURCE_NAME",
        "SPECIAL_RESOURCE_NAMESPACE",
        "KUBE_CONTEXT",
    ] {
        command.env_remove(variable);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("bash runs");

    let mut recorded: Vec<Call> = fs::read_dir(&calls)
        .expect("the calls directory")
        .map(|entry| {
            let dir = entry.expect("a recorded call").path();
            let args = fs::read(dir.join("args")).expect("recorded arguments");
            let files = fs::read_dir(dir.join("files"))
                .expect("recorded files")
                .map(|f| {
                    let f = f.expect("a recorded file").path();
                    let key = f
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    (key, fs::read(&f).expect("a recorded file's content"))
                })
                .collect();
            Call {
                args: String::from_utf8_lossy(&args)
                    .split_terminator('\0')
                    .map(str::to_owned)
                    .collect(),
                stdin: fs::read_to_string(dir.join("stdin")).ok(),
                files,
            }
        })
        .collect();
    recorded.sort_by(|a, b| a.args.cmp(&b.args));
    ScriptRun {
        output,
        calls: recorded,
    }
}

/// The environment the deploy command gives the map scripts for one example SR.
fn deploy_env(path: &Path, sr: &SpecialResource) -> Vec<(&'static str, String)> {
    vec![
        ("SPECIAL_RESOURCE_FILE", path.display().to_string()),
        (
            "SPECIAL_RESOURCE_NAME",
            sr.metadata.name.clone().unwrap_or_default(),
        ),
        ("SPECIAL_RESOURCE_NAMESPACE", sr.spec.namespace.clone()),
    ]
}

fn run_for(script: &str, path: &Path, sr: &SpecialResource, extra: &[(&str, &str)]) -> ScriptRun {
    let env = deploy_env(path, sr);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    run_script(script, &all)
}

#[test]
fn create_maps_creates_every_map_the_special_resources_mount() {
    let maps = examples().join("maps");
    for (path, sr) in special_resources() {
        let run = run_for("create-maps.sh", &path, &sr, &[]);
        run.assert_success(&format!("create-maps.sh for {}", path.display()));
        let namespace = &sr.spec.namespace;
        let applied = run.applied();
        for (kind, name) in referenced_maps(&sr) {
            let wanted = (kind.to_owned(), name.clone(), namespace.clone());
            assert!(
                applied.contains(&wanted),
                "{}: {kind} {name} not applied in {namespace}; applied: {applied:?}",
                path.display()
            );
            assert!(
                run.create_call(kind, &name).is_some(),
                "{kind} {name} is not rendered"
            );
        }

        // The maps hold every file the SR's AFS client reads (afsctl's own check).
        let rendered: Vec<MapKeys> = referenced_maps(&sr)
            .into_iter()
            .map(|(kind, name)| {
                let call = run
                    .create_call(kind, &name)
                    .expect("rendered, as checked above");
                let keys = call.files.keys().cloned().collect();
                MapKeys { kind, name, keys }
            })
            .collect();
        assert_eq!(
            client_files(&sr, &rendered),
            Vec::<String>::new(),
            "{}",
            path.display()
        );

        // What the client reads from each map.
        let map_at = |target: &str| {
            let volume = sr
                .spec
                .kmod
                .map_volumes
                .iter()
                .find(|v| v.target == target)
                .unwrap_or_else(|| panic!("{}: no map volume at {target}", path.display()));
            match (&volume.config_map, &volume.secret) {
                (Some(c), _) => ("ConfigMap", c.name.clone()),
                (_, Some(s)) => ("Secret", s.name.clone()),
                _ => panic!("{}: {target} is not a ConfigMap or Secret", path.display()),
            }
        };
        for (target, key) in [
            ("/etc/yfs", "yfs-client.conf"),
            ("/usr/share/yfs", "cellservdb.conf"),
        ] {
            let (kind, name) = map_at(target);
            let call = run
                .create_call(kind, &name)
                .expect("rendered, as checked above");
            let expected = fs::read(maps.join(key)).expect("the example data file");
            assert_eq!(
                call.files.get(key),
                Some(&expected),
                "{kind} {name} must hold {key} = examples/maps/{key}"
            );
        }
        let (kind, name) = map_at("/etc/yfs-keytabs");
        let call = run
            .create_call(kind, &name)
            .expect("rendered, as checked above");
        let keytab = call
            .files
            .get("client.keytab")
            .expect("the Secret holds client.keytab");
        // Decoded from base64: the placeholder's marker is only visible after decoding.
        assert!(
            String::from_utf8_lossy(keytab).starts_with("PLACEHOLDER"),
            "the keytab Secret must hold the decoded placeholder, not its base64"
        );
        assert!(
            run.stderr().contains("placeholder"),
            "create-maps.sh should warn that the keytab is a placeholder"
        );
    }
}

#[test]
fn delete_maps_deletes_every_map_even_when_already_gone() {
    for (path, sr) in special_resources() {
        // The stub answers NotFound to every delete without --ignore-not-found.
        let run = run_for("delete-maps.sh", &path, &sr, &[]);
        run.assert_success(&format!("delete-maps.sh for {}", path.display()));
        let deleted = run.deleted();
        for (kind, name) in referenced_maps(&sr) {
            let wanted = (kind.to_owned(), name.clone(), sr.spec.namespace.clone());
            assert!(
                deleted.contains(&wanted),
                "{}: {kind} {name} not deleted in {}; deleted: {deleted:?}",
                path.display(),
                sr.spec.namespace
            );
        }
    }
}

#[test]
fn map_scripts_pass_the_chosen_context_to_every_kubectl_call() {
    let (path, sr) = special_resources().remove(0);
    for script in ["create-maps.sh", "delete-maps.sh"] {
        let run = run_for(script, &path, &sr, &[("KUBE_CONTEXT", "example-context")]);
        run.assert_success(script);
        assert!(!run.calls.is_empty(), "{script} called no kubectl");
        for call in &run.calls {
            assert_eq!(
                call.flag("--context", None),
                Some("example-context"),
                "{script}: kubectl {:?} ignores KUBE_CONTEXT",
                call.args
            );
        }

        let run = run_for(script, &path, &sr, &[]);
        run.assert_success(script);
        for call in &run.calls {
            assert_eq!(
                call.flag("--context", None),
                None,
                "{script}: {:?}",
                call.args
            );
        }
    }
}

#[test]
fn map_scripts_refuse_to_run_without_a_namespace() {
    for script in ["create-maps.sh", "delete-maps.sh"] {
        for env in [&[][..], &[("SPECIAL_RESOURCE_NAMESPACE", "")][..]] {
            let run = run_script(script, env);
            assert!(
                !run.output.status.success(),
                "{script} ran without a namespace"
            );
            assert!(
                run.stderr().contains("SPECIAL_RESOURCE_NAMESPACE"),
                "{script}: the error should name SPECIAL_RESOURCE_NAMESPACE:\n{}",
                run.stderr()
            );
            assert!(
                run.calls.is_empty(),
                "{script} called kubectl: {:?}",
                run.calls
            );
        }
    }
}

#[test]
fn map_scripts_are_executable_bash_scripts() {
    // The deploy command runs them directly, and setupEnvironment refuses them otherwise.
    for script in ["create-maps.sh", "delete-maps.sh"] {
        let path = examples().join("maps").join(script);
        let mode = fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_ne!(mode & 0o100, 0, "{script} is not executable (chmod +x)");
        let first_line = read(&path).lines().next().unwrap_or_default().to_owned();
        assert!(
            first_line.starts_with("#!") && first_line.contains("bash"),
            "{script} uses bash arrays, so its first line must run bash: {first_line:?}"
        );
    }
}
