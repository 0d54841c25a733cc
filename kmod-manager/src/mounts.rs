//! Observing mounts in every mount namespace, and CSI targets published by kubelet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use procfs::FromBufRead;
use serde::{Deserialize, Serialize};

/// One mount as seen inside a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: Option<String>,
}

/// A mount namespace, the processes in it, and its mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountNamespace {
    /// Inode of `/proc/<pid>/ns/mnt`.
    pub id: u64,
    /// User-space processes in the namespace (kernel threads are left out).
    pub pids: Vec<i32>,
    pub mounts: Vec<MountEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot list {path}: {source}")]
    ListProc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "mount namespace {ns}: no process in it has a readable mountinfo (tried pids {pids:?})"
    )]
    Unreadable { ns: u64, pids: Vec<i32> },
}

/// Parses the target of `/proc/<pid>/ns/mnt` (`mnt:[4026531841]`).
pub fn parse_ns_link(link: &str) -> Option<u64> {
    link.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

/// Groups every process by mount namespace and reads one mountinfo per namespace.
///
/// Processes that exit during the scan are skipped; a namespace whose every process
/// vanished is dropped (it died with them). A namespace that exists but whose mounts
/// cannot be read is an error: the guard must not assume it is empty.
pub fn scan_namespaces(proc_root: &Path) -> Result<Vec<MountNamespace>, ScanError> {
    let rd = std::fs::read_dir(proc_root).map_err(|source| ScanError::ListProc {
        path: proc_root.to_owned(),
        source,
    })?;
    // Per namespace: user-space pids, and every pid (kernel threads can still serve
    // to read the namespace's mountinfo).
    let mut by_ns: BTreeMap<u64, (Vec<i32>, Vec<i32>)> = BTreeMap::new();
    for entry in rd.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(link) = std::fs::read_link(entry.path().join("ns/mnt")) else {
            continue; // exited, or a kernel thread without a readable namespace
        };
        if let Some(ns) = link.to_str().and_then(parse_ns_link) {
            let (user, all) = by_ns.entry(ns).or_default();
            all.push(pid);
            // Kernel threads have no executable.
            if std::fs::read_link(entry.path().join("exe")).is_ok() {
                user.push(pid);
            }
        }
    }
    // One mountinfo per namespace; namespaces are read in parallel (the kernel renders
    // each file, and parsing 10,000 entries is the bulk of a decision).
    let jobs: Vec<(u64, Vec<i32>, Vec<i32>)> = by_ns
        .into_iter()
        .map(|(id, (mut pids, mut all))| {
            pids.sort_unstable();
            all.sort_unstable();
            (id, pids, all)
        })
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, 8);
    let chunk = jobs.len().div_ceil(threads).max(1);
    let results: Vec<Result<Option<MountNamespace>, ScanError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(id, pids, all)| read_namespace(proc_root, *id, pids, all))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(ScanError::Unreadable {
                        ns: 0,
                        pids: Vec::new(),
                    })]
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        if let Some(ns) = r? {
            out.push(ns);
        }
    }
    Ok(out)
}

/// Reads the mounts of one namespace through the first of its processes still alive.
fn read_namespace(
    proc_root: &Path,
    id: u64,
    pids: &[i32],
    all: &[i32],
) -> Result<Option<MountNamespace>, ScanError> {
    let mut any_alive = false;
    for pid in all {
        let path = proc_root.join(pid.to_string()).join("mountinfo");
        match std::fs::File::open(&path) {
            Ok(f) => {
                any_alive = true;
                if let Ok(infos) =
                    procfs::process::MountInfos::from_buf_read(std::io::BufReader::new(f))
                {
                    return Ok(Some(MountNamespace {
                        id,
                        pids: pids.to_vec(),
                        mounts: infos
                            .into_iter()
                            .map(|m| MountEntry {
                                mount_point: m.mount_point,
                                fs_type: m.fs_type,
                                source: m.mount_source,
                            })
                            .collect(),
                    }));
                }
            }
            Err(e) if has_left(&e) => {}
            Err(_) => any_alive = true,
        }
    }
    if any_alive {
        Err(ScanError::Unreadable {
            ns: id,
            pids: all.to_vec(),
        })
    } else {
        Ok(None)
    }
}

