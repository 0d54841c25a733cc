//! The node's AFS client, brought up once the module is loaded and taken down before
//! it is unloaded: kAFS cells and its dynamic root, or the image's afsd.
//!
//! The AFS root is mounted in the host's mount namespace, so that every pod (the CSI
//! node plugin first) sees it. The driver container is not privileged, and Kubernetes
//! allows Bidirectional mount propagation only to privileged containers; instead a
//! thread of its own leaves the shared filesystem context (`unshare(CLONE_FS)`) and
//! enters the namespace of pid 1 (`setns`, CAP_SYS_ADMIN + CAP_SYS_CHROOT, hostPID).
//! The root is observed through `/proc/1/root` and `/proc/1/mountinfo`.
//!
//! afsd runs in the container with `-nomount`. The daemons it leaves as processes
//! (OpenAFS 1.8 on Linux runs its own as kernel threads) become kmod-manager's children
//! (child subreaper), so one that dies is seen; the AFS root check sees the rest.

pub mod celldb;
mod netns;
pub mod plan;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::config::{CacheManagerKind, ClientSettings};
pub use plan::{ClientPlan, ConfigFiles, PlanError, RootObservation};

/// How long afsd may take to start (a large disk cache is swept first).
const AFSD_START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the daemons may take to leave after `afsd -shutdown`.
const AFSD_STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("client.configDir: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write afsd's configuration {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter the host's mount namespace ({step}): {source}")]
    HostNamespace {
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot enter the network namespace pinned at {path}: {source}")]
    NetNamespace {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{what} {path}: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error(
        "{0} in the AFS root is busy (a process has a file open or its working directory there)"
    )]
    Busy(PathBuf),
    #[error(
        "refusing to mount the AFS root on {path}: it is not empty (it holds {entry}), and a mount would hide it"
    )]
    Occupied { path: PathBuf, entry: String },
    #[error("kAFS refused {line:?} in {path}: {source}")]
    Kafs {
        path: PathBuf,
        line: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} {args} failed ({status}): {output}")]
    Afsd {
        path: PathBuf,
        args: String,
        status: String,
        output: String,
    },
    #[error("{path} did not finish within {timeout:?}")]
    AfsdTimeout { path: PathBuf, timeout: Duration },
}

/// The client of this node.
#[derive(Debug)]
pub struct Client {
    pub plan: ClientPlan,
    proc_root: PathBuf,
    /// afsd's daemons (our children once afsd exits): pid, and how each ended.
    daemons: Mutex<Vec<(Pid, Option<String>)>>,
    /// afsd ran and was not shut down: a start tried again after a failed root mount
    /// must not run it twice.
    afsd_ran: AtomicBool,
}

/// Reads the configuration files a client of `settings` needs (absent ones as `None`).
pub fn read_files(settings: &ClientSettings) -> Result<ConfigFiles, ClientError> {
    let read = |dir: &Path, name: &str| -> Result<Option<String>, ClientError> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ClientError::Read { path, source }),
        }
    };
    let dir = &settings.config_dir;
    Ok(match settings.cache_manager {
        CacheManagerKind::Kafs | CacheManagerKind::Openafs => ConfigFiles {
            cellservdb: read(dir, "CellServDB")?,
            thiscell: read(dir, "ThisCell")?,
            ..ConfigFiles::default()
        },
        CacheManagerKind::Auristor => ConfigFiles {
            client_conf: read(dir, "yfs-client.conf")?,
            cell_database: read(
                settings.cell_database_dir.as_deref().unwrap_or(dir),
                "cellservdb.conf",
            )?,
            ..ConfigFiles::default()
        },
    })
}

