//! The operator's own installation: the CRD (from the Rust types) and deploy/'s
//! manifests (namespace, RBAC, Deployment), the same objects `kubectl apply -k deploy/`
//! creates.

use std::io::Write;

use afs_operator::crd::SpecialResource;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde::Deserialize;

use crate::cluster::{apply_dynamic, exists_dynamic, poll};

/// deploy/'s manifests, in the order they must be applied.
const MANIFESTS: [(&str, &str); 3] = [
    (
        "deploy/namespace.yaml",
        include_str!("../../../deploy/namespace.yaml"),
    ),
    (
        "deploy/rbac.yaml",
        include_str!("../../../deploy/rbac.yaml"),
    ),
    (
        "deploy/operator.yaml",
        include_str!("../../../deploy/operator.yaml"),
    ),
];
pub const OPERATOR_NAMESPACE: &str = "afs-system";
pub const OPERATOR_DEPLOYMENT: &str = "afs-operator";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{file} is not a valid manifest: {source}")]
    Manifest {
        file: &'static str,
        source: serde_norway::Error,
    },
    #[error("the generated CRD does not serialize: {0}")]
    Crd(serde_json::Error),
    #[error("installing {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "the CRD {0} was created but is not Established after 60s; check `kubectl get crd {0} -o yaml`"
    )]
    NotEstablished(String),
}

/// Every object of the installation, the CRD first, with the operator image replaced
/// when one is given.
pub fn objects(operator_image: Option<&str>) -> Result<Vec<DynamicObject>, InstallError> {
    let crd = serde_json::to_value(SpecialResource::crd()).and_then(serde_json::from_value);
    let mut objects: Vec<DynamicObject> = vec![crd.map_err(InstallError::Crd)?];
    for (file, text) in MANIFESTS {
        for document in serde_norway::Deserializer::from_str(text) {
            let object = DynamicObject::deserialize(document)
                .map_err(|source| InstallError::Manifest { file, source })?;
            objects.push(object);
        }
    }
    if let Some(image) = operator_image {
        for object in &mut objects {
            if object
                .types
                .as_ref()
                .is_some_and(|t| t.kind == "Deployment")
                && let Some(containers) =
                    object.data["spec"]["template"]["spec"]["containers"].as_array_mut()
            {
                for container in containers {
                    container["image"] = image.into();
                }
            }
        }
    }
    Ok(objects)
}

/// Applies the objects that are missing (all of them with `upgrade`) and waits for the
/// CRD to be served.
pub async fn ensure(
    client: &Client,
    operator_image: Option<&str>,
    upgrade: bool,
    out: &mut impl Write,
) -> Result<(), InstallError> {
    for object in objects(operator_image)? {
        let kind = object
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let name = object.name_any();
        let apply_error = |source| InstallError::Apply {
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        let present = exists_dynamic(client, &object).await.map_err(apply_error)?;
        if present && !upgrade {
            let _ = writeln!(out, "  {kind} {name}: present");
            continue;
        }
        apply_dynamic(client, &object).await.map_err(apply_error)?;
        let _ = writeln!(
            out,
            "  {kind} {name}: {}",
            if present { "updated" } else { "created" }
        );
    }
    let crd_name = SpecialResource::crd_name();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let established = poll(
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(500),
        || async {
            let crd = crds.get_opt(crd_name).await.ok().flatten()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    established.ok_or_else(|| InstallError::NotEstablished(crd_name.to_owned()))
}

/// Why the operator is not running, if it is not.
pub async fn operator_problem(client: &Client) -> Option<String> {
    let api = Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let hint =
        format!("see `kubectl -n {OPERATOR_NAMESPACE} describe deployment {OPERATOR_DEPLOYMENT}`");
    match api.get_opt(OPERATOR_DEPLOYMENT).await {
        Ok(Some(deployment)) => {
            let available = deployment
                .status
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            (available == 0).then(|| {
                format!("the operator Deployment {OPERATOR_NAMESPACE}/{OPERATOR_DEPLOYMENT} has no available replica; {hint}")
            })
        }
        Ok(None) => Some(format!(
            "the operator is not installed: Deployment {OPERATOR_NAMESPACE}/{OPERATOR_DEPLOYMENT} is missing (run `afsctl install`)"
        )),
        Err(e) => Some(format!("cannot read the operator Deployment: {e}")),
    }
}
