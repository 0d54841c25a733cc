//! `afsctl validate` refuses what the API server refuses, naming the field and the rule.

use afsctl::validate::InvalidSpecialResource;
use serde_json::{Value, json};

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

/// The errors `afsctl validate` reports: the CRD's OpenAPI schema, then the CEL rules.
fn admission_errors(object: &Value) -> Vec<String> {
    match afsctl::validate::special_resource_value(object) {
        Ok(_) => Vec::new(),
        Err(InvalidSpecialResource::Rules(errors)) => errors,
        Err(other) => vec![other.to_string()],
    }
}

#[test]
fn a_valid_spec_is_admitted_and_defaulted() {
    assert_eq!(admission_errors(&valid()), Vec::<String>::new());
    let sr = afsctl::validate::special_resource_value(&valid()).expect("admitted");
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
            "/spec/kmod/mapVolume",
            json!([]),
            "/spec/kmod/mapVolume: unknown field",
        ),
        (
            "/spec/rollout/maxParallels",
            json!(5),
            "/spec/rollout/maxParallels: unknown field",
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

#[test]
fn files_that_are_not_special_resources_are_refused() {
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
    let error = afsctl::validate::special_resource(yaml).expect_err("refused");
    assert!(
        error.to_string().contains("found ConfigMap of v1"),
        "{error}"
    );
    let mut nameless = valid();
    nameless["metadata"] = json!({});
    let error = afsctl::validate::special_resource_value(&nameless).expect_err("refused");
    assert!(error.to_string().contains("metadata.name"), "{error}");
    let error = afsctl::validate::special_resource("spec: [").expect_err("refused");
    assert!(error.to_string().starts_with("not YAML"), "{error}");
}
