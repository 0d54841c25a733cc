//! A real driver process on a temporary socket, with a temporary AFS root laid
//! out the way each cache manager presents volumes.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
use csi_proto::v1::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};
use tonic::transport::Channel;

pub const CELL: &str = "example.org";
/// The pod every fixture target belongs to.
pub const POD_UID: &str = "0b5c0b8a-1f2e-4c3d-9a8b-7c6d5e4f3a2b";
pub const VOLUME: &str = "proj";
pub const CONTENT: &str = "hello from AFS\n";

/// Mount tests need root; say so loudly instead of failing elsewhere.
pub fn can_mount() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: this test mounts and must run as root");
    false
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// `afs/` holds one volume with a file, reachable the AuriStorFS way
    /// (`.@mount/<cell>/<volume>`), the OpenAFS way (`.:mount/<cell>:<volume>`)
    /// and by path (`<cell>/<volume>`) as a root mount shows it.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("csi-afs-test")
            .tempdir()
            .expect("tempdir");
        let afs = dir.path().join("afs");
        for volume in [
            afs.join(".@mount").join(CELL).join(VOLUME),
            afs.join(".:mount").join(format!("{CELL}:{VOLUME}")),
            afs.join(CELL).join(VOLUME),
        ] {
            fs::create_dir_all(&volume).expect("volume dir");
            fs::write(volume.join("hello.txt"), CONTENT).expect("file");
        }
        fs::create_dir_all(dir.path().join("kubelet/pods")).expect("kubelet dir");
        Self { dir }
    }

    /// kubelet's root directory (`--kubelet-dir`).
    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    /// The directory kubelet makes for a volume of the fixture's pod (the target's
    /// parent), not created.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.kubelet_dir()
            .join("pods")
            .join(POD_UID)
            .join("volumes/kubernetes.io~csi")
            .join(name)
    }

    pub fn afs_root(&self) -> PathBuf {
        self.dir.path().join("afs")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("csi.sock")
    }

    /// A target whose parent exists, as kubelet prepares it.
    pub fn target(&self, name: &str) -> PathBuf {
        let parent = self.volume_dir(name);
        fs::create_dir_all(&parent).expect("target parent");
        parent.join("mount")
    }

    pub fn mounts_below(&self) -> Vec<String> {
        let root = self.dir.path().to_string_lossy().into_owned();
        fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| point.starts_with(&root))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A failed test must not leave mounts on the machine.
        let mut points = self.mounts_below();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub struct Driver {
    pub child: Child,
    pub channel: Channel,
}

/// What the fixture's node allows: its cell, root mounts, inline volumes.
pub const OPEN_POLICY: [&str; 4] = [
    "--allowed-cells",
    CELL,
    "--allow-root-mounts",
    "--allow-ephemeral",
];

impl Driver {
    /// A driver whose policy allows everything the fixture has.
    pub async fn start(fixture: &Fixture, cache_manager: &str, mode: &str) -> Self {
        let mut args = vec!["--cache-manager", cache_manager, "--mode", mode];
        args.extend(OPEN_POLICY);
        Self::start_with(fixture, &args).await
    }

    /// A driver with the fixture's socket, AFS root and kubelet directory, and
    /// `extra` flags (the policy is closed unless they open it).
    pub async fn start_with(fixture: &Fixture, extra: &[&str]) -> Self {
        Self::spawn(
            fixture,
            extra,
            Command::new(env!("CARGO_BIN_EXE_csi-driver")),
        )
        .await
    }

    /// Starts the driver through `command` (which may prepare the process, e.g.
    /// put it in a mount namespace of its own, as a container runtime does).
    pub async fn spawn(fixture: &Fixture, extra: &[&str], mut command: Command) -> Self {
        let endpoint = format!("unix://{}", fixture.socket().display());
        let child = command
            .args(["--endpoint", &endpoint, "--node-id", "test-node"])
            .arg("--afs-root")
            .arg(fixture.afs_root())
            .arg("--kubelet-dir")
            .arg(fixture.kubelet_dir())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start csi-driver");
        let channel = wait_for_socket(&fixture.socket()).await;
        Self { child, channel }
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }
    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }
    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn wait_for_socket(socket: &Path) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(channel) = ready_channel(socket).await {
            return channel;
        }
        assert!(
            Instant::now() < deadline,
            "driver did not come up on {socket:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready_channel(socket: &Path) -> Option<Channel> {
    if !socket.exists() {
        return None;
    }
    let channel = csi_proto::connect(socket).await.ok()?;
    IdentityClient::new(channel.clone())
        .get_plugin_info(csi_proto::v1::GetPluginInfoRequest {})
        .await
        .ok()?;
    Some(channel)
}

pub fn mount_capability(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn volume_attrs() -> HashMap<String, String> {
    attrs(&[
        ("mount-type", "volume"),
        ("cell-name", CELL),
        ("volume-name", VOLUME),
    ])
}

pub fn root_attrs() -> HashMap<String, String> {
    attrs(&[("mount-type", "root")])
}

pub fn publish(
    target: &Path,
    context: HashMap<String, String>,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: "vol-1".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability(Mode::MultiNodeMultiWriter)),
        readonly,
        volume_context: context,
        ..NodePublishVolumeRequest::default()
    }
}

pub fn unpublish(target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: "vol-1".into(),
        target_path: target.display().to_string(),
    }
}

/// Runs futures concurrently (no extra crate for one helper).
pub async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}
