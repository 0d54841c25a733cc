//! `afsctl deploy` and `undeploy` against the in-memory API server of the operator's
//! tests: deploy refuses a namespace or CSIDriver that is not the SR's before changing
//! anything, and undeploy deletes only a namespace deploy created (issue 12, cases 11,
//! 12 and 13).

#![allow(clippy::unwrap_used)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use afs_operator::labels::{CREATED_BY_ANNOTATION, NAMESPACE_OF_ANNOTATION};
use afsctl::cluster::Target;
use afsctl::commands::{self, CommandError, DeployOptions, UndeployOptions};
use common::FakeApi;
use serde_json::{Value, json};

const NAMESPACES: &str = "/api/v1/namespaces";
const SRS: &str = "/apis/afs.csi.auristor.com/v1alpha1/specialresources";
const CSI_DRIVERS: &str = "/apis/storage.k8s.io/v1/csidrivers";

const SR: &str = r#"
apiVersion: afs.csi.auristor.com/v1alpha1
kind: SpecialResource
metadata:
  name: group-1
spec:
  namespace: afs-group-1
  nodeSelector: {auristor.com/auristorfs-group: group-1}
  kmod:
    module: yfs
    version: 2021.5.0
    kernelMappings:
      - regexp: '^6\.1\..*$'
        containerImage: registry.example.com/auristor-kmod-${MODULE_VERSION}:${KERNEL_FULL_VERSION}
    # The AFS client's yfs-client.conf (client.configDir /etc/yfs).
    mapVolumes:
      - {name: etc-yfs, target: /etc/yfs, configMap: {name: etc-yfs}}
  csi: {image: registry.example.com/auristorfs-csi, version: 1.0.0, allowedCells: [example.com]}
"#;

struct Fixture {
    api: FakeApi,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sr.yaml"), SR).unwrap();
        for script in ["create-maps.sh", "delete-maps.sh"] {
            let path = dir.path().join(script);
            // Leaves a trace, so a test can tell whether it ran.
            std::fs::write(
                &path,
                format!("#!/bin/sh\ntouch '{}.ran'\n", path.display()),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        Self {
            api: FakeApi::default(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ran(&self, script: &str) -> bool {
        Path::new(&format!("{}.ran", self.path(script).display())).exists()
    }

    fn namespace(&self, annotations: Value) {
        self.api.put(
            NAMESPACES,
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "afs-group-1", "labels": {"team": "tenant-a"}, "annotations": annotations}}),
        );
    }

    async fn deploy(&self) -> (Result<(), CommandError>, String) {
        let options = DeployOptions {
            file: self.path("sr.yaml"),
            create_maps: self.path("create-maps.sh"),
            timeout: Duration::from_secs(1),
            operator_image: None,
        };
        let client = self.api.client();
        let mut out = Vec::new();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            commands::deploy(&client, &Target::default(), &options, &mut out),
        )
        .await
        .expect("deploy within 10 s");
        (result, String::from_utf8_lossy(&out).into_owned())
    }

    async fn undeploy(&self) -> (Result<(), CommandError>, String) {
        let options = UndeployOptions {
            file: self.path("sr.yaml"),
            delete_maps: self.path("delete-maps.sh"),
            force: false,
            timeout: Duration::from_secs(5),
        };
        let client = self.api.client();
        let mut out = Vec::new();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            commands::undeploy(&client, &Target::default(), &options, &mut out),
        )
        .await
        .expect("undeploy within 10 s");
        (result, String::from_utf8_lossy(&out).into_owned())
    }
}

