//! The admin's create-maps and delete-maps scripts: they put the SR's ConfigMaps and
//! Secrets (client configuration, CellServDB, keytabs) into its namespace.

use std::io::Write;
use std::path::{Path, PathBuf};

use afs_operator::crd::SpecialResource;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::cluster::Target;
use crate::validate::{self, MapKeys};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("cannot run {script}: {source}")]
    Spawn {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error("{script} failed ({status}); fix it and run the command again: it is safe to repeat")]
    Failed {
        script: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error(
        "namespace {namespace} lacks what spec.kmod.mapVolumes references: {}; the create-maps script {} should create {}",
        .missing.join(", "),
        .script.display(),
        if .missing.len() == 1 { "it" } else { "them" }
    )]
    Missing {
        namespace: String,
        missing: Vec<String>,
        script: PathBuf,
    },
    #[error(
        "the maps in namespace {namespace} lack what the AFS client reads:\n  {}\nthe create-maps script {} should create them",
        .problems.join("\n  "),
        .script.display()
    )]
    ClientFiles {
        namespace: String,
        problems: Vec<String>,
        script: PathBuf,
    },
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Runs one maps script with the SR's variables, its output passed through.
pub fn run(
    script: &Path,
    sr: &SpecialResource,
    sr_file: &Path,
    target: &Target,
    out: &mut impl Write,
) -> Result<(), MapsError> {
    let _ = writeln!(out, "running {}", script.display());
    let output = std::process::Command::new(script)
        .env("SPECIAL_RESOURCE_FILE", sr_file)
        .env("SPECIAL_RESOURCE_NAME", sr.name_any())
        .env("SPECIAL_RESOURCE_NAMESPACE", &sr.spec.namespace)
        .envs(target.script_env())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| MapsError::Spawn {
            script: script.to_owned(),
            source,
        })?;
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
    {
        let _ = writeln!(out, "  | {line}");
    }
    if !output.status.success() {
        return Err(MapsError::Failed {
            script: script.to_owned(),
            status: output.status,
        });
    }
    Ok(())
}

/// Every ConfigMap and Secret the SR mounts exists in its namespace, and those of its
/// AFS client hold the files it reads ([`validate::client_files`]).
pub async fn check_referenced(
    client: &Client,
    sr: &SpecialResource,
    script: &Path,
) -> Result<(), MapsError> {
    let namespace = &sr.spec.namespace;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut missing = Vec::new();
    let mut present = Vec::new();
    for volume in &sr.spec.kmod.map_volumes {
        let (kind, name, found) = if let Some(source) = &volume.config_map {
            let found = config_maps.get_opt(&source.name).await?;
            (
                "ConfigMap",
                &source.name,
                found.as_ref().map(MapKeys::config_map),
            )
        } else if let Some(source) = &volume.secret {
            let found = secrets.get_opt(&source.name).await?;
            ("Secret", &source.name, found.as_ref().map(MapKeys::secret))
        } else {
            continue;
        };
        match found {
            Some(keys) => present.push(keys),
            None => missing.push(format!("{kind} {name} (mapVolumes {})", volume.name)),
        }
    }
    if !missing.is_empty() {
        return Err(MapsError::Missing {
            namespace: namespace.clone(),
            missing,
            script: script.to_owned(),
        });
    }
    let problems = validate::client_files(sr, &present);
    if !problems.is_empty() {
        return Err(MapsError::ClientFiles {
            namespace: namespace.clone(),
            problems,
            script: script.to_owned(),
        });
    }
    Ok(())
}
