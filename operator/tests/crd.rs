//! The committed CRD is the types' output (its rules are tested through `afsctl validate`).

use afs_operator::crd::SpecialResource;
use kube::CustomResourceExt;

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
