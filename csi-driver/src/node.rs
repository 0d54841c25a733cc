//! The CSI Node service: publish and unpublish AFS mounts on pod targets.
//!
//! Syscalls run on the blocking pool (an AFS server can make them slow), each
//! holding its target's in-flight guard until it ends, whatever the RPC does.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::node_server::Node;
use csi_proto::v1::node_service_capability::{Rpc, rpc::Type as RpcType};
use csi_proto::v1::volume_usage::Unit;
use csi_proto::v1::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, VolumeCondition, VolumeUsage,
    node_service_capability,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::capability;
use crate::config::CacheManager;
use crate::inflight::InFlight;
use crate::mounts::{self, MountError};
use crate::plan::{MountPlan, plan_mount};
use crate::volume::{self, InvalidField};

/// How long NodeGetVolumeStats waits for an AFS server before it reports the
/// volume as abnormal instead of hanging kubelet's stats loop.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("another operation on {} is in progress; retry later", .0.display())]
    InFlight(PathBuf),
    #[error("{} already holds a different mount ({existing}); unpublish it first", target.display())]
    Conflict { target: PathBuf, existing: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    #[error("{0} is not supported by this driver")]
    Unsupported(&'static str),
}

impl NodeError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |error| Self::Io { context, error }
    }
}

impl From<NodeError> for Status {
    fn from(error: NodeError) -> Self {
        let message = error.to_string();
        match error {
            NodeError::Invalid(_) => Status::invalid_argument(message),
            NodeError::InFlight(_) => Status::aborted(message),
            NodeError::Conflict { .. } => Status::already_exists(message),
            NodeError::NotFound(_) => Status::not_found(message),
            NodeError::Precondition(_) => Status::failed_precondition(message),
            NodeError::Mount(MountError::SourceMissing { .. }) => Status::not_found(message),
            NodeError::Mount(MountError::NoAfsFilesystem) => Status::failed_precondition(message),
            NodeError::Mount(MountError::Syscall { .. }) | NodeError::Io { .. } => {
                Status::internal(message)
            }
            NodeError::Unsupported(_) => Status::unimplemented(message),
        }
    }
}

#[derive(Debug)]
pub struct NodeService {
    node_id: String,
    cache_manager: CacheManager,
    afs_root: PathBuf,
    in_flight: Arc<InFlight>,
}

impl NodeService {
    pub fn new(node_id: String, cache_manager: CacheManager, afs_root: PathBuf) -> Self {
        Self {
            node_id,
            cache_manager,
            afs_root,
            in_flight: Arc::default(),
        }
    }

    /// Runs `work` on the blocking pool while holding `target`'s guard.
    async fn exclusive<T: Send + 'static>(
        &self,
        target: &Path,
        work: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let guard = self
            .in_flight
            .try_begin(target.to_path_buf())
            .ok_or_else(|| NodeError::InFlight(target.to_path_buf()))?;
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            work()
        })
        .await
        .map_err(|join| NodeError::Io {
            context: "mount worker".into(),
            error: io::Error::other(join),
        })?
    }

    fn plan_publish(&self, request: &NodePublishVolumeRequest) -> Result<MountPlan, NodeError> {
        let capability = request
            .volume_capability
            .as_ref()
            .ok_or_else(|| InvalidField::new("volume_capability", "required"))?;
        let capability_read_only = capability::check("volume_capability", capability)?;
        let (spec, unknown) = volume::parse_attributes(&request.volume_context)?;
        if !unknown.is_empty() {
            warn!(volume_id = %request.volume_id, ?unknown, "ignoring unknown volume attributes");
        }
        Ok(plan_mount(
            self.cache_manager,
            &self.afs_root,
            &spec,
            request.readonly || capability_read_only,
        ))
    }
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, InvalidField> {
    if value.is_empty() {
        Err(InvalidField::new(field, "required"))
    } else {
        Ok(value)
    }
}

