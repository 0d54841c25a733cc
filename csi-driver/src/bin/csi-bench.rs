//! A plain CSI client and load tool. It speaks only the CSI wire protocol, so
//! it drives any CSI driver (ours, the reference hostpath driver, ...) the
//! same way, and it measures the syscall floor the drivers stand on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
use csi_proto::v1::*;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(version, about = "CSI client and load generator for any CSI driver")]
struct Cli {
    /// The driver's endpoint: unix:///path/to/csi.sock
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        global = true,
        default_value = "unix:///csi/csi.sock"
    )]
    endpoint: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plugin info, capabilities, probe and node info.
    Info,
    /// CreateVolume; prints the volume id and its context.
    Create {
        #[arg(long)]
        name: String,
        /// StorageClass-style parameter key=value (repeatable).
        #[arg(long = "param", value_parser = key_value)]
        params: Vec<(String, String)>,
    },
    /// DeleteVolume.
    Delete {
        #[arg(long)]
        volume_id: String,
    },
    /// NodePublishVolume of one volume on one target.
    Publish {
        #[command(flatten)]
        volume: VolumeArgs,
        #[arg(long)]
        target: PathBuf,
    },
    /// NodeUnpublishVolume.
    Unpublish {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        target: PathBuf,
    },
    /// NodeGetVolumeStats.
    Stats {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        path: PathBuf,
    },
    /// Concurrent NodePublishVolume + NodeUnpublishVolume cycles.
    Load {
        #[command(flatten)]
        volume: VolumeArgs,
        #[command(flatten)]
        run: RunArgs,
        /// CreateVolume with this name first and publish what it returns.
        #[arg(long)]
        create: Option<String>,
        /// Parameters for --create (key=value, repeatable).
        #[arg(long = "param", value_parser = key_value)]
        params: Vec<(String, String)>,
        /// The driver's pid, to sample its resident memory under load.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// The IPC floor: two no-op RPCs (NodeGetInfo) per cycle, what any gRPC
    /// driver pays before doing anything.
    RpcFloor {
        #[command(flatten)]
        run: RunArgs,
    },
    /// The floor: mkdir + bind mount + umount + rmdir, with no driver at all.
    Floor {
        #[command(flatten)]
        run: RunArgs,
        /// Directory to bind.
        #[arg(long)]
        source: PathBuf,
    },
}

#[derive(Debug, ClapArgs)]
struct VolumeArgs {
    /// Volume id (ignored by `load --create`, which uses the created id).
    #[arg(long, default_value = "bench-volume")]
    volume_id: String,
    /// Volume context key=value (repeatable), e.g. mount-type=volume.
    #[arg(long = "attr", value_parser = key_value)]
    attrs: Vec<(String, String)>,
    #[arg(long)]
    readonly: bool,
    #[arg(long, value_enum, default_value_t = Access::MultiNodeMultiWriter)]
    access_mode: Access,
    /// Mount option of the capability (repeatable), e.g. noexec.
    #[arg(long = "mount-flag")]
    mount_flags: Vec<String>,
}

