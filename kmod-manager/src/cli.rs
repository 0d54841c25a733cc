//! Command-line flags; every flag can also be set from an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_CSI_DRIVER: &str = "auristorfs.csi.auristor.com";
pub const DEFAULT_READY_LABEL: &str = "afs.csi.auristor.com/kmod-ready";
pub const DEFAULT_READINESS_TAINT: &str = "afs.csi.auristor.com/kmod-not-ready";

#[derive(Debug, Parser)]
#[command(
    name = "kmod-manager",
    version,
    about = "Loads the right AFS kernel module for the running kernel; never unloads it while in use"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = "KMOD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the driver-container image for a kernel.
    Select(SelectArgs),
    /// Show what is loaded, refcounts, holders and who uses the module.
    Status(StatusArgs),
    /// Verify and load the module and its dependencies.
    Load(LoadArgs),
    /// Unload the module if nothing uses it (never forced).
    Unload(UnloadArgs),
    /// Daemon of the driver container: load, serve readiness, unload on SIGTERM if safe.
    Run(RunArgs),
    /// Time a command (benchmarks); with --until-file, until that file appears.
    #[command(hide = true)]
    Stopwatch(StopwatchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SelectArgs {
    /// Kernel release (default: the running kernel).
    #[arg(long, env = "KMOD_KERNEL")]
    pub kernel: Option<String>,
    /// Mappings file (YAML with `kernelMappings`).
    #[arg(long, env = "KMOD_CONFIG")]
    pub config: PathBuf,
    /// Value of ${MODULE_VERSION} (overrides the file's moduleVersion).
    #[arg(long, env = "KMOD_MODULE_VERSION")]
    pub module_version: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct ModuleArgs {
    /// Module to manage (default: from the config file, else kafs).
    #[arg(long, env = "KMOD_MODULE")]
    pub module: Option<String>,
    /// Kernel release override (default: uname -r).
    #[arg(long, env = "KMOD_KERNEL")]
    pub kernel: Option<String>,
    /// Directory with modules.dep and the .ko files (default: /lib/modules/<release>).
    #[arg(long, env = "KMOD_MODULE_DIR")]
    pub module_dir: Option<PathBuf>,
    /// Config file with module settings and kernel mappings.
    #[arg(long, env = "KMOD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of kmod-manager's record of the modules it inserted (only those are
    /// ever unloaded); keep it across restarts of the daemon (tmpfs: a reboot clears it).
    #[arg(long, env = "KMOD_STATE_DIR", default_value = crate::record::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Root of procfs (tests).
    #[arg(long, env = "KMOD_PROC_ROOT", default_value = "/proc", hide = true)]
    pub proc_root: PathBuf,
    /// Root of sysfs (tests).
    #[arg(long, env = "KMOD_SYS_ROOT", default_value = "/sys", hide = true)]
    pub sys_root: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    /// Filesystem types whose mounts keep the module in use (default: config, else afs).
    #[arg(long, env = "KMOD_FS_TYPES", value_delimiter = ',')]
    pub fs_types: Vec<String>,
    /// CSI driver whose published targets keep the module in use.
    #[arg(long, env = "KMOD_CSI_DRIVER_NAME", default_value = DEFAULT_CSI_DRIVER)]
    pub csi_driver_name: String,
    /// Kubelet root directory.
    #[arg(long, env = "KMOD_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub module: ModuleArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub module: ModuleArgs,
    /// Module parameter `key=value` (repeatable; added to the config's).
    #[arg(long = "param", env = "KMOD_PARAMS", value_delimiter = ' ')]
    pub params: Vec<String>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct UnloadArgs {
    #[command(flatten)]
    pub module: ModuleArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    /// Poll until the module is safe to unload, at most this long (e.g. 5m).
    #[arg(long, env = "KMOD_UNLOAD_WAIT", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// Poll interval with --wait.
    #[arg(long, env = "KMOD_UNLOAD_POLL", value_parser = humantime::parse_duration, default_value = "1s")]
    pub poll: Duration,
    /// Only evaluate the guard and print the decision.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub module: ModuleArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    /// Module parameter `key=value` (repeatable; added to the config's).
    #[arg(long = "param", env = "KMOD_PARAMS", value_delimiter = ' ')]
    pub params: Vec<String>,
    /// Module version for ${MODULE_VERSION} (overrides the config's).
    #[arg(long, env = "KMOD_MODULE_VERSION")]
    pub module_version: Option<String>,
    /// The image this container runs; refused when the mapping selects another one.
    #[arg(long, env = "KMOD_IMAGE")]
    pub image: Option<String>,
    /// File created when the module is loaded and live, removed on shutdown.
    #[arg(
        long,
        env = "KMOD_READY_FILE",
        default_value = "/run/kmod-manager/ready"
    )]
    pub ready_file: PathBuf,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KMOD_LISTEN", default_value = "0.0.0.0:9808")]
    pub listen: SocketAddr,
    /// Report readiness on this node's Node object (needs a kubeconfig or in-cluster config).
    #[arg(long, env = "KMOD_REPORT_NODE")]
    pub report_node: bool,
    /// Name of this node (downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Label set to "true"/"false" on the node.
    #[arg(long, env = "KMOD_READY_LABEL", default_value = DEFAULT_READY_LABEL)]
    pub ready_label: String,
    /// NoSchedule taint removed from the node once ready.
    #[arg(long, env = "KMOD_READINESS_TAINT", default_value = DEFAULT_READINESS_TAINT)]
    pub readiness_taint: String,
    /// With --report-node: how often usage (published CSI volumes, mounts, refcount) is
    /// re-checked; the node's usage annotations are written only when they change.
    #[arg(long, env = "KMOD_USAGE_INTERVAL", value_parser = parse_interval, default_value = "10s")]
    pub usage_interval: Duration,
}

/// A humantime duration greater than zero.
fn parse_interval(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct StopwatchArgs {
    /// Stop the clock when this file exists (the command keeps running).
    #[arg(long)]
    pub until_file: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_wait_and_fs_types() {
        let c = Cli::try_parse_from([
            "kmod-manager",
            "unload",
            "--wait",
            "5m",
            "--fs-types",
            "afs,yfs",
        ])
        .expect("parses");
        let Command::Unload(u) = c.command else {
            panic!("unload")
        };
        assert_eq!(u.wait, Some(Duration::from_secs(300)));
        assert_eq!(u.guard.fs_types, ["afs", "yfs"]);
        assert_eq!(u.guard.csi_driver_name, DEFAULT_CSI_DRIVER);
    }

    #[test]
    fn usage_interval() {
        let run = |extra: &[&str]| {
            Cli::try_parse_from(["kmod-manager", "run"].iter().chain(extra)).map(|c| {
                match c.command {
                    Command::Run(r) => r.usage_interval,
                    _ => panic!("run"),
                }
            })
        };
        assert_eq!(run(&[]).expect("default"), Duration::from_secs(10));
        assert_eq!(
            run(&["--usage-interval", "1m30s"]).expect("parses"),
            Duration::from_secs(90)
        );
        assert!(run(&["--usage-interval", "0s"]).is_err());
        assert!(run(&["--usage-interval", "soon"]).is_err());
    }
}
