//! `afsctl deploy`'s check of the maps (its step 4) against the in-memory API server of
//! the operator's tests: every map the SR mounts is in its namespace, and those of its
//! AFS client hold the files the client reads.

#![allow(clippy::unwrap_used)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use afsctl::maps::{self, MapsError};
use common::FakeApi;
use serde_json::json;

const CONFIG_MAPS: &str = "/api/v1/namespaces/afs-group-1/configmaps";

const SR: &str = r#"
apiVersion: afs.csi.auristor.com/v1alpha1
kind: SpecialResource
metadata:
  name: group-1
spec:
  namespace: afs-group-1
  nodeSelector: {afs-group: group-1}
  kmod:
    module: openafs
    version: 1.8.13
    kernelMappings:
      - regexp: '^6\.1\..*$'
        containerImage: registry.example.com/openafs-kmod-${MODULE_VERSION}:${KERNEL_FULL_VERSION}
    mapVolumes:
      - {name: etc-openafs, target: /etc/openafs, configMap: {name: etc-openafs}}
  csi: {image: registry.example.com/afs-csi, version: 1.0.0, cacheManager: openafs, allowedCells: [example.com]}
"#;

fn config_map(data: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "etc-openafs", "namespace": "afs-group-1"}, "data": data})
}

#[tokio::test]
async fn deploy_names_the_file_the_client_lacks() {
    let sr = afsctl::validate::special_resource(SR).unwrap();
    let api = FakeApi::default();
    let client = api.client();
    let script = Path::new("examples/maps/create-maps.sh");

    let error = maps::check_referenced(&client, &sr, script)
        .await
        .expect_err("no map yet");
    assert!(matches!(error, MapsError::Missing { .. }), "{error}");

    api.put(
        CONFIG_MAPS,
        config_map(json!({"CellServDB": ">example.com"})),
    );
    let error = maps::check_referenced(&client, &sr, script)
        .await
        .expect_err("no ThisCell");
    assert_eq!(
        error.to_string(),
        "the maps in namespace afs-group-1 lack what the AFS client reads:\n  \
         client: configDir /etc/openafs is ConfigMap etc-openafs, which has no key ThisCell \
         (the openafs client needs CellServDB and ThisCell)\n\
         the create-maps script examples/maps/create-maps.sh should create them"
    );

    api.put(
        CONFIG_MAPS,
        config_map(json!({"CellServDB": ">example.com", "ThisCell": "example.com"})),
    );
    maps::check_referenced(&client, &sr, script)
        .await
        .expect("the client's files are there");
}
