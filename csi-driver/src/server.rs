//! Wiring: the socket, the services the mode asks for, metrics, shutdown.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::routing::get;
use csi_proto::v1::controller_server::ControllerServer;
use csi_proto::v1::identity_server::IdentityServer;
use csi_proto::v1::node_server::NodeServer;
use prometheus_client::registry::Registry;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use crate::afsroot::AfsRoot;
use crate::config::Args;
use crate::controller::ControllerService;
use crate::identity::IdentityService;
use crate::metrics::{RpcMetrics, RpcMetricsLayer};
use crate::mounts::Staging;
use crate::node::{NodeConfig, NodeService};
use crate::policy::{AllowedCells, Policy};
use crate::target::KubeletDir;
use crate::volume::InvalidField;

/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--endpoint {0:?}: must be unix:///absolute/path")]
    Endpoint(String),
    #[error("--driver-name {0:?}: {1}")]
    DriverName(String, &'static str),
    #[error(transparent)]
    Flag(#[from] InvalidField),
    #[error("socket {}: another process is serving on it", .0.display())]
    SocketInUse(PathBuf),
    #[error("socket {}: exists and is not a socket; refusing to remove it", .0.display())]
    NotASocket(PathBuf),
    #[error("{context}: {error}")]
    Io {
        context: String,
        #[source]
        error: io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ServeError {
    let context = context.into();
    move |error| ServeError::Io { context, error }
}

/// CSI driver names are at most 63 characters of lowercase alphanumerics,
/// '-' and '.', starting and ending with an alphanumeric.
fn check_driver_name(name: &str) -> Result<(), ServeError> {
    let bad = |rule| Err(ServeError::DriverName(name.to_owned(), rule));
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return bad("only lowercase letters, digits, '-' and '.' are allowed");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// Binds the socket: a stale socket is removed only when it is a socket and
/// nobody answers on it; the new one is 0600 (0660 with group access).
pub fn bind_socket(path: &Path, group_access: bool) -> Result<UnixListener, ServeError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::SocketInUse(path.to_path_buf()));
            }
            fs::remove_file(path).map_err(io_error(format!("remove stale {}", path.display())))?;
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(format!("stat {}", path.display()))(e)),
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_error(format!("create {}", parent.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io_error(format!("bind {}", path.display())))?;
    let mode = if group_access { 0o660 } else { 0o600 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_error(format!("chmod {}", path.display())))?;
    Ok(listener)
}

/// Resolves on the first SIGTERM or SIGINT.
async fn termination() -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining in-flight requests"),
        _ = int.recv() => info!("SIGINT: draining in-flight requests"),
    }
    Ok(())
}

async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn serve_metrics(
    address: std::net::SocketAddr,
    registry: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => Ok(([("content-type", "text/plain; version=0.0.4")], text)),
                    Err(_) => Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(io_error(format!("bind metrics {address}")))?;
    info!(%address, "serving metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped(shutdown))
        .await
        .map_err(io_error("metrics server"))
}

/// Runs the driver until SIGTERM/SIGINT, then drains and removes the socket.
pub async fn run(args: Args) -> Result<(), ServeError> {
    check_driver_name(&args.driver_name)?;
    let socket = csi_proto::unix_socket_path(&args.endpoint)
        .ok_or_else(|| ServeError::Endpoint(args.endpoint.clone()))?;
    let node_id = match args.node_id.clone() {
        Some(id) => id,
        None => nix::unistd::gethostname()
            .map_err(|errno| io_error("host name for --node-id")(errno.into()))?
            .to_string_lossy()
            .into_owned(),
    };

    let afs_root = AfsRoot::new(args.afs_root.clone(), args.cache_manager);
    let policy = Policy {
        allowed_cells: AllowedCells::parse(&args.allowed_cells)?,
        allow_root_mounts: args.allow_root_mounts,
        allow_ephemeral: args.allow_ephemeral,
    };
    let node = NodeConfig {
        node_id: node_id.clone(),
        driver_name: args.driver_name.clone(),
        cache_manager: args.cache_manager,
        afs_root: afs_root.clone(),
        kubelet: KubeletDir::new(&args.kubelet_dir)?,
        policy: policy.clone(),
        // Beside the socket: a directory of the driver's own, never under kubelet's
        // shared tree (see Staging).
        staging: Staging::new(
            socket
                .parent()
                .unwrap_or_else(|| Path::new("/"))
                .join(".staging"),
        ),
    };

    let mut registry = Registry::default();
    let metrics = RpcMetrics::register(&mut registry);
    let identity = IdentityService::new(
        args.driver_name.clone(),
        args.cache_manager,
        args.mode.serves_controller(),
        args.mode.serves_node().then(|| afs_root.clone()),
    );
    let router = tonic::transport::Server::builder()
        .layer(RpcMetricsLayer(metrics))
        .add_service(IdentityServer::new(identity))
        .add_optional_service(
            args.mode
                .serves_node()
                .then(|| NodeServer::new(NodeService::new(node))),
        )
        .add_optional_service(
            args.mode
                .serves_controller()
                .then(|| ControllerServer::new(ControllerService::default())),
        );

    let listener = bind_socket(&socket, args.socket_group_access)?;
    info!(
        socket = %socket.display(),
        mode = ?args.mode,
        driver = %args.driver_name,
        node_id = %node_id,
        cache_manager = %args.cache_manager,
        afs_root = %args.afs_root.display(),
        kubelet_dir = %args.kubelet_dir.display(),
        allowed_cells = %policy.allowed_cells,
        allow_root_mounts = policy.allow_root_mounts,
        allow_ephemeral = policy.allow_ephemeral,
        version = env!("CARGO_PKG_VERSION"),
        "serving CSI"
    );

    let (stop, shutdown) = watch::channel(false);
    let stop = Arc::new(stop);
    let on_signal = Arc::clone(&stop);
    let signals = tokio::spawn(async move {
        if let Err(error) = termination().await {
            tracing::error!(%error, "cannot listen for signals; stopping");
        }
        let _ = on_signal.send(true);
    });
    let grpc = async {
        let serve = router.serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            stopped(shutdown.clone()),
        );
        // Draining waits for clients to close their connections; one that
        // never does must not keep the process from exiting.
        let drain_deadline = async {
            stopped(shutdown.clone()).await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        let served = tokio::select! {
            served = serve => served,
            () = drain_deadline => {
                tracing::warn!(seconds = DRAIN_TIMEOUT.as_secs(), "clients still connected after draining; exiting");
                Ok(())
            }
        };
        // A dead gRPC server stops the metrics server too.
        let _ = stop.send(true);
        served.map_err(ServeError::from)
    };
    let metrics_server = async {
        match args.metrics_address {
            Some(address) => serve_metrics(address, Arc::new(registry), shutdown.clone()).await,
            None => Ok(()),
        }
    };
    let served = tokio::try_join!(grpc, metrics_server).map(|_| ());
    signals.abort();
    let _ = fs::remove_file(&socket);
    info!("stopped");
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names() {
        assert!(check_driver_name("auristorfs.csi.auristor.com").is_ok());
        for bad in ["", "Upper.case", "-lead", "trail.", &"a".repeat(64), "a_b"] {
            assert!(check_driver_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn refuses_to_remove_what_is_not_a_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("csi.sock");
        fs::write(&file, b"precious").expect("write");
        assert!(matches!(
            bind_socket(&file, false),
            Err(ServeError::NotASocket(_))
        ));
        assert_eq!(fs::read(&file).expect("still there"), b"precious");
    }
}
