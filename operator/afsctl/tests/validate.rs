//! `afsctl validate` refuses what the API server refuses, naming the field and the rule.

use afsctl::validate::{InvalidSpecialResource, MapKeys, client_files};
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
                    {"name": "yfs-cache", "target": "/var/cache/yfs", "hostPath": {"path": "/var/cache/yfs"}},
                    {"name": "etc-openafs", "target": "/etc/openafs", "configMap": {"name": "etc-openafs"}}
                ]
            },
            "csi": {
                "image": "registry.example/afs-csi",
                "version": "1.0.0",
                "cacheManager": "kafs",
                "allowedCells": ["example.com"],
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
    check_refusals(cases);
}

/// Each case: the field (a JSON pointer) set to the value gets an error containing the
/// text.
fn check_refusals(cases: &[(&str, Value, &str)]) {
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

/// Case 11: the namespace of a group is its own, never the cluster's or the operator's.
#[test]
fn shared_and_system_namespaces_are_refused() {
    let pod_security = "namespace must not be default";
    let kube = "namespace must not be a kube-* namespace";
    check_refusals(&[
        ("/spec/namespace", json!("default"), pod_security),
        ("/spec/namespace", json!("kube-system"), kube),
        ("/spec/namespace", json!("kube-public"), kube),
        ("/spec/namespace", json!("kube-node-lease"), kube),
        ("/spec/namespace", json!("kube-anything"), kube),
        (
            "/spec/namespace",
            json!("afs-system"),
            "namespace must not be afs-system, the operator's own namespace",
        ),
    ]);
    for fine in ["kubeflow-afs", "afs-default", "tenant-a"] {
        let mut object = valid();
        object["spec"]["namespace"] = json!(fine);
        assert_eq!(admission_errors(&object), Vec::<String>::new(), "{fine}");
    }
}

/// Cases 11 and 13: `spec.namespace` and `spec.csi.driverName` cannot change once the
/// SR exists (the API server's transition rules, evaluated against the old object).
#[test]
fn namespace_and_driver_name_are_immutable() {
    let old = afsctl::validate::special_resource_value(&valid()).expect("admitted");
    let update = |pointer: &str, value: Value| {
        let mut object = valid();
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        object
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("parent")
            .insert(key.to_owned(), value);
        let new = afsctl::validate::special_resource_value(&object).expect("admitted alone");
        afsctl::validate::update(&new, &old)
    };
    let error = update("/spec/namespace", json!("afs-elsewhere")).expect_err("refused");
    assert!(
        error.to_string().contains("namespace is immutable"),
        "{error}"
    );
    let error =
        update("/spec/csi/driverName", json!("other.csi.example.com")).expect_err("refused");
    assert!(
        error.to_string().contains("csi.driverName is immutable"),
        "{error}"
    );
    // Anything else may change.
    update("/spec/csi/version", json!("1.1.0")).expect("a new driver version");
    update(
        "/spec/csi/allowedCells",
        json!(["example.com", "example.org"]),
    )
    .expect("another cell");
}

/// The node plugin's security settings: cells are named (or `*` alone), and every
/// StorageClass and mount option of the SR is one the driver accepts.
#[test]
fn csi_security_settings_are_checked_at_admission() {
    let mut missing = valid();
    missing["spec"]["csi"]
        .as_object_mut()
        .expect("csi")
        .remove("allowedCells");
    let errors = admission_errors(&missing);
    assert!(
        errors.iter().any(|e| e.contains("allowedCells")),
        "allowedCells is required: {errors:?}"
    );
    check_refusals(&[
        (
            "/spec/csi/allowedCells",
            json!([]),
            "/spec/csi/allowedCells",
        ),
        (
            "/spec/csi/allowedCells",
            json!(["*", "example.com"]),
            "'*' (any cell) must be the only entry",
        ),
        (
            "/spec/csi/allowedCells",
            json!(["example..com"]),
            "/spec/csi/allowedCells/0",
        ),
        (
            "/spec/csi/allowedCells",
            json!(["a".repeat(65)]),
            "/spec/csi/allowedCells/0",
        ),
        (
            "/spec/csi/storageClass",
            json!({"name": "afs", "parameters": {"mount-type": "volume", "cell-name": "example.org", "volume-name": "v"}}),
            "csi.storageClass.parameters.cell-name example.org is not in csi.allowedCells",
        ),
        (
            "/spec/csi/storageClass",
            json!({"name": "afs", "parameters": {"mount-type": "root"}}),
            "mount-type root needs csi.allowRootMounts: true",
        ),
        (
            "/spec/csi/mountOptions",
            json!(["ro", "nosuid", "uid=0"]),
            "csi.mountOptions: nosuid is not supported: the driver applies only ro, noexec and context=<SELinux context>",
        ),
        (
            "/spec/csi/mountOptions",
            json!(["ro", "nosuid", "uid=0"]),
            "csi.mountOptions: uid=0 is not supported",
        ),
        (
            "/spec/csi/mountOptions",
            json!(["context="]),
            "csi.mountOptions: context= is not supported",
        ),
        (
            "/spec/csi/kubeletDir",
            json!("var/lib/kubelet"),
            "/spec/csi/kubeletDir",
        ),
        (
            "/spec/csi/kubeletDir",
            json!("/var/lib/../kubelet"),
            "csi.kubeletDir must not contain '..'",
        ),
    ]);
    // context= only where each volume is its own afs mount (kafs).
    for cache_manager in ["auristor", "openafs"] {
        let mut object = valid();
        object["spec"]["csi"]["cacheManager"] = json!(cache_manager);
        object["spec"]["csi"]["mountOptions"] =
            json!(["context=system_u:object_r:container_file_t:s0"]);
        let errors = admission_errors(&object);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("context= needs cacheManager kafs")
                    && e.contains("SELinux label of the AFS root's own mount")),
            "{cache_manager}: {errors:?}"
        );
    }

    let admitted = |change: &dyn Fn(&mut Value)| {
        let mut object = valid();
        change(&mut object);
        assert_eq!(admission_errors(&object), Vec::<String>::new(), "{object}");
        afsctl::validate::special_resource_value(&object).expect("admitted")
    };
    let sr = admitted(&|o| {
        o["spec"]["csi"]["mountOptions"] = json!([
            "ro",
            "noexec",
            "context=system_u:object_r:container_file_t:s0"
        ]);
    });
    assert!(!sr.spec.csi.allow_root_mounts && !sr.spec.csi.allow_ephemeral);
    assert_eq!(sr.spec.csi.kubelet_dir, "/var/lib/kubelet");
    admitted(&|o| {
        o["spec"]["csi"]["allowedCells"] = json!(["*"]);
        o["spec"]["csi"]["storageClass"]["parameters"] =
            json!({"mount-type": "volume", "cell-name": "example.org", "volume-name": "v"});
    });
    admitted(&|o| {
        o["spec"]["csi"]["allowRootMounts"] = json!(true);
        o["spec"]["csi"]["storageClass"]["parameters"] = json!({"mount-type": "root"});
    });
    admitted(&|o| {
        o["spec"]["csi"]["storageClass"]["parameters"] =
            json!({"mount-type": "volume", "cell-name": "example.com", "volume-name": "v"});
        o["spec"]["csi"]["kubeletDir"] = json!("/data/kubelet");
        o["spec"]["csi"]["allowEphemeral"] = json!(true);
    });
}

