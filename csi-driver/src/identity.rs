//! The CSI Identity service.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csi_proto::v1::identity_server::Identity;
use csi_proto::v1::plugin_capability::{Service, service::Type as ServiceType};
use csi_proto::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse, plugin_capability,
};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::config::CacheManager;

/// A Probe that waits longer than this for the AFS root reports it unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct IdentityService {
    pub driver_name: String,
    pub cache_manager: CacheManager,
    pub serves_controller: bool,
    /// Checked by Probe when this process publishes volumes.
    pub afs_root: Option<PathBuf>,
}

/// The AFS root is usable when it is a directory that can be listed.
fn check_afs_root(root: &Path) -> Result<(), String> {
    let mut entries =
        fs::read_dir(root).map_err(|e| format!("AFS root {}: {e}", root.display()))?;
    match entries.next() {
        Some(Err(e)) => Err(format!("AFS root {}: {e}", root.display())),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: HashMap::from([("cache-manager".to_owned(), self.cache_manager.to_string())]),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let capabilities = self
            .serves_controller
            .then(|| PluginCapability {
                r#type: Some(plugin_capability::Type::Service(Service {
                    r#type: ServiceType::ControllerService as i32,
                })),
            })
            .into_iter()
            .collect();
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        if let Some(root) = self.afs_root.clone() {
            let check = tokio::task::spawn_blocking(move || check_afs_root(&root));
            let verdict = match tokio::time::timeout(PROBE_TIMEOUT, check).await {
                Ok(Ok(verdict)) => verdict,
                Ok(Err(join)) => Err(format!("probe worker failed: {join}")),
                Err(_) => Err(format!(
                    "AFS root did not answer within {}s",
                    PROBE_TIMEOUT.as_secs()
                )),
            };
            if let Err(reason) = verdict {
                warn!(%reason, "probe failed");
                return Err(Status::failed_precondition(reason));
            }
        }
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