/// Runs `f` on a thread of its own inside the mount namespace and the root of pid 1,
/// as `nsenter -m -r -t 1` does: the namespace's root is not always pid 1's (an init
/// that chroots, as the test VM's does).
fn in_host_namespace<T: Send>(
    proc_root: &Path,
    f: impl FnOnce() -> Result<T, ClientError> + Send,
) -> Result<T, ClientError> {
    let open = |what: &'static str| {
        std::fs::File::open(proc_root.join(what)).map_err(|e| ClientError::HostNamespace {
            step: what,
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })
    };
    let (ns, root) = (open("1/ns/mnt")?, open("1/root")?);
    let step = |step: &'static str| move |source| ClientError::HostNamespace { step, source };
    std::thread::scope(|s| {
        s.spawn(move || {
            // setns(CLONE_NEWNS) refuses a thread that shares its root and working
            // directory with others; this thread gets its own copy, and ends with f.
            nix::sched::unshare(CloneFlags::CLONE_FS).map_err(step("unshare(CLONE_FS)"))?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNS).map_err(step("setns"))?;
            nix::unistd::fchdir(&root).map_err(step("fchdir to /proc/1/root"))?;
            nix::unistd::chroot(".").map_err(step("chroot to /proc/1/root"))?;
            nix::unistd::chdir("/").map_err(step("chdir /"))?;
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Client {
    /// Reads the configuration and decides the client; nothing is started.
    /// `state_dir` is kmod-manager's writable directory (afsd's configuration goes there).
    pub fn load(
        settings: &ClientSettings,
        proc_root: &Path,
        state_dir: &Path,
    ) -> Result<Self, ClientError> {
        let files = read_files(settings)?;
        Ok(Self {
            plan: plan::plan(settings, &files, state_dir)?,
            proc_root: proc_root.to_owned(),
            daemons: Mutex::new(Vec::new()),
            afsd_ran: AtomicBool::new(false),
        })
    }

    /// The host's mounts (pid 1's mountinfo), in mount order.
    fn host_mounts(&self) -> Vec<procfs::process::MountInfo> {
        std::fs::read(self.proc_root.join("1/mountinfo"))
            .ok()
            .and_then(|text| {
                <procfs::process::MountInfos as procfs::FromBufRead>::from_buf_read(
                    std::io::Cursor::new(text),
                )
                .ok()
            })
            .map(|m| m.0)
            .unwrap_or_default()
    }

    /// The filesystem type of the top mount at the AFS root in the host's namespace.
    pub fn root_fs_type(&self) -> Option<String> {
        self.host_mounts()
            .into_iter()
            .rfind(|m| m.mount_point == self.plan.afs_root)
            .map(|m| m.fs_type)
    }

    /// `path` of the host, seen through pid 1's root.
    fn host_path(&self, path: &Path) -> PathBuf {
        self.proc_root
            .join("1/root")
            .join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Looks at the AFS root (may block on a dead server: callers bound it).
    pub fn observe_root(&self) -> RootObservation {
        let fs_type = self.root_fs_type();
        let listing = std::fs::read_dir(self.host_path(&self.plan.afs_root))
            .and_then(|rd| {
                rd.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .map_err(|e| e.to_string());
        RootObservation { fs_type, listing }
    }

    /// Whether the client is up: its daemons alive, and the AFS root AFS and listing
    /// the configured cells. `Err` says what is down.
    pub fn health(&self, fs_types: &[String]) -> Result<(), String> {
        if let Some(dead) = self.dead_daemon() {
            return Err(dead);
        }
        plan::root_health(&self.plan, fs_types, &self.observe_root())
    }

    /// Brings the client up; a client already up (a restarted container) is adopted.
    pub fn start(&self, fs_types: &[String]) -> Result<(), ClientError> {
        let started = Instant::now();
        if self.root_fs_type().is_some_and(|t| fs_types.contains(&t)) {
            info!(afs_root = %self.plan.afs_root.display(), "AFS root already mounted: adopting the running client");
            if self.plan.kind == CacheManagerKind::Kafs {
                self.give_kafs_cells(&self.proc_root.join("fs/afs"))?;
            }
            return Ok(());
        }
        match &self.plan.afsd {
            None => self.give_kafs_cells(&self.proc_root.join("fs/afs"))?,
            Some(_) if self.afsd_ran.load(Ordering::SeqCst) => {}
            Some((path, args)) => {
                self.run_afsd(path, args)?;
                self.afsd_ran.store(true, Ordering::SeqCst);
            }
        }
        self.mount_root(fs_types)?;
        info!(
            cache_manager = self.plan.kind.as_str(),
            afs_root = %self.plan.afs_root.display(),
            this_cell = %self.plan.this_cell,
            cells = self.plan.expected_cells.len(),
            daemons = self.daemons.lock().map(|d| d.len()).unwrap_or(0),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "AFS client up"
        );
        Ok(())
    }

    /// kAFS: every cell of the cell database, then this cell as the root cell, through
    /// `dir` (kAFS's procfs directory). Cells live in the network namespace of that
    /// directory: `fs/afs` is the writer's (the node's: hostNetwork); see [`netns`].
    fn give_kafs_cells(&self, dir: &Path) -> Result<(), ClientError> {
        let write = |file: &str, line: String| -> Result<(), ClientError> {
            let path = dir.join(file);
            let result = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            match result {
                Ok(()) => Ok(()),
                // Given before (an adopted client): kAFS keeps cells until unloaded.
                Err(e) if e.raw_os_error() == Some(Errno::EEXIST as i32) => Ok(()),
                Err(source) => Err(ClientError::Kafs { path, line, source }),
            }
        };
        for cell in &self.plan.cells {
            write("cells", plan::kafs_add_line(cell))?;
        }
        let current = std::fs::read_to_string(dir.join("rootcell")).unwrap_or_default();
        if current.trim() != self.plan.this_cell {
            write("rootcell", self.plan.this_cell.clone())?;
        }
        Ok(())
    }

    fn run_afsd(&self, path: &Path, args: &[std::ffi::OsString]) -> Result<(), ClientError> {
        if let Some(conf) = &self.plan.afsd_conf {
            write_afsd_conf(conf)?;
        }
        writable_proc_fs(Path::new("/proc/fs"))?;
        // afsd's daemons outlive it; as their subreaper we can wait for them.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(error = %e, "cannot become the subreaper of afsd's daemons: their exit goes unnoticed");
        }
        let out = run_bounded(path, args, AFSD_START_TIMEOUT)?;
        // Double-forked daemons reach us through intermediate parents that exit at
        // once: let them settle and reap those, then the live children are the daemons.
        std::thread::sleep(Duration::from_millis(300));
        let daemons: Vec<Pid> = children(&self.proc_root)
            .into_iter()
            .filter_map(|(pid, zombie)| {
                if zombie {
                    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                    None
                } else {
                    Some(pid)
                }
            })
            .collect();
        info!(path = %path.display(), daemons = daemons.len(), output = %out.trim(), "afsd started");
        if let Ok(mut d) = self.daemons.lock() {
            *d = daemons.into_iter().map(|p| (p, None)).collect();
        }
        Ok(())
    }

    /// The first afsd daemon that ended, as a sentence (kept once seen).
    fn dead_daemon(&self) -> Option<String> {
        let mut daemons = self.daemons.lock().ok()?;
        for (pid, end) in daemons.iter_mut() {
            if end.is_none() {
                *end = match waitpid(*pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => Some(format!("exited with status {code}")),
                    Ok(WaitStatus::Signaled(_, sig, _)) => Some(format!("was killed by {sig}")),
                    Ok(_) => None,
                    // Not (or no longer) our child: alive while it exists.
                    Err(_) => nix::sys::signal::kill(*pid, None)
                        .is_err()
                        .then(|| "is gone".to_owned()),
                };
            }
            if let Some(end) = end {
                return Some(format!("afsd daemon {pid} {end}"));
            }
        }
        None
    }

    /// Mounts the AFS root in the host's namespace (creating its directory).
    pub fn mount_root(&self, fs_types: &[String]) -> Result<(), ClientError> {
        let root = self.plan.afs_root.clone();
        if self.root_fs_type().is_some_and(|t| fs_types.contains(&t)) {
            return Ok(());
        }
        // Never hide anything: the directory must be empty (or not exist yet).
        if let Ok(Some(entry)) = self.host_path(&root).read_dir().map(|mut rd| rd.next()) {
            return Err(ClientError::Occupied {
                path: root,
                entry: entry.map_or_else(
                    |e| e.to_string(),
                    |e| e.file_name().to_string_lossy().into_owned(),
                ),
            });
        }
        let (source, data) = match self.plan.kind {
            CacheManagerKind::Kafs => ("none", Some("dyn")),
            _ => ("AFS", None),
        };
        in_host_namespace(&self.proc_root, || {
            std::fs::create_dir_all(&root).map_err(|e| ClientError::Mount {
                what: "cannot create the AFS root",
                path: root.clone(),
                source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
            nix::mount::mount(
                Some(source),
                &root,
                Some("afs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                data,
            )
            .map_err(|source| ClientError::Mount {
                what: "cannot mount the AFS root",
                path: root.clone(),
                source,
            })
        })
    }

    /// Unmounts the AFS root in the host's namespace, after the volumes kAFS automounted
    /// below it, deepest first (its copies in other namespaces follow through
    /// propagation). Never detached: a busy mount stays, and so does the root.
    pub fn unmount_root(&self, fs_types: &[String]) -> Result<(), ClientError> {
        let mut tree: Vec<PathBuf> = self
            .host_mounts()
            .into_iter()
            .filter(|m| {
                m.mount_point.starts_with(&self.plan.afs_root) && fs_types.contains(&m.fs_type)
            })
            .map(|m| m.mount_point)
            .collect();
        if tree.is_empty() {
            return Ok(());
        }
        tree.reverse();
        in_host_namespace(&self.proc_root, || {
            for path in &tree {
                match nix::mount::umount2(path, MntFlags::empty()) {
                    Ok(()) => {}
                    // An automount that expired meanwhile.
                    Err(Errno::EINVAL | Errno::ENOENT) if *path != self.plan.afs_root => {}
                    Err(Errno::EBUSY) => return Err(ClientError::Busy(path.clone())),
                    Err(source) => {
                        return Err(ClientError::Mount {
                            what: "cannot unmount",
                            path: path.clone(),
                            source,
                        });
                    }
                }
            }
            Ok(())
        })
    }

    /// Stops afsd (`afsd -shutdown`, the AFS root unmounted first) and waits for its
    /// daemons to leave. Nothing to stop for kAFS: its cells go with the module.
    pub fn stop(&self) -> Result<(), ClientError> {
        let Some((path, _)) = &self.plan.afsd else {
            return Ok(());
        };
        let out = run_bounded(path, &["-shutdown".into()], AFSD_STOP_TIMEOUT)?;
        self.afsd_ran.store(false, Ordering::SeqCst);
        info!(output = %out.trim(), "afsd -shutdown");
        let deadline = Instant::now() + AFSD_STOP_TIMEOUT;
        loop {
            let alive = self
                .daemons
                .lock()
                .map(|mut d| {
                    d.retain(|(pid, _)| {
                        matches!(
                            waitpid(*pid, Some(WaitPidFlag::WNOHANG)),
                            Ok(WaitStatus::StillAlive)
                        )
                    });
                    d.len()
                })
                .unwrap_or(0);
            if alive == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                warn!(alive, "afsd daemons still running after -shutdown");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A container runtime makes `/proc/fs` read-only (the OCI default `readonlyPaths`),
/// and afsd opens `/proc/fs/openafs/afs_ioctl` read-write for every cache-manager call
/// ("Error -1 in basic initialization"). In the kmod container's own mount namespace,
/// which afsd shares, that bind is made writable again; the host's is not touched.
fn writable_proc_fs(path: &Path) -> Result<(), ClientError> {
    let read_only = nix::sys::statvfs::statvfs(path)
        .is_ok_and(|st| st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    if !read_only {
        return Ok(());
    }
    nix::mount::mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| ClientError::Mount {
        what: "making afsd's cache-manager interface writable:",
        path: path.to_owned(),
        source,
    })?;
    info!(path = %path.display(), "made read-write for afsd (the runtime mounts it read-only)");
    Ok(())
}

/// Writes afsd's configuration directory (replacing what an earlier run left).
fn write_afsd_conf(conf: &plan::AfsdConf) -> Result<(), ClientError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| ClientError::Write { path, source }
    };
    std::fs::create_dir_all(&conf.dir).map_err(failed(&conf.dir))?;
    for (name, text) in &conf.files {
        let path = conf.dir.join(name);
        std::fs::write(&path, text).map_err(failed(&path))?;
    }
    Ok(())
}

/// Runs `path args` to its end within `timeout`; its output on success.
fn run_bounded(
    path: &Path,
    args: &[std::ffi::OsString],
    timeout: Duration,
) -> Result<String, ClientError> {
    let shown = || {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    // A file, not a pipe: afsd's daemons inherit its output and would die of SIGPIPE
    // writing to a pipe nobody reads any more.
    let spawn_err = |source| ClientError::Spawn {
        path: path.to_owned(),
        source,
    };
    // In memory (memfd): the kmod pod's root filesystem is read-only and a scratch
    // image has no /tmp, so a temporary file there cannot be made.
    let mut log = std::fs::File::from(
        nix::sys::memfd::memfd_create(c"afsd-output", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| spawn_err(std::io::Error::from(e)))?,
    );
    let mut child = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(spawn_err)?)
        .stderr(log.try_clone().map_err(spawn_err)?)
        .spawn()
        .map_err(spawn_err)?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(spawn_err(e)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ClientError::AfsdTimeout {
                    path: path.to_owned(),
                    timeout,
                });
            }
        }
    };
    let mut output = Vec::new();
    let _ = log.seek(SeekFrom::Start(0));
    let _ = log.take(64 * 1024).read_to_end(&mut output);
    let output = String::from_utf8_lossy(&output).into_owned();
    if status.success() {
        Ok(output)
    } else {
        Err(ClientError::Afsd {
            path: path.to_owned(),
            args: shown(),
            status: status.to_string(),
            output: output.trim().to_owned(),
        })
    }
}

/// Children of this process, and whether each is a zombie.
fn children(proc_root: &Path) -> Vec<(Pid, bool)> {
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let Ok(all) = procfs::process::all_processes_with_root(proc_root) else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| p.stat().ok())
        .filter(|s| s.ppid == me)
        .map(|s| (Pid::from_raw(s.pid), s.state == 'Z'))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn client(afsd: Option<PathBuf>, proc_root: &Path) -> Client {
        Client {
            plan: ClientPlan {
                kind: if afsd.is_some() {
                    CacheManagerKind::Openafs
                } else {
                    CacheManagerKind::Kafs
                },
                afs_root: "/afs".into(),
                this_cell: "test.afs".into(),
                cells: vec![],
                expected_cells: vec!["test.afs".into()],
                afsd: afsd.map(|p| (p, vec![])),
                afsd_conf: None,
            },
            proc_root: proc_root.to_owned(),
            daemons: Mutex::new(Vec::new()),
            afsd_ran: AtomicBool::new(false),
        }
    }

    /// run_afsd reaps every zombie child of the process (afsd's intermediate parents):
    /// tests that run an afsd take turns, or one reaps another's.
    static ONE_AFSD: Mutex<()> = Mutex::new(());

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("afsd");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// afsd exits once its daemons run; kmod-manager adopts them (subreaper) and sees
    /// one die.
    #[test]
    fn afsd_daemons_are_supervised() {
        let _turn = ONE_AFSD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().expect("tempdir");
        let afsd = script(
            dir.path(),
            "sleep 600 </dev/null >/dev/null 2>&1 &\necho 'afsd: All AFS daemons started.'",
        );
        let c = client(Some(afsd.clone()), Path::new("/proc"));
        c.run_afsd(&afsd, &[]).expect("afsd starts");
        let daemons: Vec<Pid> = c
            .daemons
            .lock()
            .expect("lock")
            .iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(daemons.len(), 1, "the daemon is our child once afsd exits");
        assert_eq!(c.dead_daemon(), None);
        nix::sys::signal::kill(daemons[0], nix::sys::signal::Signal::SIGKILL).expect("kill");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = None;
        while seen.is_none() && Instant::now() < deadline {
            seen = c.dead_daemon();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            seen,
            Some(format!("afsd daemon {} was killed by SIGKILL", daemons[0]))
        );
    }

    #[test]
    fn a_failing_afsd_is_reported_with_its_output() {
        let _turn = ONE_AFSD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().expect("tempdir");
        let afsd = script(
            dir.path(),
            "echo 'afsd: some file missing or bad in /etc/openafs'\nexit 1",
        );
        let e = client(Some(afsd.clone()), Path::new("/proc"))
            .run_afsd(&afsd, &["-nomount".into()])
            .expect_err("fails");
        let msg = e.to_string();
        assert!(msg.contains("-nomount failed (exit status: 1)"), "{msg}");
        assert!(
            msg.contains("some file missing or bad in /etc/openafs"),
            "{msg}"
        );
    }

    /// afsd finds its cacheinfo and cell database in the directory kmod-manager wrote
    /// (the map has no cacheinfo, and afsd stops without one).
    #[test]
    fn afsd_reads_the_configuration_kmod_manager_wrote() {
        let _turn = ONE_AFSD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("state/openafs-conf");
        let afsd = script(
            dir.path(),
            &format!("cat {0}/cacheinfo {0}/ThisCell", conf.display()),
        );
        let mut c = client(Some(afsd.clone()), Path::new("/proc"));
        c.plan.afsd_conf = Some(plan::AfsdConf {
            dir: conf.clone(),
            files: vec![
                ("ThisCell", "test.afs\n".into()),
                ("cacheinfo", "/afs:/x:20000\n".into()),
            ],
        });
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(conf.join("cacheinfo"), "left by an earlier run").expect("stale");
        c.run_afsd(&afsd, &[]).expect("afsd runs");
        assert_eq!(
            std::fs::read_to_string(conf.join("cacheinfo")).expect("written"),
            "/afs:/x:20000\n"
        );
    }

    /// A start tried again after the root mount failed does not run afsd twice.
    #[test]
    fn a_retried_start_runs_afsd_once() {
        let _turn = ONE_AFSD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let proc_root = tempfile::tempdir().expect("tempdir");
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(proc_root.path().join("1")).expect("mkdir");
        std::os::unix::fs::symlink(host.path(), proc_root.path().join("1/root")).expect("link");
        std::fs::write(proc_root.path().join("1/mountinfo"), "").expect("mountinfo");
        std::fs::create_dir_all(host.path().join("afs")).expect("mkdir");
        std::fs::write(host.path().join("afs/precious"), "data").expect("file");
        let runs = host.path().join("runs");
        let afsd = script(host.path(), &format!("echo run >> {}", runs.display()));
        let c = client(Some(afsd), proc_root.path());
        for _ in 0..2 {
            assert!(matches!(
                c.start(&["afs".to_owned()]),
                Err(ClientError::Occupied { .. })
            ));
        }
        assert_eq!(std::fs::read_to_string(&runs).expect("ran"), "run\n");
    }

    /// The runtime's read-only /proc/fs is made writable for afsd (a read-only bind
    /// stands in for it here).
    #[test]
    fn a_read_only_proc_fs_is_made_writable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        let bound = nix::mount::mount(
            Some(dir.path()),
            dir.path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .and_then(|()| nix::mount::mount(None::<&str>, dir.path(), None::<&str>, ro, None::<&str>));
        if let Err(e) = bound {
            eprintln!("skipped: cannot bind-mount here ({e})");
            return;
        }
        let probe = dir.path().join("probe");
        assert!(std::fs::write(&probe, "x").is_err(), "read-only first");
        writable_proc_fs(dir.path()).expect("made writable");
        let written = std::fs::write(&probe, "x");
        nix::mount::umount2(dir.path(), MntFlags::MNT_DETACH).expect("umount");
        written.expect("writable now");
    }

    /// The AFS root is never mounted over a directory that holds something.
    #[test]
    fn the_afs_root_never_hides_anything() {
        let proc_root = tempfile::tempdir().expect("tempdir");
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(proc_root.path().join("1")).expect("mkdir");
        std::os::unix::fs::symlink(host.path(), proc_root.path().join("1/root")).expect("link");
        std::fs::write(proc_root.path().join("1/mountinfo"), "").expect("mountinfo");
        std::fs::create_dir_all(host.path().join("afs")).expect("mkdir");
        std::fs::write(host.path().join("afs/precious"), "data").expect("file");
        let e = client(None, proc_root.path())
            .mount_root(&["afs".to_owned()])
            .expect_err("refused");
        assert_eq!(
            e.to_string(),
            "refusing to mount the AFS root on /afs: it is not empty (it holds precious), and a mount would hide it"
        );
        assert!(host.path().join("afs/precious").exists());
    }
}
