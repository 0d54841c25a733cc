//! Prints the SpecialResource CRD as YAML (`deploy/crd.yaml` is this output).

use std::io::Write;

use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    let yaml = serde_norway::to_string(&afs_operator::crd::SpecialResource::crd())?;
    std::io::stdout().write_all(yaml.as_bytes())?;
    Ok(())
}
