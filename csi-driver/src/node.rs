//! The CSI Node service: publish and unpublish AFS mounts on pod targets.
//!
//! Syscalls run on the blocking pool (an AFS server can make them slow), each
//! holding its target's in-flight guard until it ends, whatever the RPC does.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
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
use rustix::fs::{Mode, OFlags};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::afsroot::{AfsRoot, AfsRootError};
use crate::capability;
use crate::checks::BoundedChecks;
use crate::config::CacheManager;
use crate::inflight::InFlight;
use crate::mounts::{self, MountEntry, MountError, Staging, UnmountError};
use crate::plan::{AFS_FS_TYPE, MountPlan, MountSource, plan_mount};
use crate::policy::{Policy, Refused};
use crate::target::{self, Escape, KubeletDir, OpenError, Target};
use crate::volume::{self, InvalidField};

/// How long NodeGetVolumeStats waits for an AFS server before it reports the
/// volume as abnormal instead of hanging kubelet's stats loop.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);
/// Stats calls that may wait for their servers at once (one per volume path).
/// kubelet asks once a minute per volume; a node whose servers all hang gets
/// "abnormal" answers at once beyond this, and publish never waits for any.
const MAX_PENDING_STATS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("target_path: {0}")]
    Escape(#[from] Escape),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("another operation on {} is in progress; retry later", .0.display())]
    InFlight(PathBuf),
    #[error("{} already holds a different mount ({existing}); unpublish it first", target.display())]
    Conflict { target: PathBuf, existing: String },
    #[error("{} holds a mount this driver did not make ({existing}); it is left in place", target.display())]
    NotOurs { target: PathBuf, existing: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    AfsRoot(#[from] AfsRootError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Unmount(#[from] UnmountError),
    #[error("{context}: {error}")]
    Io {
        context: String,
        #[source]
        error: io::Error,
    },
    #[error("{0} is not supported by this driver")]
    Unsupported(&'static str),
}

impl NodeError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |error| Self::Io { context, error }
    }
}

impl From<OpenError> for NodeError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::Escape(escape) => Self::Escape(escape),
            OpenError::Io { path, error } => Self::Io {
                context: format!("open {}", path.display()),
                error,
            },
        }
    }
}

impl From<NodeError> for Status {
    fn from(error: NodeError) -> Self {
        let message = error.to_string();
        match error {
            NodeError::Invalid(_) | NodeError::Escape(_) => Status::invalid_argument(message),
            NodeError::Refused(_) => Status::permission_denied(message),
            NodeError::InFlight(_) => Status::aborted(message),
            NodeError::Conflict { .. } => Status::already_exists(message),
            NodeError::NotFound(_) => Status::not_found(message),
            NodeError::Precondition(_)
            | NodeError::NotOurs { .. }
            | NodeError::AfsRoot(_)
            | NodeError::Unmount(UnmountError::Busy { .. }) => Status::failed_precondition(message),
            NodeError::Mount(MountError::SourceMissing { .. }) => Status::not_found(message),
            NodeError::Mount(MountError::NoAfsFilesystem) => Status::failed_precondition(message),
            NodeError::Mount(MountError::ContextRefused { .. }) => {
                Status::invalid_argument(message)
            }
            NodeError::Mount(
                MountError::Syscall { .. } | MountError::AttributesNotApplied { .. },
            )
            | NodeError::Unmount(UnmountError::Syscall { .. })
            | NodeError::Io { .. } => Status::internal(message),
            NodeError::Unsupported(_) => Status::unimplemented(message),
        }
    }
}

/// What every node operation needs, shared with the blocking workers.
#[derive(Debug)]
pub struct NodeConfig {
    pub node_id: String,
    /// Marks the target directories this driver creates.
    pub driver_name: String,
    pub cache_manager: CacheManager,
    pub afs_root: AfsRoot,
    pub kubelet: KubeletDir,
    pub policy: Policy,
    /// Where binds are prepared on kernels without the new mount API.
    pub staging: Staging,
}

