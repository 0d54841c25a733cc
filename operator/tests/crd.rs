//! The committed CRD is the types' output, and its rules refuse bad specs naming the field.

use afs_operator::crd::SpecialResource;
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn crd_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crd.yaml")
}

#[test]
fn committed_crd_matches_the_types() {
    let generated = serde_norway::to_string(&SpecialResource::crd()).expect("crd serializes");
    let committed = std::fs::read_to_string(crd_path()).expect("deploy/crd.yaml exists");
    assert!(
        generated == committed,
        "deploy/crd.yaml drifted from operator/src/crd.rs: run `cargo run -p afs-operator --bin crdgen > deploy/crd.yaml`"
    );
}

fn valid() -> Value {
    json!({
        "apiVersion": "afs.csi.auristor.com/v1alpha1",
        "kind": "SpecialResource",
        "metadata": {"name": "group-1"},
        "spec": {
            "namespace": "afs-group-1",
            "nodeSelector": {"auristor.com/auristorfs-group": "group-1"},
            "kmod": {
                "module": "kafs",
                "version": "1.2.3",
                "kernelMappings": [
                    {"literal": "6.1.0-56-amd64", "containerImage": "registry.example/kmod-${MODULE_VERSION}:${KERNEL_FULL_VERSION}"},
                    {"regexp": "6\\.1\\..*", "containerImage": "registry.example/kmod:${KERNEL_XYZ}"}
                ],
                "mapVolumes": [
                    {"name": "etc-yfs", "target": "/etc/yfs", "configMap": {"name": "etc-yfs"}},
                    {"name": "yfs-cache", "target": "/var/cache/yfs", "hostPath": {"path": "/var/cache/yfs"}}
                ]
            },
            "csi": {
                "image": "registry.example/afs-csi",
                "version": "1.0.0",
                "cacheManager": "kafs",
                "storageClass": {"name": "afs", "parameters": {"mount-type": "volume"}}
            },
            "rollout": {"maxUnavailable": "25%", "maxParallel": 2}
        }
    })
}

/// Both admission layers: the OpenAPI schema (patterns, enums, bounds) and the CEL rules.
fn admission_errors(object: &Value) -> Vec<String> {
    let crd = serde_json::to_value(SpecialResource::crd()).expect("crd json");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let validator = jsonschema::validator_for(schema).expect("schema compiles");
    let mut errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        let sr: SpecialResource = serde_json::from_value(object.clone()).expect("parses");
        if let Err(e) = sr.validate_cel() {
            errors.push(e.to_string());
        }
    }
    errors
}

#[test]
fn a_valid_spec_is_admitted_and_defaulted() {
    assert_eq!(admission_errors(&valid()), Vec::<String>::new());
    let sr: SpecialResource = serde_json::from_value(valid()).expect("parses");
    assert_eq!(sr.spec.csi.driver_name, "auristorfs.csi.auristor.com");
    assert_eq!(sr.spec.csi.afs_root, "/afs");
    assert_eq!(sr.spec.kmod.in_use_filesystems, ["afs"]);
    assert_eq!(sr.spec.rollout.phase_timeouts.validation_seconds, 600);
}

#[test]
fn bad_specs_are_refused_naming_the_field() {
    let cases: &[(&str, Value, &str)] = &[
        ("/spec/namespace", json!("Bad_NS"), "/spec/namespace"),
        (
            "/spec/nodeSelector",
            json!({}),
            "nodeSelector must name at least one label",
        ),
        ("/spec/kmod/version", json!("v1.2"), "/spec/kmod/version"),
        ("/spec/kmod/module", json!("kafs; rm"), "/spec/kmod/module"),
        (
            "/spec/kmod/kernelMappings",
            json!([]),
            "/spec/kmod/kernelMappings",
        ),
        (
            "/spec/kmod/kernelMappings/0/regexp",
            json!(".*"),
            "exactly one of literal, regexp, semver",
        ),
        (
            "/spec/kmod/kernelMappings/0/containerImage",
            json!("r/k:${KERNEL}"),
            "containerImage: only ${KERNEL_FULL_VERSION}",
        ),
        (
            "/spec/kmod/mapVolumes/0/secret",
            json!({"name": "keytab"}),
            "exactly one of hostPath, configMap, secret",
        ),
        (
            "/spec/kmod/mapVolumes/1/name",
            json!("etc-yfs"),
            "mapVolumes[].name must be unique",
        ),
        (
            "/spec/kmod/mapVolumes/0/target",
            json!("/etc/../root"),
            "must not contain '..'",
        ),
        (
            "/spec/kmod/mapVolumes/0/target",
            json!("etc/yfs"),
            "/spec/kmod/mapVolumes/0/target",
        ),
        (
            "/spec/kmod/parameters",
            json!(["=x"]),
            "/spec/kmod/parameters/0",
        ),
        (
            "/spec/csi/cacheManager",
            json!("nfs"),
            "/spec/csi/cacheManager",
        ),
        (
            "/spec/csi/image",
            json!("Registry/CSI:latest"),
            "/spec/csi/image",
        ),
        (
            "/spec/csi/driverName",
            json!("-bad-"),
            "/spec/csi/driverName",
        ),
        (
            "/spec/csi/storageClass/parameters/mount-type",
            json!("cell"),
            "mount-type must be volume or root",
        ),
        (
            "/spec/rollout/maxUnavailable",
            json!(0),
            "maxUnavailable must be a count >= 1 or a percent",
        ),
        (
            "/spec/rollout/maxUnavailable",
            json!("0%"),
            "maxUnavailable must be a count >= 1 or a percent",
        ),
        (
            "/spec/rollout/maxUnavailable",
            json!("half"),
            "maxUnavailable must be a count >= 1 or a percent",
        ),
        (
            "/spec/rollout/maxParallel",
            json!(0),
            "/spec/rollout/maxParallel",
        ),
        (
            "/spec/rollout/eviction",
            json!({"timeoutSeconds": 0}),
            "/spec/rollout/eviction/timeoutSeconds",
        ),
    ];
    for (pointer, value, expected) in cases {
        let mut object = valid();
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        object
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{parent} exists"))
            .insert(key.to_owned(), value.clone());
        let errors = admission_errors(&object);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{pointer} = {value}: expected an error containing {expected:?}, got {errors:?}"
        );
    }
}
