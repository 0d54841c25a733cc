use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use afsctl::cluster::Target;
use afsctl::commands::{self, DeployOptions, UndeployOptions};
use clap::{Args, Parser, Subcommand};

/// Deploys, follows and removes AFS node groups (SpecialResources): the kernel module
/// and CSI driver on the nodes a SpecialResource selects.
#[derive(Debug, Parser)]
#[command(name = "afsctl", version)]
struct Cli {
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a SpecialResource file against the CRD's rules (no cluster needed) and,
    /// with --maps, the maps its AFS client reads.
    Validate {
        file: PathBuf,
        /// Print `NAME NAMESPACE` for scripts instead of a sentence.
        #[arg(long)]
        shell: bool,
        /// YAML files of the ConfigMaps and Secrets the SpecialResource mounts (e.g.
        /// `kubectl create configmap ... --dry-run=client -o yaml`): the maps at
        /// client.configDir and client.cellDatabaseDir must hold the files the AFS
        /// client reads.
        #[arg(long = "maps", value_name = "FILE")]
        maps: Vec<PathBuf>,
    },
    /// Install or upgrade the CRD and the operator (deploy installs them when missing).
    Install {
        #[command(flatten)]
        operator: Operator,
    },
    /// Install what is missing, run the create-maps script, apply the SpecialResource
    /// and follow every node until it serves AFS.
    Deploy {
        #[command(flatten)]
        file: SrFile,
        #[command(flatten)]
        create: CreateMaps,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        operator: Operator,
    },
    /// Remove the SpecialResource once nothing uses AFS on its nodes, unload its modules,
    /// run the delete-maps script, delete its namespace and verify nothing is left.
    Undeploy {
        #[command(flatten)]
        file: SrFile,
        #[command(flatten)]
        delete: DeleteMaps,
        #[command(flatten)]
        force: Force,
        #[command(flatten)]
        wait: Wait,
    },
    /// Undeploy, then deploy.
    Redeploy {
        #[command(flatten)]
        file: SrFile,
        #[command(flatten)]
        create: CreateMaps,
        #[command(flatten)]
        delete: DeleteMaps,
        #[command(flatten)]
        force: Force,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        operator: Operator,
    },
    /// The rollout per node, followed until it is done (like `kubectl rollout status`).
    Status {
        /// SpecialResource name (default: the one in SPECIAL_RESOURCE_FILE).
        name: Option<String>,
        #[arg(long, env = "SPECIAL_RESOURCE_FILE", hide_env_values = true)]
        file: Option<PathBuf>,
        /// Follow until the rollout is done; `--watch=false` prints once.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Debug, Args)]
struct SrFile {
    /// The SpecialResource YAML (set by `source bin/setupEnvironment`).
    #[arg(long, env = "SPECIAL_RESOURCE_FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
struct CreateMaps {
    /// Script creating the ConfigMaps and Secrets the SpecialResource mounts.
    #[arg(long, env = "CREATE_MAP_COMMAND")]
    create_maps: PathBuf,
}

#[derive(Debug, Args)]
struct DeleteMaps {
    /// Script deleting what the create-maps script made.
    #[arg(long, env = "DELETE_MAP_COMMAND")]
    delete_maps: PathBuf,
}

#[derive(Debug, Args)]
struct Force {
    /// Delete the SpecialResource although pods use AFS on its nodes; each node is
    /// released (module unloaded) only once its pods are gone.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct Wait {
    /// How long to wait for nodes, modules and namespaces (e.g. 90s, 10m).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct Operator {
    /// Operator image instead of the one in deploy/operator.yaml.
    #[arg(long, env = "AFS_OPERATOR_IMAGE")]
    operator_image: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let target = Target {
        kubeconfig: cli.kubeconfig,
        context: cli.context,
    };
    match run(cli.command, &target).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("afsctl: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, target: &Target) -> anyhow::Result<()> {
    let out = &mut std::io::stdout().lock();
    let deploy =
        |file: &SrFile, create: CreateMaps, wait: &Wait, operator: Operator| DeployOptions {
            file: file.file.clone(),
            create_maps: create.create_maps,
            timeout: wait.timeout,
            operator_image: operator.operator_image,
        };
    let undeploy = |file: &SrFile, delete: DeleteMaps, force: Force, wait: &Wait| UndeployOptions {
        file: file.file.clone(),
        delete_maps: delete.delete_maps,
        force: force.force,
        timeout: wait.timeout,
    };
    // Undeploy first, then deploy: redeploy is both.
    let (to_undeploy, to_deploy) = match command {
        Command::Validate { file, shell, maps } => {
            let sr = commands::validate(&file, &maps)?;
            let (name, namespace) = (kube::ResourceExt::name_any(&sr), &sr.spec.namespace);
            if shell {
                writeln!(out, "{name} {namespace}")?;
            } else {
                let file = file.display();
                writeln!(
                    out,
                    "{file}: SpecialResource {name} (namespace {namespace}) is valid"
                )?;
            }
            return Ok(());
        }
        Command::Install { operator } => {
            let client = target.client().await?;
            let image = operator.operator_image.as_deref();
            afsctl::install::ensure(&client, image, true, out).await?;
            return Ok(());
        }
        Command::Status {
            name,
            file,
            watch,
            wait,
        } => {
            let name = match (name, file) {
                (Some(name), _) => name,
                (None, Some(file)) => kube::ResourceExt::name_any(&commands::load(&file)?),
                (None, None) => anyhow::bail!(
                    "which SpecialResource? give its name, --file, or `source bin/setupEnvironment` first"
                ),
            };
            let client = target.client().await?;
            commands::follow(&client, &name, wait.timeout, watch, out).await?;
            return Ok(());
        }
        Command::Deploy {
            file,
            create,
            wait,
            operator,
        } => (None, Some(deploy(&file, create, &wait, operator))),
        Command::Undeploy {
            file,
            delete,
            force,
            wait,
        } => (Some(undeploy(&file, delete, force, &wait)), None),
        Command::Redeploy {
            file,
            create,
            delete,
            force,
            wait,
            operator,
        } => (
            Some(undeploy(&file, delete, force, &wait)),
            Some(deploy(&file, create, &wait, operator)),
        ),
    };
    let client = target.client().await?;
    if let Some(options) = to_undeploy {
        commands::undeploy(&client, target, &options, out).await?;
    }
    if let Some(options) = to_deploy {
        commands::deploy(&client, target, &options, out).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_are_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
