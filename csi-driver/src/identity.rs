//! The CSI Identity service.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::identity_server::Identity;
use csi_proto::v1::plugin_capability::{Service, service::Type as ServiceType};
use csi_proto::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse, plugin_capability,
};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::afsroot::AfsRoot;
use crate::checks::BoundedChecks;
use crate::config::CacheManager;

/// A Probe that waits longer than this for the AFS root reports it unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct IdentityService {
    driver_name: String,
    cache_manager: CacheManager,
    serves_controller: bool,
    /// Checked by Probe when this process publishes volumes.
    afs_root: Option<AfsRoot>,
    /// One check of the AFS root at a time: probes while it hangs share its answer
    /// instead of each leaving a thread behind.
    probes: Arc<BoundedChecks<Result<(), String>>>,
}

impl IdentityService {
    pub fn new(
        driver_name: String,
        cache_manager: CacheManager,
        serves_controller: bool,
        afs_root: Option<AfsRoot>,
    ) -> Self {
        Self {
            driver_name,
            cache_manager,
            serves_controller,
            afs_root,
            probes: BoundedChecks::new(1),
        }
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
            let shown = root.path().display().to_string();
            let verdict = self
                .probes
                .run("afs-root", PROBE_TIMEOUT, move || {
                    root.check().map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|unanswered| Err(format!("AFS root {shown}: {unanswered}")));
            if let Err(reason) = verdict {
                warn!(%reason, "probe failed");
                return Err(Status::failed_precondition(reason));
            }
        }
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
