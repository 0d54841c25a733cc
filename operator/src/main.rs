use std::net::SocketAddr;
use std::sync::Arc;

use afs_operator::objects::{OPERATOR_ACCOUNT, OPERATOR_ACCOUNT_NAMESPACE, OperatorAccount};
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// Places the AFS kernel module and CSI driver on node groups and rolls them out.
#[derive(Debug, Parser)]
#[command(name = "afs-operator", version)]
struct Args {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "AFS_OPERATOR_METRICS_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    metrics_address: SocketAddr,
    /// Log as JSON lines.
    #[arg(long, env = "AFS_OPERATOR_LOG_JSON")]
    log_json: bool,
    /// The ServiceAccount this operator runs as (in a pod: the downward API's
    /// `spec.serviceAccountName`). It binds its namespaced role to this account in each
    /// SR namespace.
    #[arg(long, env = "AFS_OPERATOR_SERVICE_ACCOUNT", default_value = OPERATOR_ACCOUNT)]
    service_account: String,
    /// The namespace of that ServiceAccount (in a pod: `metadata.namespace`).
    #[arg(long, env = "AFS_OPERATOR_NAMESPACE", default_value = OPERATOR_ACCOUNT_NAMESPACE)]
    service_account_namespace: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if args.log_json {
        logs.json().init()
    } else {
        logs.init()
    }

    let client = kube::Client::try_default().await?;
    let mut registry = Registry::default();
    let metrics = Arc::new(afs_operator::metrics::Metrics::register(&mut registry));
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move { while !*stopped.borrow_and_update() && stopped.changed().await.is_ok() {} }
    };
    let http = afs_operator::http::serve(args.metrics_address, Arc::new(registry), until_stopped());
    let account = OperatorAccount {
        name: args.service_account,
        namespace: args.service_account_namespace,
    };
    let controller = afs_operator::controller::run_as(client, metrics, account, until_stopped());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signals = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        let _ = stop.send(true);
        Ok::<_, std::io::Error>(())
    };
    tokio::try_join!(
        http,
        async {
            controller.await;
            Ok(())
        },
        signals
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_are_consistent() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
