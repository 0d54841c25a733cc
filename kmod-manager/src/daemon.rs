//! `run`: the driver container's daemon.
//!
//! Start: select the mapping (when configured) and check the image, verify and load.
//! Then: ready file + `/readyz`, `/healthz`, `/metrics`, optional Node report, and with
//! it a usage check every `--usage-interval` that updates the Node's usage annotations
//! when they change. With a `client` in the config, the AFS client is brought up and
//! checked every few seconds; `/readyz` and the Node report include it.
//! SIGTERM/SIGINT: unload only if the guard allows; otherwise keep the module (and the
//! client), log why, and exit 0 (a pod being deleted must never crash-loop on "in
//! use"). The client goes first: AFS root unmounted, afsd stopped, then the module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::app::{AppError, Context, check_image};
use crate::cli::RunArgs;
use crate::client::Client;
use crate::config::CacheManagerKind;
use crate::guard::{Decision, Usage, without_client};
use crate::metrics::{Metrics, ModuleLabels};
use crate::node::NodeReporter;
use crate::state::ModuleState;
use crate::unload::{
    UnloadError, UnloadReport, blockers_of, evaluate, evaluate_with_usage, module_is_ours,
    observe_usage, unload,
};

/// How often the AFS client is checked, and how long one check may take (a listing of
/// the AFS root that hangs on a dead server makes the node not ready, never stuck).
const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
const CLIENT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before a failed client start is tried again, doubling up to the max.
const CLIENT_START_RETRY_FIRST: Duration = Duration::from_secs(10);
const CLIENT_START_RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

#[derive(Debug)]
struct Shared {
    ctx: Context,
    ready: AtomicBool,
    /// The configured AFS client, or why it could not be made from its configuration.
    client: Option<Result<Client, String>>,
    /// While the client is down (starting counts): why.
    client_health: Mutex<Result<(), String>>,
    metrics: Metrics,
    registry: Registry,
}

impl Shared {
    fn labels(&self) -> ModuleLabels {
        ModuleLabels {
            module: self.ctx.guard.module.clone(),
        }
    }

    /// Ready only when we finished loading AND the kernel still has the module live
    /// AND the configured client is up.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && self.client_health().is_ok()
            && match self.ctx.paths.read_state(&self.ctx.guard.module) {
                Ok(ModuleState::Loaded(m)) => m.initstate == "live",
                Ok(ModuleState::BuiltIn) => true,
                _ => false,
            }
    }

    fn client(&self) -> Option<&Client> {
        self.client.as_ref().and_then(|c| c.as_ref().ok())
    }

    fn client_health(&self) -> Result<(), String> {
        if self.client.is_none() {
            return Ok(());
        }
        self.client_health
            .lock()
            .map_or_else(|_| Err("client state unknown".to_owned()), |h| h.clone())
    }

    /// Records the client's health; true when it changed.
    fn set_client_health(&self, now: Result<(), String>) -> bool {
        match self.client_health.lock() {
            Ok(mut h) if *h != now => {
                *h = now;
                true
            }
            _ => false,
        }
    }

    /// The Node's status annotation: the module, and the client when there is one.
    fn detail(&self) -> String {
        let module = format!("{} loaded on {}", self.ctx.guard.module, self.ctx.release);
        match (self.client(), self.client_health()) {
            (_, Err(why)) => format!("{module}; AFS client down: {why}"),
            (Some(c), Ok(())) => format!(
                "{module}; AFS client up ({}, {} serves {} cells)",
                c.plan.kind.as_str(),
                c.plan.afs_root.display(),
                c.plan.expected_cells.len()
            ),
            (None, Ok(())) => module,
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_handler(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let labels = s.labels();
    match s.ctx.paths.read_state(&s.ctx.guard.module) {
        Ok(ModuleState::Loaded(m)) => {
            s.metrics.loaded.get_or_create(&labels).set(1);
            s.metrics.refcount.get_or_create(&labels).set(m.refcount);
        }
        Ok(ModuleState::BuiltIn) => {
            s.metrics.loaded.get_or_create(&labels).set(1);
        }
        _ => {
            s.metrics.loaded.get_or_create(&labels).set(0);
        }
    }
    s.metrics.ready.set(i64::from(s.is_ready()));
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// What uses the module now (the guard's view), observed on a blocking thread; `None`,
/// logged, when it cannot be observed.
async fn current_usage(shared: Arc<Shared>) -> Option<Usage> {
    match tokio::task::spawn_blocking(move || {
        let own_root = shared.client().map(|c| c.plan.afs_root.as_path());
        observe_usage(&shared.ctx.paths, &shared.ctx.guard, own_root)
    })
    .await
    {
        Ok(Ok(usage)) => Some(usage),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot observe module usage");
            None
        }
        Err(e) => {
            warn!(error = %e, "module usage observation failed");
            None
        }
    }
}

/// Installs the SIGTERM/SIGINT handlers now; the future resolves on the first signal.
fn shutdown_signal()
-> Result<impl std::future::Future<Output = Result<&'static str, DaemonError>>, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    Ok(async move {
        Ok(tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        })
    })
}