/// `valid()` with `change` applied: its admission errors.
fn errors_with(change: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut object = valid();
    change(&mut object);
    admission_errors(&object)
}

#[track_caller]
fn assert_refused_with(errors: &[String], expected: &str) {
    assert!(
        errors.iter().any(|e| e.contains(expected)),
        "expected an error containing {expected:?}, got {errors:?}"
    );
}

/// The AFS client's directories are mounted (its configuration from a map, a disk
/// cache from the node), and its afsd options leave kmod-manager's own alone.
#[test]
fn client_settings_are_checked_at_admission() {
    let no_openafs_map = |o: &mut Value| {
        o["spec"]["kmod"]["mapVolumes"]
            .as_array_mut()
            .expect("mapVolumes")
            .retain(|v| v["target"] != "/etc/openafs");
    };
    for manager in ["kafs", "openafs"] {
        let errors = errors_with(|o| {
            no_openafs_map(o);
            o["spec"]["csi"]["cacheManager"] = json!(manager);
        });
        assert_refused_with(
            &errors,
            &format!(
                "client.configDir /etc/openafs is not the target of any kmod.mapVolumes entry: the {manager} client reads CellServDB and ThisCell from it; map a ConfigMap there"
            ),
        );
    }
    let errors = errors_with(|o| {
        o["spec"]["csi"]["cacheManager"] = json!("auristor");
        o["spec"]["client"] = json!({"configDir": "/etc/yfs-client"});
    });
    assert_refused_with(
        &errors,
        "client.configDir /etc/yfs-client is not the target of any kmod.mapVolumes entry: the auristor client reads yfs-client.conf from it; map a ConfigMap there",
    );
    assert_refused_with(
        &errors_with(|o| o["spec"]["client"] = json!({"configDir": "/etc/../etc/openafs"})),
        "client.configDir must not contain '..'",
    );

    // A disk cache lives on the node: a hostPath map, not a ConfigMap.
    let cache = |directory: &str| {
        errors_with(|o| {
            o["spec"]["csi"]["cacheManager"] = json!("openafs");
            o["spec"]["client"] = json!({"cache": {"directory": directory}});
        })
    };
    let message = |d: &str| {
        format!("client.cache.directory {d} is not the target of a hostPath kmod.mapVolumes entry")
    };
    assert_refused_with(&cache("/var/cache/openafs"), &message("/var/cache/openafs"));
    assert_refused_with(&cache("/etc/yfs"), &message("/etc/yfs"));
    assert_eq!(cache("/var/cache/yfs"), Vec::<String>::new());
    for size in [0, 1023, 1_073_741_825_u64] {
        assert_refused_with(
            &errors_with(|o| o["spec"]["client"] = json!({"cache": {"sizeKiB": size}})),
            "/spec/client/cache/sizeKiB",
        );
    }

    // The cell database directory is auristor's, and mounted.
    let errors = errors_with(|o| o["spec"]["client"] = json!({"cellDatabaseDir": "/etc/yfs"}));
    assert_refused_with(
        &errors,
        "client.cellDatabaseDir needs cacheManager auristor",
    );
    let errors = errors_with(|o| {
        o["spec"]["csi"]["cacheManager"] = json!("auristor");
        o["spec"]["client"] = json!({"cellDatabaseDir": "/usr/share/yfs"});
    });
    assert_refused_with(
        &errors,
        "client.cellDatabaseDir /usr/share/yfs is not the target of any kmod.mapVolumes entry: the auristor client reads cellservdb.conf from it; map a ConfigMap there",
    );
    let errors = errors_with(|o| {
        o["spec"]["csi"]["cacheManager"] = json!("auristor");
        o["spec"]["client"] = json!({"cellDatabaseDir": "/etc/openafs"});
    });
    assert_eq!(errors, Vec::<String>::new());

    // afsd options: none with kafs; never one kmod-manager sets (nor an abbreviation).
    assert_refused_with(
        &errors_with(|o| o["spec"]["client"] = json!({"afsdOptions": ["-dynroot"]})),
        "client.afsdOptions needs cacheManager auristor or openafs",
    );
    let afsd = |options: Value| {
        errors_with(|o| {
            o["spec"]["csi"]["cacheManager"] = json!("openafs");
            o["spec"]["client"] = json!({"afsdOptions": options});
        })
    };
    for (option, given) in [
        ("-mountdir", json!(["-dynroot", "-mountdir", "/afs2"])),
        ("-blocks", json!(["-blocks", "5000"])),
        ("-memcache", json!(["-memcache"])),
        ("-mem", json!(["-mem"])),
        ("-shut", json!(["-fakestat", "-shut"])),
        ("-nomount", json!(["-nomount"])),
        ("-confdir", json!(["-confdir", "/etc"])),
        ("-cachedir", json!(["-cachedir", "/tmp"])),
    ] {
        assert_refused_with(
            &afsd(given),
            &format!("client.afsdOptions: {option} is set by kmod-manager itself"),
        );
    }
    for bad in [
        json!(["--mountdir"]),
        json!(["-dynroot;reboot"]),
        json!(["a b"]),
    ] {
        assert_refused_with(&afsd(bad), "/spec/client/afsdOptions/0");
    }
    assert_refused_with(
        &afsd(json!(vec!["-dynroot"; 33])),
        "/spec/client/afsdOptions",
    );
    assert_eq!(
        afsd(json!(["-dynroot", "-fakestat", "-stat", "2000", "-afsdb"])),
        Vec::<String>::new()
    );
}