#[derive(Debug, ClapArgs)]
struct RunArgs {
    /// Concurrent workers, each on its own target.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// A kubelet directory: worker i publishes on
    /// `<dir>/pods/csi-bench/volumes/kubernetes.io~csi/w<i>/mount`, as kubelet would
    /// (the driver's --kubelet-dir). The volume directories are created, then removed.
    #[arg(long)]
    target_dir: PathBuf,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Access {
    SingleNodeWriter,
    MultiNodeReaderOnly,
    MultiNodeMultiWriter,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn capability(access: Access, mount_flags: &[String]) -> VolumeCapability {
    let mode = match access {
        Access::SingleNodeWriter => Mode::SingleNodeWriter,
        Access::MultiNodeReaderOnly => Mode::MultiNodeReaderOnly,
        Access::MultiNodeMultiWriter => Mode::MultiNodeMultiWriter,
    };
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            mount_flags: mount_flags.to_vec(),
            ..MountVolume::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn publish_request(
    volume: &VolumeArgs,
    id: &str,
    context: &HashMap<String, String>,
    target: &Path,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.to_owned(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability(volume.access_mode, &volume.mount_flags)),
        readonly: volume.readonly,
        volume_context: context.clone(),
        ..NodePublishVolumeRequest::default()
    }
}

async fn connect(endpoint: &str) -> Result<Channel> {
    let socket = csi_proto::unix_socket_path(endpoint)
        .with_context(|| format!("--endpoint {endpoint:?}: must be unix:///absolute/path"))?;
    csi_proto::connect(&socket)
        .await
        .with_context(|| format!("connect to {}", socket.display()))
}

/// Latency percentiles over sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Debug, Default)]
struct Samples {
    cycles: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.cycles.extend(other.cycles);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
    fn fail(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }
}

struct Report<'a> {
    label: &'a str,
    workers: usize,
    elapsed: Duration,
    samples: Samples,
    rss: Option<(u64, u64)>,
    json: bool,
}

impl Report<'_> {
    #[allow(clippy::print_stdout)]
    fn print(mut self) {
        self.samples.cycles.sort();
        let n = self.samples.cycles.len();
        let rate = n as f64 / self.elapsed.as_secs_f64();
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let (p50, p99) = (
            percentile(&self.samples.cycles, 50.0),
            percentile(&self.samples.cycles, 99.0),
        );
        let mean = if n == 0 {
            Duration::ZERO
        } else {
            self.samples.cycles.iter().sum::<Duration>() / n as u32
        };
        if self.json {
            let line = serde_json::json!({
                "label": self.label,
                "workers": self.workers,
                "cycles": n,
                "errors": self.samples.errors,
                "cycles_per_s": rate,
                "mean_us": micros(mean),
                "p50_us": micros(p50),
                "p99_us": micros(p99),
                "peak_rss_kib": self.rss.map(|(peak, _)| peak),
            });
            println!("{line}");
            return;
        }
        println!(
            "{}: {} workers, {n} cycles in {:.1}s = {rate:.0} cycles/s; cycle latency mean {:.0}µs p50 {:.0}µs p99 {:.0}µs; errors {}",
            self.label,
            self.workers,
            self.elapsed.as_secs_f64(),
            micros(mean),
            micros(p50),
            micros(p99),
            self.samples.errors
        );
        if let Some((peak, mean)) = self.rss {
            println!("  server RSS under load: peak {peak} KiB, mean {mean} KiB");
        }
        if let Some(error) = &self.samples.first_error {
            println!("  first error: {error}");
        }
    }
}

async fn rpc_floor(channel: Channel, run: RunArgs) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(run.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..run.workers)
        .map(|_| {
            let mut node = NodeClient::new(channel.clone());
            tokio::spawn(async move {
                let mut samples = Samples::default();
                while Instant::now() < deadline {
                    let start = Instant::now();
                    for _ in 0..2 {
                        if let Err(status) = node.node_get_info(NodeGetInfoRequest {}).await {
                            samples.fail(status.to_string());
                        }
                    }
                    samples.cycles.push(start.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut samples = Samples::default();
    for task in tasks {
        samples.merge(task.await?);
    }
    Report {
        label: "rpc floor",
        workers: run.workers,
        elapsed: started.elapsed(),
        samples,
        rss: None,
        json: run.json,
    }
    .print();
    Ok(())
}

async fn stage_if_needed(
    channel: &Channel,
    volume: &VolumeArgs,
    volume_id: &str,
    context: &HashMap<String, String>,
    target_dir: &Path,
) -> Result<Option<PathBuf>> {
    use node_service_capability::rpc::Type;
    let mut node = NodeClient::new(channel.clone());
    let capabilities = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .context("NodeGetCapabilities")?
        .into_inner();
    let stages = capabilities.capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(node_service_capability::Type::Rpc(rpc))
            if rpc.r#type == Type::StageUnstageVolume as i32)
    });
    if !stages {
        return Ok(None);
    }
    let staging = target_dir.join("staging");
    std::fs::create_dir_all(&staging).with_context(|| format!("create {}", staging.display()))?;
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(capability(volume.access_mode, &volume.mount_flags)),
        volume_context: context.clone(),
        ..NodeStageVolumeRequest::default()
    })
    .await
    .context("NodeStageVolume")?;
    Ok(Some(staging))
}

/// Worker `i`'s volume directory, kubelet's shape below `--target-dir`.
fn worker_volume_dir(run: &RunArgs, i: usize) -> PathBuf {
    run.target_dir
        .join("pods/csi-bench/volumes/kubernetes.io~csi")
        .join(format!("w{i}"))
}

fn worker_targets(run: &RunArgs) -> Result<Vec<PathBuf>> {
    (0..run.workers)
        .map(|i| {
            let parent = worker_volume_dir(run, i);
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("create {}", parent.display()))?;
            Ok(parent.join("mount"))
        })
        .collect()
}

