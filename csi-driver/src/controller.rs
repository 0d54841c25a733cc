//! The CSI Controller service. AFS volumes are made by AFS administrators, not
//! by this driver: CreateVolume only validates the StorageClass parameters and
//! hands them to the node in `volume_context`; DeleteVolume forgets, never
//! destroys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::controller_service_capability::{Rpc, rpc::Type as RpcType};
use csi_proto::v1::validate_volume_capabilities_response::Confirmed;
use csi_proto::v1::*;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::capability;
use crate::volume::{self, InvalidField};

const VOLUME_ID_PREFIX: &str = "afs-";
const VOLUME_ID_HEX: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("volume {name:?} already exists with other parameters (as {existing}); use a new name")]
    NameTaken { name: String, existing: String },
    #[error("volume {0:?} was not created by this driver")]
    UnknownVolume(String),
    #[error("{0} is not supported by this driver")]
    Unsupported(&'static str),
}

impl From<ControllerError> for Status {
    fn from(error: ControllerError) -> Self {
        let message = error.to_string();
        match error {
            ControllerError::Invalid(_) => Status::invalid_argument(message),
            ControllerError::NameTaken { .. } => Status::already_exists(message),
            ControllerError::UnknownVolume(_) => Status::not_found(message),
            ControllerError::Unsupported(_) => Status::unimplemented(message),
        }
    }
}