#[derive(Debug)]
pub struct NodeService {
    config: Arc<NodeConfig>,
    in_flight: Arc<InFlight>,
    stats: Arc<BoundedChecks<Result<NodeGetVolumeStatsResponse, StatsRefusal>>>,
}

/// A stats answer that is not a usage report, shareable between waiting callers.
#[derive(Debug, Clone)]
enum StatsRefusal {
    NotFound(String),
    Failed(String),
}

impl NodeService {
    pub fn new(config: NodeConfig) -> Self {
        Self {
            config: Arc::new(config),
            in_flight: Arc::default(),
            stats: BoundedChecks::new(MAX_PENDING_STATS),
        }
    }

    /// Runs `work` on the blocking pool while holding `target`'s guard.
    async fn exclusive<T: Send + 'static>(
        &self,
        target: &Path,
        work: impl FnOnce(&NodeConfig) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let guard = self
            .in_flight
            .try_begin(target.to_path_buf())
            .ok_or_else(|| NodeError::InFlight(target.to_path_buf()))?;
        let config = Arc::clone(&self.config);
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            work(&config)
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
        let mut options = capability::check("volume_capability", capability)?;
        options.read_only |= request.readonly;
        let (spec, unknown) = volume::parse_attributes(&request.volume_context)?;
        if !unknown.is_empty() {
            warn!(volume_id = %request.volume_id, ?unknown, "ignoring unknown volume attributes");
        }
        self.config.policy.check(&spec, &request.volume_context)?;
        Ok(plan_mount(
            self.config.cache_manager,
            self.config.afs_root.path(),
            &spec,
            &options,
        )?)
    }
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, InvalidField> {
    if value.is_empty() {
        Err(InvalidField::new(field, "required"))
    } else {
        Ok(value)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Publish {
    Mounted,
    AlreadyThere,
}

/// Opens the target directory in `parent` (crossing into what is mounted on it),
/// refusing a symlink or a non-directory there.
fn open_target_dir(target: &Target, parent: BorrowedFd<'_>) -> Result<Option<OwnedFd>, NodeError> {
    match target::open_dir_nofollow(parent, target::MOUNT_DIR) {
        Ok(dir) => Ok(Some(dir)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => Err(InvalidField::new(
            "target_path",
            format!(
                "{} exists and is not a directory (a symlink is never followed)",
                target.path().display()
            ),
        )
        .into()),
        Err(e) => Err(NodeError::io(format!("open {}", target.path().display()))(
            e.into(),
        )),
    }
}

/// The source of a bind, opened below the checked AFS root.
fn open_bind_source(config: &NodeConfig, path: &Path) -> Result<OwnedFd, NodeError> {
    let root = config.afs_root.open()?;
    let Ok(relative) = path.strip_prefix(config.afs_root.path()) else {
        return Err(NodeError::Precondition(format!(
            "{} is not below the AFS root {}",
            path.display(),
            config.afs_root.path().display()
        )));
    };
    if relative.as_os_str().is_empty() {
        return Ok(root);
    }
    rustix::fs::openat(
        root.as_fd(),
        relative,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => MountError::SourceMissing {
            source_name: path.display().to_string(),
        }
        .into(),
        e => NodeError::io(format!("open {}", path.display()))(e.into()),
    })
}

fn publish(config: &NodeConfig, target: &Target, plan: &MountPlan) -> Result<Publish, NodeError> {
    let parent = target.open_parent()?.ok_or_else(|| {
        NodeError::Precondition(format!(
            "the parent directory of {} does not exist",
            target.path().display()
        ))
    })?;
    let created = target::create_target_dir(parent.as_fd(), &config.driver_name)
        .map_err(NodeError::io(format!("create {}", target.path().display())))?;
    let result = open_target_dir(target, parent.as_fd()).and_then(|dir| {
        let dir = dir.ok_or_else(|| {
            NodeError::Precondition(format!("{} vanished", target.path().display()))
        })?;
        if !created && let Some(outcome) = published_already(config, target, &parent, &dir, plan)? {
            return outcome;
        }
        mount(config, target, dir.as_fd(), plan).map(|()| Publish::Mounted)
    });
    if result.is_err() && created {
        // Leave nothing behind, but only what this call made.
        let _ = target::remove_target_dir(parent.as_fd());
    }
    result
}

fn mount(
    config: &NodeConfig,
    target: &Target,
    dir: BorrowedFd<'_>,
    plan: &MountPlan,
) -> Result<(), NodeError> {
    match &plan.source {
        MountSource::Bind { path, recursive } => {
            let source = open_bind_source(config, path)?;
            mounts::bind(
                source.as_fd(),
                path,
                dir,
                *recursive,
                &plan.options,
                &config.staging,
            )?;
        }
        MountSource::Afs { device } => {
            mounts::mount_afs(device, dir, target.path(), &plan.options)?;
        }
    }
    Ok(())
}

/// For a target that exists: `None` when nothing is mounted on it yet,
/// otherwise whether the mount there is this very publish or a conflict.
fn published_already(
    config: &NodeConfig,
    target: &Target,
    parent: &OwnedFd,
    dir: &OwnedFd,
    plan: &MountPlan,
) -> Result<Option<Result<Publish, NodeError>>, NodeError> {
    let Some(entry) =
        mounts::mounted_at(parent.as_fd(), dir.as_fd()).map_err(NodeError::io("read mountinfo"))?
    else {
        return Ok(None);
    };
    let same = entry.read_only == plan.options.read_only
        && entry.no_exec == plan.options.no_exec
        && match &plan.source {
            MountSource::Bind { path, .. } => {
                let source = open_bind_source(config, path)?;
                mounts::same_file(dir.as_fd(), source.as_fd()).map_err(NodeError::io(format!(
                    "compare mount on {}",
                    target.path().display()
                )))?
            }
            MountSource::Afs { device } => {
                entry.fs_type == AFS_FS_TYPE
                    && entry
                        .source
                        .as_deref()
                        .is_some_and(|shown| afs_source_matches(device, shown))
            }
        };
    Ok(Some(if same {
        Ok(Publish::AlreadyThere)
    } else {
        Err(NodeError::Conflict {
            target: target.path().to_path_buf(),
            existing: entry.describe(),
        })
    }))
}

/// Whether kAFS shows a mount of `device` as `shown`. kAFS names a mount
/// after the volume it got, not the one asked for: `#cell:vol` (prefer a
/// read-only replica) of a volume that has no replica mounts the read-write
/// volume and shows `%cell:vol`. The read-only flag is compared separately.
fn afs_source_matches(device: &str, shown: &str) -> bool {
    shown == device
        || device
            .strip_prefix('#')
            .is_some_and(|rest| shown.strip_prefix('%') == Some(rest))
}

/// A mount this driver made: an AFS filesystem, or a bind of the AFS root's
/// filesystem (the same device as the AFS root now shows).
fn is_ours(entry: &MountEntry, afs_root_device: Option<&str>) -> bool {
    entry.fs_type == AFS_FS_TYPE || afs_root_device.is_some_and(|device| entry.device == device)
}

/// Unmounts what this driver mounted on the target and removes the directory if
/// the driver made it; a missing or unmounted target is fine. Anything else there
/// (a foreign mount, a mount a process uses, a symlink) stays and is reported.
/// Returns how many mounts were removed.
fn unpublish(config: &NodeConfig, target: &Target) -> Result<usize, NodeError> {
    let Some(parent) = target.open_parent()? else {
        return Ok(0);
    };
    target::remove_leftover(parent.as_fd()).map_err(NodeError::io(format!(
        "clean up beside {}",
        target.path().display()
    )))?;
    // Only needed for a mount that is not an afs filesystem itself (a bind of an AFS
    // root of another type); looked up once, and not at all otherwise.
    let mut afs_root_device: Option<Option<String>> = None;
    let mut removed = 0;
    loop {
        let Some(dir) = open_target_dir(target, parent.as_fd()).map_err(|e| match e {
            NodeError::Invalid(invalid) => NodeError::Precondition(format!(
                "{}; it was not made by this driver and is left in place",
                invalid.rule
            )),
            other => other,
        })?
        else {
            return Ok(removed);
        };
        let Some(entry) = mounts::mounted_at(parent.as_fd(), dir.as_fd())
            .map_err(NodeError::io("read mountinfo"))?
        else {
            break;
        };
        let device = if entry.fs_type == AFS_FS_TYPE {
            None
        } else {
            afs_root_device
                .get_or_insert_with(|| {
                    config
                        .afs_root
                        .open()
                        .ok()
                        .and_then(|root| mounts::device_of(root.as_fd()).ok())
                })
                .as_deref()
        };
        if !is_ours(&entry, device) {
            return Err(NodeError::NotOurs {
                target: target.path().to_path_buf(),
                existing: entry.describe(),
            });
        }
        if removed == mounts::MAX_STACKED_MOUNTS {
            return Err(NodeError::Precondition(format!(
                "more than {} mounts are stacked on {}",
                mounts::MAX_STACKED_MOUNTS,
                target.path().display()
            )));
        }
        drop(dir);
        mounts::unmount_tree(parent.as_fd(), target::MOUNT_DIR, &entry)?;
        removed += 1;
    }
    match target::created_by(parent.as_fd(), &config.driver_name) {
        Ok(true) => match target::remove_target_dir(parent.as_fd()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                return Err(NodeError::Precondition(format!(
                    "{} is not empty once unmounted (something wrote into it); it is left in place",
                    target.path().display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io(format!("remove {}", target.path().display()))(e)),
        },
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(NodeError::io(format!("read {}", target.path().display()))(
                e,
            ));
        }
    }
    Ok(removed)
}

fn volume_stats(target: &Target) -> Result<NodeGetVolumeStatsResponse, StatsRefusal> {
    let not_found = || {
        StatsRefusal::NotFound(format!(
            "{} is not the target of a published volume",
            target.path().display()
        ))
    };
    let failed = |context: &str| {
        let context = context.to_owned();
        move |e: io::Error| StatsRefusal::Failed(format!("{context}: {e}"))
    };
    let parent = match target.open_parent() {
        Ok(Some(parent)) => parent,
        Ok(None) => return Err(not_found()),
        Err(e) => return Err(StatsRefusal::Failed(e.to_string())),
    };
    let dir = match target::open_dir_nofollow(parent.as_fd(), target::MOUNT_DIR) {
        Ok(dir) => dir,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            return Err(not_found());
        }
        Err(e) => return Err(failed("open target")(e.into())),
    };
    let entry = mounts::mounted_at(parent.as_fd(), dir.as_fd())
        .map_err(failed("read mountinfo"))?
        .ok_or_else(not_found)?;
    if entry.root.ends_with("//deleted") {
        return Ok(abnormal(
            "the source directory of this mount was deleted".into(),
        ));
    }
    let stat = match rustix::fs::fstatvfs(&dir) {
        Ok(stat) => stat,
        Err(errno) => return Ok(abnormal(format!("the volume cannot be read: {errno}"))),
    };
    let fragment = stat.f_frsize;
    let bytes = |blocks: u64| i64::try_from(blocks.saturating_mul(fragment)).unwrap_or(i64::MAX);
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let usage = vec![
        VolumeUsage {
            unit: Unit::Bytes as i32,
            total: bytes(stat.f_blocks),
            available: bytes(stat.f_bavail),
            used: bytes(stat.f_blocks.saturating_sub(stat.f_bfree)),
        },
        VolumeUsage {
            unit: Unit::Inodes as i32,
            total: count(stat.f_files),
            available: count(stat.f_favail),
            used: count(stat.f_files.saturating_sub(stat.f_ffree)),
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
            let target = self
                .config
                .kubelet
                .target("target_path", &request.target_path)?;
            let plan = self.plan_publish(&request)?;
            let context = &request.volume_context;
            let (target_for_work, plan_for_work) = (target.clone(), plan.clone());
            let outcome = self
                .exclusive(target.path(), move |config| {
                    publish(config, &target_for_work, &plan_for_work)
                })
                .await?;
            info!(
                volume_id = %request.volume_id,
                target = %target.path().display(),
                source = ?plan.source,
                read_only = plan.read_only(),
                no_exec = plan.options.no_exec,
                selinux_context = plan.options.selinux_context.as_deref().unwrap_or(""),
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
            let target = self
                .config
                .kubelet
                .target("target_path", &request.target_path)?;
            let work_target = target.clone();
            let removed = self
                .exclusive(target.path(), move |config| unpublish(config, &work_target))
                .await?;
            info!(volume_id = %request.volume_id, target = %target.path().display(), removed, "unpublished");
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
            // Only our targets: stats of any other path could hang on any server.
            let target = self
                .config
                .kubelet
                .target("volume_path", &request.volume_path)
                .map_err(|e| NodeError::NotFound(e.to_string()))?;
            let key = target.path().display().to_string();
            let answer = self
                .stats
                .run(&key, STATS_TIMEOUT, move || volume_stats(&target))
                .await;
            match answer {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(StatsRefusal::NotFound(message))) => Err(NodeError::NotFound(message)),
                Ok(Err(StatsRefusal::Failed(message))) => Err(NodeError::Io {
                    context: "volume stats".into(),
                    error: io::Error::other(message),
                }),
                Err(unanswered) => Ok(abnormal(format!(
                    "the volume did not answer: {unanswered}; is its AFS server reachable?"
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
            node_id: self.config.node_id.clone(),
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
    fn errors_map_to_csi_codes() {
        use tonic::Code;
        let code = |e: NodeError| Status::from(e).code();
        assert_eq!(
            code(InvalidField::new("f", "r").into()),
            Code::InvalidArgument
        );
        assert_eq!(code(Escape("/k/pods".into()).into()), Code::InvalidArgument);
        assert_eq!(
            code(
                Refused {
                    field: "cell-name",
                    rule: String::new()
                }
                .into()
            ),
            Code::PermissionDenied
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
            code(NodeError::NotOurs {
                target: "/t".into(),
                existing: String::new()
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(
                UnmountError::Busy {
                    mount_point: "/t".into()
                }
                .into()
            ),
            Code::FailedPrecondition
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

    #[test]
    fn kafs_shows_the_volume_it_got() {
        assert!(afs_source_matches("%c.org:v", "%c.org:v"));
        assert!(afs_source_matches("#c.org:v", "#c.org:v"));
        // No read-only replica: '#' falls back to the read-write volume.
        assert!(afs_source_matches("#c.org:v", "%c.org:v"));
        assert!(afs_source_matches("#c.org:v.readonly", "#c.org:v.readonly"));
        // A read-write request is never satisfied by a replica.
        assert!(!afs_source_matches("%c.org:v", "#c.org:v"));
        assert!(!afs_source_matches("#c.org:v", "%c.org:w"));
        assert!(!afs_source_matches("#c.org:v", "%other.org:v"));
    }

    #[test]
    fn ours_is_afs_or_a_bind_of_the_afs_root() {
        let entry = |fs_type: &str, device: &str| MountEntry {
            id: 2,
            parent: 1,
            device: device.into(),
            root: "/".into(),
            mount_point: "/t".into(),
            fs_type: fs_type.into(),
            source: None,
            read_only: false,
            no_suid: true,
            no_dev: true,
            no_exec: false,
            propagates: false,
        };
        assert!(is_ours(&entry("afs", "0:50"), None));
        assert!(is_ours(&entry("yfs", "0:51"), Some("0:51")));
        assert!(!is_ours(&entry("tmpfs", "0:52"), Some("0:51")));
        assert!(!is_ours(&entry("ext4", "254:0"), None));
    }
}