/// Settings written at their defaults are fields like any other (the check for unknown
/// fields reads the schema, not the types' JSON, which leaves defaults out).
#[test]
fn fields_written_at_their_defaults_are_known() {
    let mut object = valid();
    object["spec"]["client"] = json!({"cache": {"sizeKiB": 100000}, "afsdOptions": []});
    object["spec"]["csi"]["kubeletDir"] = json!("/var/lib/kubelet");
    object["spec"]["csi"]["allowRootMounts"] = json!(false);
    assert_eq!(admission_errors(&object), Vec::<String>::new());
    let sr = afsctl::validate::special_resource_value(&object).expect("admitted");
    assert!(sr.spec.client.is_default());
    object["spec"]["client"]["cache"]["sizeKB"] = json!(5);
    assert_refused_with(
        &admission_errors(&object),
        "/spec/client/cache/sizeKB: unknown field",
    );
}

/// `valid()` with `change`, admitted.
fn admitted_with(change: impl FnOnce(&mut Value)) -> afs_operator::crd::SpecialResource {
    let mut object = valid();
    change(&mut object);
    afsctl::validate::special_resource_value(&object).expect("admitted")
}

fn maps(yaml: &str) -> Vec<MapKeys> {
    MapKeys::from_yaml(yaml).expect("maps")
}