/// An absolute path without `..`, NUL or a trailing slash.
pub fn target_path(field: &str, raw: &str) -> Result<PathBuf, InvalidField> {
    required(field, raw)?;
    if raw.contains('\0') {
        return Err(InvalidField::new(field, "must not contain NUL"));
    }
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(InvalidField::new(
            field,
            format!("must be an absolute path, got {raw:?}"),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(InvalidField::new(
            field,
            format!("must not contain '..', got {raw:?}"),
        ));
    }
    let normal: PathBuf = path.components().collect();
    if normal.parent().is_none() {
        return Err(InvalidField::new(field, "must not be /"));
    }
    Ok(normal)
}

/// The target with its parent's symlinks resolved, as mountinfo shows it.
/// `None` when the parent does not exist.
fn resolve(target: &Path) -> Result<Option<PathBuf>, NodeError> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(None);
    };
    match fs::canonicalize(parent) {
        Ok(parent) => Ok(Some(parent.join(name))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::io(format!("resolve {}", parent.display()))(e)),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Publish {
    Mounted,
    AlreadyThere,
}

fn publish(target: &Path, plan: &MountPlan) -> Result<Publish, NodeError> {
    match fs::create_dir(target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if let Some(outcome) = published_already(target, plan)? {
                return outcome;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(NodeError::Precondition(format!(
                "the parent directory of {} does not exist",
                target.display()
            )));
        }
        Err(e) => return Err(NodeError::io(format!("create {}", target.display()))(e)),
    }
    if let Err(error) = mounts::mount(plan, target) {
        // Leave nothing behind: remove_dir only removes an empty directory,
        // so a directory that was there before with content survives.
        let _ = fs::remove_dir(target);
        return Err(error.into());
    }
    Ok(Publish::Mounted)
}

/// For a target that exists: `None` when nothing is mounted on it yet,
/// otherwise whether the mount there is this very publish or a conflict.
fn published_already(
    target: &Path,
    plan: &MountPlan,
) -> Result<Option<Result<Publish, NodeError>>, NodeError> {
    let meta = fs::symlink_metadata(target)
        .map_err(NodeError::io(format!("stat {}", target.display())))?;
    if !meta.is_dir() {
        return Err(InvalidField::new(
            "target_path",
            format!("{} exists and is not a directory", target.display()),
        )
        .into());
    }
    let Some(resolved) = resolve(target)? else {
        return Ok(None);
    };
    let Some(entry) = mounts::mount_at(&resolved).map_err(NodeError::io("read mountinfo"))? else {
        return Ok(None);
    };
    let same = mounts::is_published_as(plan, &resolved, &entry).map_err(NodeError::io(format!(
        "compare mount on {}",
        target.display()
    )))?;
    Ok(Some(if same {
        Ok(Publish::AlreadyThere)
    } else {
        Err(NodeError::Conflict {
            target: resolved,
            existing: format!(
                "{} from {}, {}",
                entry.fs_type,
                entry.source.as_deref().unwrap_or("?"),
                if entry.read_only { "ro" } else { "rw" }
            ),
        })
    }))
}

/// Unmounts everything on the target and removes the directory; a missing
/// or unmounted target is fine. Returns how many mounts were removed.
fn unpublish(target: &Path) -> Result<usize, NodeError> {
    let removed = match mounts::unmount_all(target) {
        Ok(removed) => removed,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(NodeError::io(format!("unmount {}", target.display()))(e)),
    };
    match fs::remove_dir(target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(NodeError::io(format!("remove {}", target.display()))(e))
        }
        _ => Ok(removed),
    }
}

fn volume_stats(path: &Path) -> Result<NodeGetVolumeStatsResponse, NodeError> {
    let not_found = || {
        NodeError::NotFound(format!(
            "{} is not the target of a published volume",
            path.display()
        ))
    };
    if !path.is_absolute() {
        return Err(not_found());
    }
    let Some(path) = resolve(path)? else {
        return Err(not_found());
    };
    let entry = mounts::mount_at(&path)
        .map_err(NodeError::io("read mountinfo"))?
        .ok_or_else(not_found)?;
    if entry.root.ends_with("//deleted") {
        return Ok(abnormal(
            "the source directory of this mount was deleted".into(),
        ));
    }
    let stat = match nix::sys::statvfs::statvfs(&path) {
        Ok(stat) => stat,
        Err(errno) => return Ok(abnormal(format!("the volume cannot be read: {errno}"))),
    };
    let fragment = stat.fragment_size();
    let bytes = |blocks: u64| i64::try_from(blocks.saturating_mul(fragment)).unwrap_or(i64::MAX);
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let usage = vec![
        VolumeUsage {
            unit: Unit::Bytes as i32,
            total: bytes(stat.blocks()),
            available: bytes(stat.blocks_available()),
            used: bytes(stat.blocks().saturating_sub(stat.blocks_free())),
        },
        VolumeUsage {
            unit: Unit::Inodes as i32,
            total: count(stat.files()),
            available: count(stat.files_available()),
            used: count(stat.files().saturating_sub(stat.files_free())),
        },
    ];
    Ok(NodeGetVolumeStatsResponse {
        usage,
        volume_condition: Some(VolumeCondition {
            abnormal: false,
            message: "ok".into(),
        }),
    })
}