fn write_ready_file(path: &std::path::Path, content: &str) -> Result<(), DaemonError> {
    let err = |source| DaemonError::ReadyFile {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Write then rename, so a reader never sees a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Runs the daemon until a termination signal; returns Ok (exit 0) after the shutdown
/// path whether or not the module could be unloaded.
///
/// The start (select, verify, load, ready file) runs before any async runtime exists so
/// that nothing delays readiness. SIGTERM and SIGINT are blocked meanwhile: one arriving
/// during the start stays pending and is handled by the normal shutdown path once the
/// handlers are installed (so a ready file is never left behind).
pub fn run(args: RunArgs) -> Result<(), DaemonError> {
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop_signals), None)
        .map_err(|e| DaemonError::Signal(e.into()))?;
    let ctx = Context::build(&args.module, Some(&args.guard), &args.params)?;
    if let Some(sel) = ctx.selection(args.module_version.as_deref())? {
        info!(image = %sel.image, mapping = sel.index, matcher = %sel.matcher, kernel = %ctx.release, "kernel mapping selected");
        check_image(&sel, args.image.as_deref(), ctx.release.full())?;
    }
    let report = crate::loader::load(&ctx.paths, &ctx.store, &ctx.load).map_err(AppError::from)?;
    write_ready_file(
        &args.ready_file,
        &format!("{} {}\n", ctx.guard.module, ctx.release),
    )?;
    info!(module = %ctx.guard.module, ready_file = %args.ready_file.display(), elapsed_ms = report.elapsed_ms, "ready");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?
        .block_on(serve(args, ctx, report.elapsed_ms, stop_signals))
}

