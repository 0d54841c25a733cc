//! kAFS keeps its cells per network namespace, and crosses a mount point (a cell of the
//! dynamic root, a mount point inside a volume) in the network namespace of the process
//! that steps on it. A pod has a network namespace of its own, where kAFS knows no cell:
//! its first step below a cell would fail with EDESTADDRREQ, whatever the node has.
//!
//! So every network namespace that the runtime pins on the node gets the node's cells as
//! soon as its pin appears. containerd, CRI-O and `ip netns` pin a pod's namespace with a
//! bind mount of nsfs before the sandbox starts, so a change of pid 1's mount table
//! (`poll` POLLPRI on its mountinfo) announces each one before any of its processes runs.
//! Cells are the node's own configuration, the same in every namespace; a pod without an
//! AFS volume has no AFS mount to use them through.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use procfs::process::MountInfo;
use tracing::{info, warn};

use super::{Client, ClientError};

/// How often the follower looks at its stop flag while the mount table is quiet.
const STOP_CHECK_MS: u16 = 500;

/// The network namespaces pinned in `mounts` (pid 1's): nsfs mounts whose root is
/// `net:[<inode>]`, by namespace inode, each with one of its pins.
fn pinned_net_namespaces(mounts: &[MountInfo]) -> BTreeMap<u64, PathBuf> {
    let mut pinned = BTreeMap::new();
    for m in mounts.iter().filter(|m| m.fs_type == "nsfs") {
        let inode = m
            .root
            .strip_prefix("net:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|n| n.parse().ok());
        if let Some(inode) = inode {
            pinned.entry(inode).or_insert_with(|| m.mount_point.clone());
        }
    }
    pinned
}

impl Client {
    /// Gives the cells to each pinned network namespace not in `given` and records it
    /// there; namespaces whose pins are gone are forgotten.
    fn give_cells_to_pinned_namespaces(&self, given: &mut BTreeSet<u64>) {
        let pinned = pinned_net_namespaces(&self.host_mounts());
        given.retain(|inode| pinned.contains_key(inode));
        for (inode, pin) in pinned {
            if !given.insert(inode) {
                continue;
            }
            match self.give_cells_in(&pin) {
                Ok(()) => {
                    info!(netns = %pin.display(), inode, cells = self.plan.cells.len(), "kAFS cells given to a pinned network namespace")
                }
                // Unpinned meanwhile: the pod is gone.
                Err(ClientError::NetNamespace {
                    source: Errno::ENOENT | Errno::EINVAL,
                    ..
                }) => {}
                Err(e) => {
                    warn!(netns = %pin.display(), error = %e, "cannot give kAFS cells to a pinned network namespace: its pods cannot cross AFS mount points")
                }
            }
        }
    }

    /// Gives the cells to the network namespace pinned at `pin` (a path of the host),
    /// from a thread that enters it.
    fn give_cells_in(&self, pin: &Path) -> Result<(), ClientError> {
        let failed = |source| ClientError::NetNamespace {
            path: pin.to_owned(),
            source,
        };
        let ns = std::fs::File::open(self.host_path(pin))
            .map_err(|e| failed(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        let afs_dir = self.proc_root.join("thread-self/net/afs");
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(failed)?;
                self.give_kafs_cells(&afs_dir)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Gives the cells to every pinned network namespace, now and whenever pid 1's
    /// mount table changes, until `stop`. Blocks: run it on a thread of its own.
    pub fn follow_network_namespaces(&self, stop: &AtomicBool) {
        let mountinfo = match std::fs::File::open(self.proc_root.join("1/mountinfo")) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "cannot watch the node's mount table: pods' network namespaces get no kAFS cells");
                return;
            }
        };
        let mut given = BTreeSet::new();
        self.give_cells_to_pinned_namespaces(&mut given);
        while !stop.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(mountinfo.as_fd(), PollFlags::POLLPRI)];
            match poll(&mut fds, PollTimeout::from(STOP_CHECK_MS)) {
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(_) => self.give_cells_to_pinned_namespaces(&mut given),
                Err(e) => {
                    warn!(error = %e, "cannot watch the node's mount table: pods' network namespaces get no kAFS cells");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(root: &str, point: &str, fs_type: &str) -> MountInfo {
        let line = format!("30 1 0:4 {root} {point} rw shared:5 - {fs_type} {fs_type} rw");
        MountInfo::from_line(&line).expect("a mountinfo line")
    }

    #[test]
    fn only_pinned_network_namespaces_count() {
        let mounts = [
            mount("/", "/run/netns", "tmpfs"),
            mount("net:[4026532281]", "/run/netns/cni-a", "nsfs"),
            // The same namespace pinned twice: given once.
            mount("net:[4026532281]", "/var/run/netns/cni-a", "nsfs"),
            mount("net:[4026532300]", "/run/netns/cni-b", "nsfs"),
            // Other namespace kinds are not kAFS's.
            mount("mnt:[4026532400]", "/run/snapd/ns/x.mnt", "nsfs"),
            mount("net:[4026532500]", "/srv/not-nsfs", "ext4"),
        ];
        let pinned = pinned_net_namespaces(&mounts);
        assert_eq!(
            pinned,
            BTreeMap::from([
                (4026532281, PathBuf::from("/run/netns/cni-a")),
                (4026532300, PathBuf::from("/run/netns/cni-b")),
            ])
        );
    }
}
