//! Command-line flags; every flag can also come from an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

pub const DEFAULT_DRIVER_NAME: &str = "auristorfs.csi.auristor.com";

/// Which services the process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Node,
    Controller,
    All,
}

impl Mode {
    pub fn serves_node(self) -> bool {
        matches!(self, Self::Node | Self::All)
    }
    pub fn serves_controller(self) -> bool {
        matches!(self, Self::Controller | Self::All)
    }
}

/// The AFS client on the node, which decides where a mount comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheManager {
    /// AuriStorFS `yfs`: volumes under `<afs-root>/.@mount/<cell>/<volume>`.
    Auristor,
    /// OpenAFS: volumes under `<afs-root>/.:mount/<cell>:<volume>`.
    Openafs,
    /// The in-kernel kAFS client: an `afs` filesystem mount per volume.
    Kafs,
}

impl std::fmt::Display for CacheManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.to_possible_value().expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    version,
    about = "CSI plugin that mounts AFS volumes and the AFS root into pods"
)]
pub struct Args {
    /// CSI endpoint: unix:///path/to/csi.sock
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,

    /// Services to serve: node, controller or all.
    #[arg(long, env = "CSI_MODE", value_enum, default_value_t = Mode::All)]
    pub mode: Mode,

    /// Node id reported to kubelet; defaults to the host name.
    #[arg(long, env = "CSI_NODE_ID")]
    pub node_id: Option<String>,

    /// CSI driver name (the original AuriStorFS driver's name by default).
    #[arg(long, env = "CSI_DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    pub driver_name: String,

    /// The AFS client on this node.
    #[arg(long, env = "CSI_CACHE_MANAGER", value_enum, default_value_t = CacheManager::Auristor)]
    pub cache_manager: CacheManager,

    /// Where the AFS namespace is mounted (the dynamic root for kAFS).
    #[arg(long, env = "CSI_AFS_ROOT", default_value = "/afs")]
    pub afs_root: PathBuf,

    /// Make the socket group-accessible (0660) instead of owner-only (0600).
    #[arg(long, env = "CSI_SOCKET_GROUP_ACCESS")]
    pub socket_group_access: bool,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9808).
    #[arg(long, env = "CSI_METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,

    /// kubelet's root directory (its `--root-dir`): publish, unpublish and stats act
    /// only on `<dir>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`.
    #[arg(long, env = "CSI_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,

    /// Cells whose volumes may be published, comma-separated; `*` allows every cell.
    /// Empty (the default): no `mount-type: volume` publish is allowed.
    #[arg(long, env = "CSI_ALLOWED_CELLS", value_delimiter = ',')]
    pub allowed_cells: Vec<String>,

    /// Allow `mount-type: root` publishes (the whole AFS namespace, every cell).
    #[arg(long, env = "CSI_ALLOW_ROOT_MOUNTS")]
    pub allow_root_mounts: bool,

    /// Allow CSI ephemeral inline volumes (any pod creator can ask for one).
    #[arg(long, env = "CSI_ALLOW_EPHEMERAL")]
    pub allow_ephemeral: bool,
}