/// The volume id for a name and its parameters: the same pair always gives
/// the same id, so a restarted controller answers retries identically.
pub fn volume_id(name: &str, parameters: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = parameters.iter().collect();
    let mut hash = Sha256::new();
    hash.update(name.as_bytes());
    for (key, value) in sorted {
        hash.update([0]);
        hash.update(key.as_bytes());
        hash.update([0]);
        hash.update(value.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{VOLUME_ID_PREFIX}{}", &hex[..VOLUME_ID_HEX])
}

fn is_driver_volume_id(id: &str) -> bool {
    id.strip_prefix(VOLUME_ID_PREFIX).is_some_and(|hex| {
        hex.len() == VOLUME_ID_HEX && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[derive(Debug, Default)]
pub struct ControllerService {
    /// Names created during this process's life, to refuse a name reused
    /// with other parameters. Ids stay deterministic without it.
    created: Mutex<HashMap<String, String>>,
}

fn check_capabilities(capabilities: &[VolumeCapability]) -> Result<(), InvalidField> {
    if capabilities.is_empty() {
        return Err(InvalidField::new(
            "volume_capabilities",
            "at least one is required",
        ));
    }
    for (i, capability) in capabilities.iter().enumerate() {
        capability::check(&format!("volume_capabilities[{i}]"), capability)?;
    }
    Ok(())
}

fn create(
    created: &Mutex<HashMap<String, String>>,
    request: &CreateVolumeRequest,
) -> Result<Volume, ControllerError> {
    if request.name.is_empty() {
        return Err(InvalidField::new("name", "required").into());
    }
    check_capabilities(&request.volume_capabilities)?;
    if request.volume_content_source.is_some() {
        return Err(InvalidField::new(
            "volume_content_source",
            "AFS volumes cannot be created from snapshots or clones",
        )
        .into());
    }
    if !request.mutable_parameters.is_empty() {
        return Err(InvalidField::new(
            "mutable_parameters",
            "volume modification is not supported",
        )
        .into());
    }
    let (_, unknown) = volume::parse_attributes(&request.parameters)?;
    if !unknown.is_empty() {
        warn!(name = %request.name, ?unknown, "ignoring unknown parameters");
    }
    let id = volume_id(&request.name, &request.parameters);
    let mut created = created.lock().unwrap_or_else(|poison| poison.into_inner());
    match created.get(&request.name) {
        Some(existing) if *existing != id => {
            return Err(ControllerError::NameTaken {
                name: request.name.clone(),
                existing: existing.clone(),
            });
        }
        Some(_) => {}
        None => {
            created.insert(request.name.clone(), id.clone());
        }
    }
    Ok(Volume {
        capacity_bytes: 0,
        volume_id: id,
        volume_context: request.parameters.clone(),
        ..Volume::default()
    })
}

fn validate(
    request: &ValidateVolumeCapabilitiesRequest,
) -> Result<ValidateVolumeCapabilitiesResponse, ControllerError> {
    if request.volume_id.is_empty() {
        return Err(InvalidField::new("volume_id", "required").into());
    }
    if request.volume_capabilities.is_empty() {
        return Err(InvalidField::new("volume_capabilities", "at least one is required").into());
    }
    if !is_driver_volume_id(&request.volume_id) {
        return Err(ControllerError::UnknownVolume(request.volume_id.clone()));
    }
    if !request.volume_context.is_empty() {
        volume::parse_attributes(&request.volume_context)?;
    }
    Ok(match check_capabilities(&request.volume_capabilities) {
        Ok(()) => ValidateVolumeCapabilitiesResponse {
            confirmed: Some(Confirmed {
                volume_context: request.volume_context.clone(),
                volume_capabilities: request.volume_capabilities.clone(),
                parameters: request.parameters.clone(),
                mutable_parameters: HashMap::new(),
            }),
            message: String::new(),
        },
        Err(unsupported) => ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message: unsupported.to_string(),
        },
    })
}

fn unsupported<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    Err(ControllerError::Unsupported(rpc).into())
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let request = request.into_inner();
        let result = create(&self.created, &request).map(|volume| {
            info!(name = %request.name, volume_id = %volume.volume_id, "volume created");
            CreateVolumeResponse {
                volume: Some(volume),
            }
        });
        crate::respond::<_, ControllerError>("CreateVolume", result)
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let id = request.into_inner().volume_id;
        let result = if id.is_empty() {
            Err(InvalidField::new("volume_id", "required").into())
        } else {
            let mut created = self
                .created
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            created.retain(|_, existing| *existing != id);
            info!(volume_id = %id, "volume deleted (the AFS volume itself is untouched)");
            Ok(DeleteVolumeResponse {})
        };
        crate::respond::<_, ControllerError>("DeleteVolume", result)
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        crate::respond::<_, ControllerError>(
            "ValidateVolumeCapabilities",
            validate(&request.into_inner()),
        )
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![ControllerServiceCapability {
                r#type: Some(controller_service_capability::Type::Rpc(Rpc {
                    r#type: RpcType::CreateDeleteVolume as i32,
                })),
            }],
        }))
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        unsupported("ControllerPublishVolume")
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        unsupported("ControllerUnpublishVolume")
    }

    async fn list_volumes(
        &self,
        _request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        unsupported("ListVolumes")
    }

    async fn get_capacity(
        &self,
        _request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        unsupported("GetCapacity")
    }

    async fn create_snapshot(
        &self,
        _request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        unsupported("CreateSnapshot")
    }

    async fn delete_snapshot(
        &self,
        _request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        unsupported("DeleteSnapshot")
    }

    async fn list_snapshots(
        &self,
        _request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        unsupported("ListSnapshots")
    }

    async fn get_snapshot(
        &self,
        _request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        unsupported("GetSnapshot")
    }

    async fn controller_expand_volume(
        &self,
        _request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        unsupported("ControllerExpandVolume")
    }

    async fn controller_get_volume(
        &self,
        _request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        unsupported("ControllerGetVolume")
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        unsupported("ControllerModifyVolume")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::v1::volume_capability::{
        AccessMode, AccessType, MountVolume, access_mode::Mode,
    };

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn request(name: &str, parameters: HashMap<String, String>) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: name.into(),
            parameters,
            volume_capabilities: vec![VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode {
                    mode: Mode::MultiNodeMultiWriter as i32,
                }),
            }],
            ..CreateVolumeRequest::default()
        }
    }

    #[test]
    fn ids_are_deterministic_and_recognisable() {
        let a = params(&[("mount-type", "root")]);
        let id = volume_id("pvc-1", &a);
        assert_eq!(id, volume_id("pvc-1", &a.clone()));
        assert_ne!(id, volume_id("pvc-2", &a));
        assert_ne!(
            id,
            volume_id(
                "pvc-1",
                &params(&[("mount-type", "root"), ("read-only", "true")])
            )
        );
        assert!(is_driver_volume_id(&id));
        assert!(!is_driver_volume_id("afs-xyz"));
        assert!(!is_driver_volume_id("pv-static-handle"));
    }

    #[test]
    fn same_name_other_parameters_is_refused() {
        let created = Mutex::default();
        let root = params(&[("mount-type", "root")]);
        let first = create(&created, &request("pvc-1", root.clone())).expect("created");
        assert_eq!(first.volume_context, root);
        let again = create(&created, &request("pvc-1", root)).expect("idempotent");
        assert_eq!(first.volume_id, again.volume_id);
        let other = params(&[("mount-type", "root"), ("read-only", "true")]);
        let err = create(&created, &request("pvc-1", other)).expect_err("conflict");
        assert_eq!(Status::from(err).code(), tonic::Code::AlreadyExists);
    }

    #[test]
    fn bad_parameters_are_refused_with_the_field() {
        let created = Mutex::default();
        let err = create(
            &created,
            &request("pvc", params(&[("mount-type", "volume")])),
        )
        .expect_err("no cell");
        assert!(err.to_string().starts_with("cell-name:"), "{err}");
        let err =
            create(&created, &request("", params(&[("mount-type", "root")]))).expect_err("no name");
        assert!(err.to_string().starts_with("name:"), "{err}");
    }
}