/// Serves readiness and metrics, reports the node, and handles the shutdown signal.
async fn serve(
    args: RunArgs,
    ctx: Context,
    load_ms: f64,
    stop_signals: SigSet,
) -> Result<(), DaemonError> {
    // Handlers first, then unblock: a signal that arrived during the start is delivered now.
    let signal = tokio::spawn(shutdown_signal()?);
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&stop_signals), None)
        .map_err(|e| DaemonError::Signal(e.into()))?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics.load_seconds.set(load_ms / 1000.0);
    let client = ctx
        .config
        .as_ref()
        .and_then(|(c, _)| c.client.as_ref())
        .map(|settings| {
            Client::load(settings, &ctx.paths.proc, &ctx.store.dir).map_err(|e| {
                error!(error = %e, "AFS client configuration refused");
                e.to_string()
            })
        });
    let client_health = match &client {
        Some(Err(e)) => Err(e.clone()),
        _ => Err("starting".to_owned()),
    };
    let shared = Arc::new(Shared {
        ctx,
        ready: AtomicBool::new(true),
        client,
        client_health: Mutex::new(client_health),
        metrics,
        registry,
    });

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: args.listen,
            source,
        })?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(shared.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
            .map_err(DaemonError::Serve)
    });
    info!(listen = %args.listen, "serving /healthz /readyz /metrics");

    let reporter = match (&args.report_node, &args.node_name) {
        (true, Some(node)) => {
            NodeReporter::connect(
                node.clone(),
                args.ready_label.clone(),
                args.readiness_taint.clone(),
            )
            .await
        }
        (true, None) => {
            warn!("--report-node needs --node-name (NODE_NAME); not reporting");
            None
        }
        _ => None,
    };
    // The client comes up (and is then checked) while /healthz answers: afsd may sweep
    // a large disk cache first.
    let (client_stop, client_stop_rx) = watch::channel(false);
    let client_loop = shared.client().is_some().then(|| {
        let (s, r) = (shared.clone(), reporter.clone());
        tokio::spawn(async move { watch_client(s, r, client_stop_rx).await })
    });
    // With a reporter: the start report, then the usage loop until shutdown.
    let mut usage_loop = None;
    if let Some(r) = &reporter {
        let usage = current_usage(shared.clone()).await;
        // What the Node is known to carry; unknown (None) after a failed report.
        let written = match r
            .report(shared.is_ready(), &shared.detail(), usage.as_ref())
            .await
        {
            Ok(()) => usage,
            Err(e) => {
                warn!(error = %e, "node readiness report failed");
                None
            }
        };
        let (usage_stop, usage_stop_rx) = watch::channel(false);
        let (r, s, interval) = (r.clone(), shared.clone(), args.usage_interval);
        let task = tokio::spawn(async move {
            r.watch_usage(
                written,
                interval,
                move || current_usage(s.clone()),
                usage_stop_rx,
            )
            .await
        });
        info!(interval = %humantime::format_duration(interval), "watching module usage");
        usage_loop = Some((usage_stop, task));
    }

    let sig = signal.await??;
    info!(signal = sig, "shutting down");
    let _ = client_stop.send(true);
    if let Some(task) = client_loop
        && let Err(e) = task.await
    {
        warn!(error = %e, "client checks ended abnormally");
    }
    // No usage write after this point: the final report below carries the usage.
    if let Some((usage_stop, task)) = usage_loop {
        let _ = usage_stop.send(true);
        if let Err(e) = task.await {
            warn!(error = %e, "usage loop ended abnormally");
        }
    }
    shared.ready.store(false, Ordering::SeqCst);
    if let Err(e) = std::fs::remove_file(&args.ready_file)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(error = %e, "cannot remove ready file");
    }

    let guard_shared = shared.clone();
    let (outcome, usage) = tokio::task::spawn_blocking(move || shut_down(&guard_shared)).await?;
    let detail = match outcome {
        Ok(report) if report.removed.is_empty() && !report.left.is_empty() => {
            info!(left = ?report.left, "module not loaded by this kmod-manager: left loaded");
            format!(
                "{} left loaded: not loaded by kmod-manager",
                shared.ctx.guard.module
            )
        }
        Ok(report) => {
            shared.metrics.unloads.inc();
            info!(removed = ?report.removed, kept = ?report.kept, left = ?report.left, "module unloaded");
            format!("{} unloaded", shared.ctx.guard.module)
        }
        Err(UnloadError::Refused { module, blockers }) => {
            shared.metrics.unload_refusals.inc();
            warn!(module = %module, ?blockers, "module in use: keeping it loaded");
            format!("{module} kept: in use")
        }
        Err(UnloadError::Client(e)) => {
            shared.metrics.unload_refusals.inc();
            warn!(error = %e, "AFS client not taken down: keeping it and the module");
            format!("{} kept: {e}", shared.ctx.guard.module)
        }
        Err(e) => {
            error!(error = %e, "unload failed: keeping the module");
            format!("{} kept: {e}", shared.ctx.guard.module)
        }
    };
    if let Some(r) = &reporter
        && let Err(e) = r.report(false, &detail, usage.as_ref()).await
    {
        warn!(error = %e, "node readiness report failed");
    }
    let _ = stop_tx.send(true);
    server.await??;
    info!("exiting");
    Ok(())
}

/// The shutdown's unload (blocking): the guard decides first, with the client's own AFS
/// root and references left out; only then is the client taken down and the module
/// unloaded. Refused: nothing is stopped.
fn shut_down(s: &Shared) -> (Result<UnloadReport, UnloadError>, Option<Usage>) {
    let (eval, usage) = match evaluate_with_usage(&s.ctx.paths, &s.ctx.guard) {
        Ok((e, u)) => (e, u),
        Err(e) => return (Err(e), None),
    };
    s.metrics.guard_seconds.set(eval.elapsed_ms / 1000.0);
    let client = s.client();
    let decision = match client {
        Some(c) => without_client(eval.decision, Some(&c.plan.afs_root)),
        None => eval.decision,
    };
    if matches!(decision, Decision::Refused { .. }) {
        let refused = UnloadError::Refused {
            module: eval.module,
            blockers: blockers_of(&decision),
        };
        return (Err(refused), Some(usage));
    }
    if let Some(c) = client {
        // A module this kmod-manager did not load stays, and so does its client.
        match module_is_ours(&s.ctx.paths, &s.ctx.store, &s.ctx.guard) {
            Ok(true) => {
                if let Err(e) = take_client_down(s, c) {
                    return (Err(e), Some(usage));
                }
            }
            Ok(false) => {}
            Err(e) => return (Err(e), Some(usage)),
        }
    }
    let outcome = unload(
        &s.ctx.paths,
        &s.ctx.store,
        &s.ctx.guard,
        None,
        Duration::from_secs(1),
    );
    (outcome, Some(usage))
}