fn remove_worker_dirs(run: &RunArgs) {
    for i in 0..run.workers {
        let _ = std::fs::remove_dir(worker_volume_dir(run, i));
    }
}

async fn load(
    channel: Channel,
    volume: VolumeArgs,
    run: RunArgs,
    create: Option<String>,
    params: Vec<(String, String)>,
    server_pid: Option<u32>,
) -> Result<()> {
    let (volume_id, context) = match create {
        Some(name) => {
            let created = ControllerClient::new(channel.clone())
                .create_volume(CreateVolumeRequest {
                    name,
                    parameters: params.into_iter().collect(),
                    volume_capabilities: vec![capability(volume.access_mode, &volume.mount_flags)],
                    ..CreateVolumeRequest::default()
                })
                .await
                .context("CreateVolume")?
                .into_inner()
                .volume
                .context("CreateVolume returned no volume")?;
            (created.volume_id, created.volume_context)
        }
        None => (
            volume.volume_id.clone(),
            volume.attrs.iter().cloned().collect(),
        ),
    };
    let targets = worker_targets(&run)?;
    // Drivers that stage (as kubelet sees from their capabilities) get the
    // volume staged once per node, outside the measured cycles.
    let staging = stage_if_needed(&channel, &volume, &volume_id, &context, &run.target_dir).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(run.seconds);
    let volume = Arc::new(volume);
    let started = Instant::now();
    let sampler = server_pid.map(|pid| {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while Instant::now() < deadline {
                seen.extend(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    });
    let mut tasks = Vec::new();
    for target in targets {
        let mut node = NodeClient::new(channel.clone());
        let mut request = publish_request(&volume, &volume_id, &context, &target);
        if let Some(staging) = &staging {
            request.staging_target_path = staging.display().to_string();
        }
        let unpublish = NodeUnpublishVolumeRequest {
            volume_id: volume_id.clone(),
            target_path: target.display().to_string(),
        };
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                let start = Instant::now();
                if let Err(status) = node.node_publish_volume(request.clone()).await {
                    samples.fail(format!("publish: {status}"));
                    continue;
                }
                if let Err(status) = node.node_unpublish_volume(unpublish.clone()).await {
                    samples.fail(format!("unpublish: {status}"));
                    continue;
                }
                samples.cycles.push(start.elapsed());
            }
            samples
        }));
    }
    let mut samples = Samples::default();
    for task in tasks {
        samples.merge(task.await?);
    }
    let elapsed = started.elapsed();
    if let Some(staging) = staging {
        NodeClient::new(channel.clone())
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging.display().to_string(),
            })
            .await
            .context("NodeUnstageVolume")?;
        let _ = std::fs::remove_dir(&staging);
    }
    let rss = match sampler {
        Some(task) => {
            let seen = task.await?;
            let peak = seen.iter().copied().max();
            peak.map(|peak| (peak, seen.iter().sum::<u64>() / seen.len() as u64))
        }
        None => None,
    };
    remove_worker_dirs(&run);
    Report {
        label: "driver",
        workers: run.workers,
        elapsed,
        samples,
        rss,
        json: run.json,
    }
    .print();
    Ok(())
}

/// What a driver cannot avoid doing per cycle, measured on threads that do
/// nothing else.
fn floor(run: RunArgs, source: PathBuf) -> Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let targets = worker_targets(&run)?;
    let deadline = Instant::now() + Duration::from_secs_f64(run.seconds);
    let started = Instant::now();
    let threads: Vec<_> = targets
        .into_iter()
        .map(|target| {
            let source = source.clone();
            std::thread::spawn(move || {
                let mut samples = Samples::default();
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let cycle = (|| -> Result<()> {
                        std::fs::create_dir(&target)?;
                        mount(
                            Some(&source),
                            &target,
                            None::<&str>,
                            MsFlags::MS_BIND,
                            None::<&str>,
                        )?;
                        umount2(&target, MntFlags::empty())?;
                        std::fs::remove_dir(&target)?;
                        Ok(())
                    })();
                    match cycle {
                        Ok(()) => samples.cycles.push(start.elapsed()),
                        Err(e) => {
                            samples.fail(e.to_string());
                            let _ = umount2(&target, MntFlags::MNT_DETACH);
                            let _ = std::fs::remove_dir(&target);
                        }
                    }
                }
                samples
            })
        })
        .collect();
    let mut samples = Samples::default();
    for thread in threads {
        match thread.join() {
            Ok(s) => samples.merge(s),
            Err(_) => bail!("a floor worker panicked"),
        }
    }
    let elapsed = started.elapsed();
    remove_worker_dirs(&run);
    Report {
        label: "floor",
        workers: run.workers,
        elapsed,
        samples,
        rss: None,
        json: run.json,
    }
    .print();
    Ok(())
}

