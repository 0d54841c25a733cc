use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kmod_manager::cli::{Cli, Command, LogFormat};
use kmod_manager::{app, daemon};
use tracing_subscriber::EnvFilter;

#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a pod's log (kubectl logs, a log shipper) gets text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    // Every error message already carries its cause: print it once, not as a chain.
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Select(a) => app::select(&a, &mut out)?,
        Command::Status(a) => app::status(&a, &mut out)?,
        Command::Load(a) => app::load(&a, &mut out)?,
        Command::Unload(a) => app::unload_cmd(&a, &mut out)?,
        Command::Stopwatch(a) => app::stopwatch(&a, &mut out)?,
        Command::Run(a) => {
            drop(out);
            return Ok(daemon::run(a)?);
        }
    }
    out.flush()?;
    Ok(())
}