/// With the maps it mounts at hand, `afsctl validate --maps` names the files the AFS
/// client reads that they lack.
#[test]
fn the_maps_of_the_client_hold_the_files_it_reads() {
    let kafs = admitted_with(|_| {});
    let openafs = admitted_with(|o| o["spec"]["csi"]["cacheManager"] = json!("openafs"));
    let etc_openafs = |keys: &str| {
        maps(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: etc-openafs}}\ndata: {{{keys}}}\n"
        ))
    };
    assert_eq!(
        client_files(
            &openafs,
            &etc_openafs("CellServDB: x, ThisCell: example.com")
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        client_files(&openafs, &etc_openafs("CellServDB: x")),
        [
            "client: configDir /etc/openafs is ConfigMap etc-openafs, which has no key ThisCell (the openafs client needs CellServDB and ThisCell)"
        ]
    );
    assert_eq!(
        client_files(&kafs, &etc_openafs("cellservdb.conf: x")),
        [
            "client: configDir /etc/openafs is ConfigMap etc-openafs, which has no keys CellServDB, ThisCell (the kafs client needs CellServDB and ThisCell)"
        ]
    );
    assert_eq!(
        client_files(
            &kafs,
            &maps("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n")
        ),
        [
            "client: configDir /etc/openafs is ConfigMap etc-openafs, which is not among the maps given"
        ]
    );

    // auristor: yfs-client.conf in configDir, cellservdb.conf there or in
    // cellDatabaseDir; a Secret's keys count too, a host path is not checked.
    let auristor = |client: Value| {
        admitted_with(|o| {
            o["spec"]["csi"]["cacheManager"] = json!("auristor");
            o["spec"]["kmod"]["mapVolumes"]
                .as_array_mut()
                .expect("mapVolumes")
                .extend([
                    json!({"name": "usr-share-yfs", "target": "/usr/share/yfs", "secret": {"name": "usr-share-yfs"}}),
                    json!({"name": "host-yfs", "target": "/opt/yfs", "hostPath": {"path": "/opt/yfs"}}),
                ]);
            o["spec"]["client"] = client;
        })
    };
    let given = maps(
        "apiVersion: v1\nkind: List\nitems:\n\
         - {apiVersion: v1, kind: ConfigMap, metadata: {name: etc-yfs}, data: {yfs-client.conf: x}}\n\
         - {apiVersion: v1, kind: Secret, metadata: {name: usr-share-yfs}, stringData: {cellservdb.conf: x}}\n",
    );
    assert_eq!(
        client_files(
            &auristor(json!({"cellDatabaseDir": "/usr/share/yfs"})),
            &given
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        client_files(&auristor(json!({})), &given),
        [
            "client: configDir /etc/yfs is ConfigMap etc-yfs, which has no key cellservdb.conf (the auristor client needs yfs-client.conf in configDir, and cellservdb.conf in configDir or cellDatabaseDir)"
        ]
    );
    let no_database = maps(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: etc-yfs}\ndata: {yfs-client.conf: x}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: usr-share-yfs}\ndata: {keytab: eA==}\n",
    );
    assert_eq!(
        client_files(
            &auristor(json!({"cellDatabaseDir": "/usr/share/yfs"})),
            &no_database
        ),
        [
            "client: cellDatabaseDir /usr/share/yfs is Secret usr-share-yfs, which has no key cellservdb.conf, and configDir /etc/yfs has none either (the auristor client needs yfs-client.conf in configDir, and cellservdb.conf in configDir or cellDatabaseDir)"
        ]
    );
    assert_eq!(
        client_files(&auristor(json!({"configDir": "/opt/yfs"})), &[]),
        Vec::<String>::new(),
        "a host directory is the node's"
    );
}

/// `afsctl validate FILE --maps MAPS...`: the file admitted, then the client's files
/// looked for in the maps given.
#[test]
fn validate_with_maps_files_names_what_the_client_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sr = dir.path().join("sr.yaml");
    std::fs::write(&sr, serde_norway::to_string(&valid()).expect("yaml")).expect("write");
    let maps = dir.path().join("maps.yaml");
    std::fs::write(
        &maps,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: etc-openafs}\ndata: {ThisCell: example.com}\n",
    )
    .expect("write");

    afsctl::commands::validate(&sr, &[]).expect("without maps: the file alone");
    let error =
        afsctl::commands::validate(&sr, std::slice::from_ref(&maps)).expect_err("no CellServDB");
    assert_eq!(
        error.to_string(),
        format!(
            "SpecialResource file {}: the maps given lack what the AFS client reads:\n  \
             client: configDir /etc/openafs is ConfigMap etc-openafs, which has no key CellServDB \
             (the kafs client needs CellServDB and ThisCell)",
            sr.display()
        )
    );
    std::fs::write(&maps, "kind: ConfigMap\nmetadata: [").expect("write");
    let error = afsctl::commands::validate(&sr, std::slice::from_ref(&maps)).expect_err("not YAML");
    assert!(error.to_string().starts_with("maps file "), "{error}");
}
