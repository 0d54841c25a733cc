//! A SpecialResource and what the operator builds for it, for the policy tests
//! (tests/node_policy.rs, tests/operator_policy.rs): the objects come from the
//! operator's own `objects::build`, so a change there reaches the policies' tests.

use afs_operator::crd::SpecialResource;
use afs_operator::objects::{self, Desired, Inputs};
use serde_json::json;

/// A SpecialResource `name` of the namespace `namespace`, as the operator reads it.
pub fn special_resource(name: &str, namespace: &str) -> SpecialResource {
    let spec = serde_json::from_value(json!({
        "namespace": namespace,
        "nodeSelector": {"afs-group": name},
        "kmod": {"module": "kafs", "version": "1.0.0",
            "kernelMappings": [{"regexp": ".*", "containerImage": "r/k:${KERNEL_FULL_VERSION}"}]},
        "csi": {"image": "registry.example/afs-csi", "version": "1.0.0", "allowedCells": ["example.com"]}
    }))
    .expect("the sample spec parses");
    let mut sr = SpecialResource::new(name, spec);
    sr.metadata.uid = Some("uid-1".to_owned());
    sr
}

/// Everything the operator builds for `sr` when it runs the CSI controller (so every
/// kind of account and binding is there).
pub fn desired(sr: &SpecialResource) -> Desired {
    let revision = objects::revision(&sr.spec);
    objects::build(&Inputs {
        sr,
        revision: &revision,
        kernels: &[],
        runs_controller: true,
        csi_driver_owners: &[],
    })
    .expect("the sample SR builds")
}