/// Case 12: a namespace that existed before deploy stays; the verification does not
/// count it as left over.
#[tokio::test]
async fn undeploy_keeps_a_namespace_deploy_did_not_create() {
    for (what, annotations) in [
        ("unmarked (deploy found it there)", json!({})),
        (
            "handed over to the SR by the admin",
            json!({NAMESPACE_OF_ANNOTATION: "group-1"}),
        ),
        (
            "created by afsctl for another SR",
            json!({NAMESPACE_OF_ANNOTATION: "group-2", CREATED_BY_ANNOTATION: "afsctl"}),
        ),
    ] {
        let f = Fixture::new();
        f.namespace(annotations);
        let (result, out) = f.undeploy().await;
        result.unwrap_or_else(|e| panic!("{what}: {e}\n{out}"));
        assert!(
            f.api.get(NAMESPACES, "", "afs-group-1").is_some(),
            "{what}: kept\n{out}"
        );
        let writes = f.api.take_writes();
        assert!(
            !writes.iter().any(|w| w.contains("/namespaces/afs-group-1")),
            "{what}: {writes:?}"
        );
        assert!(out.contains("  kept: "), "{what}: {out}");
        assert!(
            out.contains("nothing of SpecialResource group-1 remains")
                && out.contains("namespace afs-group-1 kept"),
            "{what}: {out}"
        );
        assert!(f.ran("delete-maps.sh"), "the maps still go");
    }
}

/// Case 12: the namespace deploy created (its record on it) goes.
#[tokio::test]
async fn undeploy_deletes_the_namespace_deploy_created() {
    let f = Fixture::new();
    f.namespace(json!({NAMESPACE_OF_ANNOTATION: "group-1", CREATED_BY_ANNOTATION: "afsctl"}));
    let (result, out) = f.undeploy().await;
    result.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(f.api.get(NAMESPACES, "", "afs-group-1").is_none(), "{out}");
    assert!(out.contains("no namespace afs-group-1"), "{out}");
}

/// A kept namespace still labelled privileged by the operator is a leftover: the
/// operator takes its labels back when the SR goes.
#[tokio::test]
async fn undeploy_reports_the_operators_labels_left_on_a_kept_namespace() {
    let f = Fixture::new();
    f.api.put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "afs-group-1",
            "annotations": {NAMESPACE_OF_ANNOTATION: "group-1"},
            "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}),
    );
    let (result, out) = f.undeploy().await;
    let error = result.expect_err("a leftover");
    assert!(
        error.to_string().contains(
            "Namespace afs-group-1 still carries label pod-security.kubernetes.io/enforce"
        ),
        "{error}\n{out}"
    );
}

/// Cases 11 and 13: deploy refuses a namespace or CSIDriver that is not the SR's, and
/// a changed namespace, before it changes anything (no write, no maps script).
#[tokio::test]
async fn deploy_refuses_what_is_not_the_srs_before_changing_anything() {
    let f = Fixture::new();
    f.namespace(json!({}));
    let (result, out) = f.deploy().await;
    let error = result.expect_err("refused");
    assert!(
        matches!(&error, CommandError::NotOwned { .. }),
        "{error}\n{out}"
    );
    assert!(
        error
            .to_string()
            .contains("namespace afs-group-1 already exists and is not this SpecialResource's"),
        "{error}"
    );
    assert_eq!(f.api.take_writes(), Vec::<String>::new());
    assert!(!f.ran("create-maps.sh"));

    let f = Fixture::new();
    f.api.put(
        CSI_DRIVERS,
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
            "metadata": {"name": "auristorfs.csi.auristor.com"}, "spec": {}}),
    );
    let (result, _) = f.deploy().await;
    let error = result.expect_err("refused");
    assert!(
        error
            .to_string()
            .contains("CSIDriver auristorfs.csi.auristor.com already exists and is not managed by SpecialResources"),
        "{error}"
    );
    assert_eq!(f.api.take_writes(), Vec::<String>::new());

    // The SR is deployed with another namespace: the API server would refuse the
    // change after deploy made the new namespace and ran the maps script.
    let f = Fixture::new();
    let mut live: Value = serde_norway::from_str(SR).unwrap();
    live["spec"]["namespace"] = json!("afs-elsewhere");
    f.api.put(SRS, live);
    let (result, _) = f.deploy().await;
    let error = result.expect_err("refused");
    assert!(
        error.to_string().contains("namespace is immutable"),
        "{error}"
    );
    assert_eq!(f.api.take_writes(), Vec::<String>::new());
    assert!(!f.ran("create-maps.sh"));
}
