//! The pod sandbox's first process: it holds the pod's namespaces open, reaps the
//! orphans the pod's containers leave (it is their init when the pod shares one PID
//! namespace) and exits 0 on SIGINT or SIGTERM. It reads and writes nothing, so a
//! scratch image with this one static binary is the whole sandbox image.
//!
//! The signals are blocked and taken with `sigwait`: no handler runs on an arbitrary
//! stack, and a child that exits between two waits is reaped on the next SIGCHLD.

use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::getpid;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("afs-pause {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("pause: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    if getpid().as_raw() != 1 {
        eprintln!("pause: not PID 1; orphans of this PID namespace reach another init");
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pause: sigwait: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Waits for every child that has exited; several exits may share one SIGCHLD.
fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("pause: waitpid: {e}");
                return;
            }
        }
    }
}