/// Whether opening `/proc/<pid>/mountinfo` failed because the process is gone or is
/// leaving: ENOENT once it is reaped, EINVAL while it exits (the kernel has already
/// dropped its namespaces). Seen under a real kubelet: the CSI node plugin exiting
/// while a kmod pod stops. Its mounts go with its namespace; the kernel's module
/// refcount still guards what they pinned.
fn has_left(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
        || e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32)
}

/// A CSI volume kubelet published for a pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CsiTarget {
    pub pod_uid: String,
    pub volume: String,
    /// `<kubelet-dir>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`.
    pub target_path: PathBuf,
    pub driver_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolData {
    driver_name: Option<String>,
}

/// Finds the targets of `driver` by their `vol_data.json`. Unreadable or foreign
/// entries are skipped: only targets provably of our driver are returned.
pub fn find_csi_targets(kubelet_dir: &Path, driver: &str) -> Vec<CsiTarget> {
    let mut out = Vec::new();
    let Ok(pods) = std::fs::read_dir(kubelet_dir.join("pods")) else {
        return out;
    };
    for pod in pods.filter_map(Result::ok) {
        let pod_uid = pod.file_name().to_string_lossy().into_owned();
        let Ok(vols) = std::fs::read_dir(pod.path().join("volumes/kubernetes.io~csi")) else {
            continue;
        };
        for vol in vols.filter_map(Result::ok) {
            let Ok(text) = std::fs::read(vol.path().join("vol_data.json")) else {
                continue;
            };
            let Ok(data) = serde_json::from_slice::<VolData>(&text) else {
                continue;
            };
            if data.driver_name.as_deref() == Some(driver) {
                out.push(CsiTarget {
                    pod_uid: pod_uid.clone(),
                    volume: vol.file_name().to_string_lossy().into_owned(),
                    target_path: vol.path().join("mount"),
                    driver_name: driver.to_owned(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.target_path.cmp(&b.target_path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_link() {
        assert_eq!(parse_ns_link("mnt:[4026531841]"), Some(4026531841));
        assert_eq!(parse_ns_link("net:[1]"), None);
        assert_eq!(parse_ns_link("mnt:[x]"), None);
    }

    #[test]
    fn csi_targets_by_driver() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mk = |uid: &str, vol: &str, json: &str| {
            let d = dir
                .path()
                .join("pods")
                .join(uid)
                .join("volumes/kubernetes.io~csi")
                .join(vol);
            std::fs::create_dir_all(d.join("mount")).expect("mkdir");
            std::fs::write(d.join("vol_data.json"), json).expect("write");
        };
        mk(
            "u1",
            "pv-a",
            r#"{"driverName":"auristorfs.csi.auristor.com","volumeHandle":"x"}"#,
        );
        mk("u2", "pv-b", r#"{"driverName":"other.csi.example.com"}"#);
        mk("u3", "pv-c", "not json");
        let t = find_csi_targets(dir.path(), "auristorfs.csi.auristor.com");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].pod_uid, "u1");
        assert!(t[0].target_path.ends_with("kubernetes.io~csi/pv-a/mount"));
        assert!(find_csi_targets(&dir.path().join("nope"), "x").is_empty());
    }

    #[test]
    fn a_process_leaving_its_namespace_is_not_a_reader() {
        let io = |errno| std::io::Error::from_raw_os_error(errno);
        assert!(has_left(&io(nix::errno::Errno::ENOENT as i32)));
        assert!(has_left(&io(nix::errno::Errno::EINVAL as i32)));
        // Anything else may hide a namespace that still holds mounts: not read, refused.
        assert!(!has_left(&io(nix::errno::Errno::EACCES as i32)));
        assert!(!has_left(&io(nix::errno::Errno::EPERM as i32)));
    }

    #[test]
    fn scans_own_namespace() {
        // The test process itself is in some namespace with at least one mount.
        let ns = scan_namespaces(Path::new("/proc")).expect("scan");
        let me = std::process::id() as i32;
        let mine = ns.iter().find(|n| n.pids.contains(&me)).expect("own ns");
        assert!(!mine.mounts.is_empty());
        assert!(mine.mounts.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
