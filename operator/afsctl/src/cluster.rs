//! Connecting to the cluster the admin chose, and the few calls every command shares.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, Config};

/// Field manager of everything afsctl writes.
pub const FIELD_MANAGER: &str = "afsctl";

/// Which cluster: `--kubeconfig` (else `KUBECONFIG`, else `~/.kube/config`, else the
/// in-cluster service account) and `--context` (else the current context).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig{}: {source}", .context.as_ref().map(|c| format!(" context {c:?}")).unwrap_or_default())]
    Config {
        context: Option<String>,
        source: kube::config::KubeconfigError,
    },
    #[error("no cluster configured (set --kubeconfig, KUBECONFIG or ~/.kube/config): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build a client: {0}")]
    Client(#[from] kube::Error),
}

impl Target {
    pub async fn client(&self) -> Result<Client, ConnectError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config_error = |source| ConnectError::Config {
            context: self.context.clone(),
            source,
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|source| ConnectError::Read {
                        path: path.clone(),
                        source,
                    })?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(config_error)?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(config_error)?,
            (None, None) => Config::infer().await?,
        };
        Ok(Client::try_from(config)?)
    }

    /// Environment for the maps scripts so their `kubectl` talks to the same cluster.
    pub fn script_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(path) = &self.kubeconfig {
            env.push(("KUBECONFIG", path.display().to_string()));
        }
        if let Some(context) = &self.context {
            env.push(("KUBE_CONTEXT", context.clone()));
        }
        env
    }
}

/// Server-side applies one object of any kind, discovering its resource.
pub async fn apply_dynamic(client: &Client, object: &DynamicObject) -> Result<(), kube::Error> {
    let api = dynamic_api(client, object).await?;
    let name = object.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

/// Whether one object of any kind exists.
pub async fn exists_dynamic(client: &Client, object: &DynamicObject) -> Result<bool, kube::Error> {
    let api = dynamic_api(client, object).await?;
    let name = object.metadata.name.clone().unwrap_or_default();
    Ok(api.get_opt(&name).await?.is_some())
}

async fn dynamic_api(
    client: &Client,
    object: &DynamicObject,
) -> Result<Api<DynamicObject>, kube::Error> {
    let types = object.types.clone().unwrap_or_default();
    let gvk = GroupVersionKind::try_from(&types).map_err(|e| {
        kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(e.to_string()))
    })?;
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await?;
    Ok(match (capabilities.scope, &object.metadata.namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    })
}

/// Polls `check` every `every` until it yields a value or `timeout` passes.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() + every > deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