fn abnormal(message: String) -> NodeGetVolumeStatsResponse {
    NodeGetVolumeStatsResponse {
        usage: Vec::new(),
        volume_condition: Some(VolumeCondition {
            abnormal: true,
            message,
        }),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            required("volume_id", &request.volume_id)?;
            let target = target_path("target_path", &request.target_path)?;
            let plan = self.plan_publish(&request)?;
            let context = &request.volume_context;
            let (target_for_work, plan_for_work) = (target.clone(), plan.clone());
            let outcome = self
                .exclusive(&target, move || publish(&target_for_work, &plan_for_work))
                .await?;
            info!(
                volume_id = %request.volume_id,
                target = %target.display(),
                source = ?plan.source,
                read_only = plan.read_only,
                pod = context.get(volume::POD_NAME).map(String::as_str).unwrap_or(""),
                namespace = context.get(volume::POD_NAMESPACE).map(String::as_str).unwrap_or(""),
                ephemeral = context.get(volume::EPHEMERAL).is_some_and(|v| v == "true"),
                already_published = outcome == Publish::AlreadyThere,
                "published"
            );
            Ok(NodePublishVolumeResponse {})
        }
        .await;
        crate::respond::<_, NodeError>("NodePublishVolume", result)
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            required("volume_id", &request.volume_id)?;
            let target = target_path("target_path", &request.target_path)?;
            let work_target = target.clone();
            let removed = self.exclusive(&target, move || unpublish(&work_target)).await?;
            info!(volume_id = %request.volume_id, target = %target.display(), removed, "unpublished");
            Ok(NodeUnpublishVolumeResponse {})
        }
        .await;
        crate::respond::<_, NodeError>("NodeUnpublishVolume", result)
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            required("volume_id", &request.volume_id)?;
            required("volume_path", &request.volume_path)?;
            let path = PathBuf::from(&request.volume_path);
            let work = tokio::task::spawn_blocking(move || volume_stats(&path));
            match tokio::time::timeout(STATS_TIMEOUT, work).await {
                Ok(joined) => joined.map_err(|join| NodeError::Io {
                    context: "stats worker".into(),
                    error: io::Error::other(join),
                })?,
                Err(_) => Ok(abnormal(format!(
                    "the volume did not answer within {}s: is its AFS server reachable?",
                    STATS_TIMEOUT.as_secs()
                ))),
            }
        }
        .await;
        crate::respond::<_, NodeError>("NodeGetVolumeStats", result)
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let capability = |kind: RpcType| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(Rpc {
                r#type: kind as i32,
            })),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                capability(RpcType::GetVolumeStats),
                capability(RpcType::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }

    async fn node_stage_volume(
        &self,
        _request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        crate::respond::<_, NodeError>(
            "NodeStageVolume",
            Err(NodeError::Unsupported("NodeStageVolume")),
        )
    }

    async fn node_unstage_volume(
        &self,
        _request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        crate::respond::<_, NodeError>(
            "NodeUnstageVolume",
            Err(NodeError::Unsupported("NodeUnstageVolume")),
        )
    }

    async fn node_expand_volume(
        &self,
        _request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        crate::respond::<_, NodeError>(
            "NodeExpandVolume",
            Err(NodeError::Unsupported("NodeExpandVolume")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_paths() {
        assert_eq!(
            target_path("t", "/var/lib/kubelet/pods/x/mount/").expect("valid"),
            PathBuf::from("/var/lib/kubelet/pods/x/mount")
        );
        assert_eq!(
            target_path("t", "/a/./b").expect("valid"),
            PathBuf::from("/a/b")
        );
        for bad in ["", "relative/path", "/a/../etc", "/", "/a\0b"] {
            let err = target_path("target_path", bad).expect_err(bad);
            assert_eq!(err.field, "target_path");
        }
    }

    #[test]
    fn errors_map_to_csi_codes() {
        use tonic::Code;
        let code = |e: NodeError| Status::from(e).code();
        assert_eq!(
            code(InvalidField::new("f", "r").into()),
            Code::InvalidArgument
        );
        assert_eq!(code(NodeError::InFlight("/t".into())), Code::Aborted);
        assert_eq!(
            code(NodeError::Conflict {
                target: "/t".into(),
                existing: String::new()
            }),
            Code::AlreadyExists
        );
        assert_eq!(
            code(
                MountError::SourceMissing {
                    source_name: "x".into()
                }
                .into()
            ),
            Code::NotFound
        );
        assert_eq!(
            code(MountError::NoAfsFilesystem.into()),
            Code::FailedPrecondition
        );
    }
}