// One thread: the client's own wake-ups would otherwise be counted against
// the driver under test.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {:?}: {}", status.code(), status.message()),
                None => eprintln!("error: {error:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(cli: Cli) -> Result<()> {
    if let Command::Floor { run, source } = cli.command {
        return tokio::task::spawn_blocking(move || floor(run, source)).await?;
    }
    let channel = connect(&cli.endpoint).await?;
    match cli.command {
        Command::Info => {
            let mut identity = IdentityClient::new(channel.clone());
            let info = identity
                .get_plugin_info(GetPluginInfoRequest {})
                .await?
                .into_inner();
            println!("driver {} version {}", info.name, info.vendor_version);
            let caps = identity
                .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
                .await?
                .into_inner();
            let controller = caps.capabilities.iter().any(|c| {
                matches!(
                    c.r#type,
                    Some(plugin_capability::Type::Service(ref s))
                        if s.r#type == plugin_capability::service::Type::ControllerService as i32
                )
            });
            println!("controller service: {controller}");
            match identity.probe(ProbeRequest {}).await {
                Ok(probe) => println!("probe: ready={:?}", probe.into_inner().ready),
                Err(status) => println!("probe: {:?} {}", status.code(), status.message()),
            }
            if let Ok(info) = NodeClient::new(channel)
                .node_get_info(NodeGetInfoRequest {})
                .await
            {
                println!("node id: {}", info.into_inner().node_id);
            }
        }
        Command::Create { name, params } => {
            let volume = ControllerClient::new(channel)
                .create_volume(CreateVolumeRequest {
                    name,
                    parameters: params.into_iter().collect(),
                    volume_capabilities: vec![capability(Access::MultiNodeMultiWriter, &[])],
                    ..CreateVolumeRequest::default()
                })
                .await?
                .into_inner()
                .volume
                .context("CreateVolume returned no volume")?;
            println!("volume id: {}", volume.volume_id);
            let mut context: Vec<_> = volume.volume_context.into_iter().collect();
            context.sort();
            for (key, value) in context {
                println!("  {key}={value}");
            }
        }
        Command::Delete { volume_id } => {
            ControllerClient::new(channel)
                .delete_volume(DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    secrets: HashMap::new(),
                })
                .await?;
            println!("deleted {volume_id}");
        }
        Command::Publish { volume, target } => {
            let context = volume.attrs.iter().cloned().collect();
            let request = publish_request(&volume, &volume.volume_id, &context, &target);
            NodeClient::new(channel)
                .node_publish_volume(request)
                .await?;
            println!("published {} on {}", volume.volume_id, target.display());
        }
        Command::Unpublish { volume_id, target } => {
            NodeClient::new(channel)
                .node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: volume_id.clone(),
                    target_path: target.display().to_string(),
                })
                .await?;
            println!("unpublished {volume_id} from {}", target.display());
        }
        Command::Stats { volume_id, path } => {
            let stats = NodeClient::new(channel)
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id,
                    volume_path: path.display().to_string(),
                    staging_target_path: String::new(),
                })
                .await?
                .into_inner();
            for usage in stats.usage {
                println!(
                    "{:?}: total {} used {} available {}",
                    usage.unit(),
                    usage.total,
                    usage.used,
                    usage.available
                );
            }
            if let Some(condition) = stats.volume_condition {
                println!("abnormal: {} ({})", condition.abnormal, condition.message);
            }
        }
        Command::Load {
            volume,
            run,
            create,
            params,
            server_pid,
        } => load(channel, volume, run, create, params, server_pid).await?,
        Command::RpcFloor { run } => rpc_floor(channel, run).await?,
        Command::Floor { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}
