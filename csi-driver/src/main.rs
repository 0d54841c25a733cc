use clap::Parser;
use csi_driver::config::Args;
use tracing_subscriber::EnvFilter;

/// The async side only decodes requests; mounts run on the blocking pool. One
/// worker means fewer thread wake-ups per RPC (lower latency) and less memory.
const ASYNC_WORKERS: usize = 1;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    // Blocking-pool threads would each get a glibc arena; two are plenty.
    // (glibc only: musl's allocator has no arenas and libc has no mallopt for it.)
    // SAFETY: runs before any other thread exists and only tunes malloc.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2)
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ASYNC_WORKERS)
        .enable_all()
        .build()?
        .block_on(csi_driver::server::run(args))?;
    Ok(())
}