/// Unmounts the AFS root, checks that nothing else holds an AFS mount (a private copy
/// of the root in some pod: the root then comes back), and stops afsd.
fn take_client_down(s: &Shared, c: &Client) -> Result<(), UnloadError> {
    let fs_types = &s.ctx.guard.fs_types;
    c.unmount_root(fs_types)?;
    let after = evaluate(&s.ctx.paths, &s.ctx.guard)?;
    let left = without_client(after.decision, None);
    if matches!(left, Decision::Refused { .. }) {
        if let Err(e) = c.mount_root(fs_types) {
            error!(error = %e, "cannot mount the AFS root again");
        }
        return Err(UnloadError::Refused {
            module: after.module,
            blockers: blockers_of(&left),
        });
    }
    info!(afs_root = %c.plan.afs_root.display(), "AFS root unmounted");
    c.stop()?;
    Ok(())
}

/// Brings the client up, then checks it every [`CLIENT_CHECK_INTERVAL`] until `stop`:
/// one check at a time, each bounded by [`CLIENT_CHECK_TIMEOUT`]. A change of health is
/// logged and reported on the Node.
async fn watch_client(
    shared: Arc<Shared>,
    reporter: Option<NodeReporter>,
    mut stop: watch::Receiver<bool>,
) {
    // A start that fails (a server not yet up, a map the kubelet has not yet synced) is
    // tried again, less and less often, while the node reports why it is not ready.
    let mut retry_in = CLIENT_START_RETRY_FIRST;
    loop {
        let s = shared.clone();
        let started = tokio::task::spawn_blocking(move || match s.client() {
            Some(c) => c.start(&s.ctx.guard.fs_types).map_err(|e| e.to_string()),
            None => Err("no client".to_owned()),
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let Err(e) = started else { break };
        error!(error = %e, retry_in = %humantime::format_duration(retry_in), "AFS client did not start");
        apply_client_health(
            &shared,
            reporter.as_ref(),
            Err(format!("start failed: {e}")),
        )
        .await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(retry_in) => {}
        }
        retry_in = (retry_in * 2).min(CLIENT_START_RETRY_MAX);
    }
    // kAFS: each pod's network namespace gets the cells as it appears (client::netns).
    let follower = shared
        .client()
        .is_some_and(|c| c.plan.kind == CacheManagerKind::Kafs)
        .then(|| {
            let (flag, s) = (Arc::new(AtomicBool::new(false)), shared.clone());
            let f = flag.clone();
            let task = tokio::task::spawn_blocking(move || {
                if let Some(c) = s.client() {
                    c.follow_network_namespaces(&f);
                }
            });
            (flag, task)
        });
    check_client(&shared, reporter.as_ref(), &mut stop).await;
    if let Some((flag, task)) = follower {
        flag.store(true, Ordering::SeqCst);
        if let Err(e) = task.await {
            warn!(error = %e, "network namespace follower ended abnormally");
        }
    }
}

/// Checks the client until `stop` (see [`watch_client`]).
async fn check_client(
    shared: &Arc<Shared>,
    reporter: Option<&NodeReporter>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut in_flight: Option<tokio::task::JoinHandle<Result<(), String>>> = None;
    loop {
        let check = in_flight.get_or_insert_with(|| {
            let s = shared.clone();
            tokio::task::spawn_blocking(move || match s.client() {
                Some(c) => c.health(&s.ctx.guard.fs_types),
                None => Ok(()),
            })
        });
        let health = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            done = tokio::time::timeout(CLIENT_CHECK_TIMEOUT, check) => match done {
                Ok(joined) => {
                    in_flight = None;
                    joined.unwrap_or_else(|e| Err(e.to_string()))
                }
                Err(_) => Err(format!(
                    "the AFS root did not answer within {}",
                    humantime::format_duration(CLIENT_CHECK_TIMEOUT)
                )),
            },
        };
        apply_client_health(shared, reporter, health).await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(CLIENT_CHECK_INTERVAL) => {}
        }
    }
}

async fn apply_client_health(
    shared: &Arc<Shared>,
    reporter: Option<&NodeReporter>,
    health: Result<(), String>,
) {
    if !shared.set_client_health(health.clone()) {
        return;
    }
    match &health {
        Ok(()) => info!(detail = %shared.detail(), "AFS client up"),
        Err(why) => warn!(reason = %why, "AFS client down: node not ready"),
    }
    shared.metrics.ready.set(i64::from(shared.is_ready()));
    if let Some(r) = reporter {
        let usage = current_usage(shared.clone()).await;
        if let Err(e) = r
            .report(shared.is_ready(), &shared.detail(), usage.as_ref())
            .await
        {
            warn!(error = %e, "node readiness report failed");
        }
    }
}
