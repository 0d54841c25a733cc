//! The kernel side: mount(2)-family calls and the kernel's mount table.
//!
//! Every call acts through file descriptors opened by the caller (never by
//! re-resolving a path a pod could change), and every decision about an existing
//! mount is read back from the mount table by mount id, so a restarted driver needs
//! no state of its own.
//!
//! Published mounts are always nosuid and nodev (recursively), read-only when asked,
//! and cut from the AFS root's propagation: a mount made later on the host under the
//! AFS root never appears inside a target. They stay shared with their own copies at
//! kubelet's peers (Bidirectional propagation), so an unmount here reaches the host.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use procfs::process::{MountInfo, MountOptFields};
use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountAttrFlags, MoveMountFlags, OpenTreeFlags};

use crate::capability::MountOptions;
use crate::plan::AFS_FS_TYPE;

/// Stacked mounts on one target that unpublish removes before giving up.
pub const MAX_STACKED_MOUNTS: usize = 16;
/// The mount table of the calling thread's mount namespace (tests unshare threads).
const MOUNTINFO: &str = "/proc/thread-self/mountinfo";

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{source_name} does not exist")]
    SourceMissing { source_name: String },
    #[error("the kernel has no {AFS_FS_TYPE:?} filesystem: is the kAFS module loaded?")]
    NoAfsFilesystem,
    #[error(
        "the kernel refused the mount option context={context:?} (is SELinux enabled on this node?)"
    )]
    ContextRefused { context: String },
    #[error("{step} {}: {error}", path.display())]
    Syscall {
        step: &'static str,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("{} was mounted without {missing} ({detail}); it was taken away again", path.display())]
    AttributesNotApplied {
        path: PathBuf,
        missing: &'static str,
        detail: String,
    },
}

fn syscall(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MountError {
    let path = path.to_path_buf();
    move |error| MountError::Syscall { step, path, error }
}

/// The path that names what `fd` refers to, for the syscalls that take no descriptor.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/thread-self/fd/{}", fd.as_raw_fd()))
}

/// The id of the mount `fd` lies on (`mnt_id` in fdinfo, Linux 3.15 and later).
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let info = fs::read_to_string(format!("/proc/thread-self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| io::Error::other("fdinfo has no mnt_id (kernel older than 3.15?)"))
}

/// One line of mountinfo, reduced to what the decisions here need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    /// `major:minor` of the filesystem: a bind shows its source's.
    pub device: String,
    /// The directory of the source filesystem this mount shows; the kernel appends
    /// `//deleted` when that directory was removed.
    pub root: String,
    /// As mountinfo shows it (octal escapes kept).
    pub mount_point: String,
    pub fs_type: String,
    pub source: Option<String>,
    pub read_only: bool,
    pub no_suid: bool,
    pub no_dev: bool,
    pub no_exec: bool,
    /// A member of a peer group, or a slave of one.
    pub propagates: bool,
}

impl From<MountInfo> for MountEntry {
    fn from(info: MountInfo) -> Self {
        let flag = |name: &str| info.mount_options.contains_key(name);
        Self {
            id: u64::try_from(info.mnt_id).unwrap_or_default(),
            parent: u64::try_from(info.pid).unwrap_or_default(),
            read_only: flag("ro"),
            no_suid: flag("nosuid"),
            no_dev: flag("nodev"),
            no_exec: flag("noexec"),
            propagates: info.opt_fields.iter().any(|f| {
                matches!(
                    f,
                    MountOptFields::Shared(_)
                        | MountOptFields::Master(_)
                        | MountOptFields::PropagateFrom(_)
                )
            }),
            device: info.majmin,
            root: info.root,
            mount_point: info.mount_point.to_string_lossy().into_owned(),
            fs_type: info.fs_type,
            source: info.mount_source,
        }
    }
}

impl MountEntry {
    /// A one-line description for messages: type, source, ro/rw.
    pub fn describe(&self) -> String {
        format!(
            "{} from {}, {}",
            self.fs_type,
            self.source.as_deref().unwrap_or("?"),
            if self.read_only { "ro" } else { "rw" }
        )
    }
}

/// A snapshot of the calling thread's mount table. Only the lines asked about are
/// parsed in full: a node can hold thousands of mounts, and every publish and
/// unpublish looks at one or a few of them.
#[derive(Debug)]
pub struct MountTable {
    text: String,
}

/// The mount id and parent id of a mountinfo line (its first two fields).
fn ids(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split(' ');
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn parse_line(line: &str) -> io::Result<MountEntry> {
    MountInfo::from_line(line)
        .map(MountEntry::from)
        .map_err(io::Error::other)
}

impl MountTable {
    pub fn read() -> io::Result<Self> {
        Ok(Self {
            text: fs::read_to_string(MOUNTINFO)?,
        })
    }

    pub fn entry(&self, id: u64) -> io::Result<Option<MountEntry>> {
        self.text
            .lines()
            .find(|line| ids(line).is_some_and(|(mount, _)| mount == id))
            .map(parse_line)
            .transpose()
    }

    /// Every mount below `id` (not `id` itself), parents before their children.
    pub fn descendants(&self, id: u64) -> io::Result<Vec<MountEntry>> {
        let lines: Vec<(u64, u64, &str)> = self
            .text
            .lines()
            .filter_map(|line| ids(line).map(|(mount, parent)| (mount, parent, line)))
            .collect();
        let mut found = Vec::new();
        let mut frontier = vec![id];
        while let Some(parent) = frontier.pop() {
            for (mount, _, line) in lines
                .iter()
                .filter(|(mount, of, _)| *of == parent && *mount != parent)
            {
                found.push(parse_line(line)?);
                frontier.push(*mount);
            }
        }
        Ok(found)
    }
}

/// The mount whose root `dir` is, when `dir` (opened inside `parent`) is a mount
/// point; `None` when `dir` lies on its parent's mount.
pub fn mounted_at(parent: BorrowedFd<'_>, dir: BorrowedFd<'_>) -> io::Result<Option<MountEntry>> {
    let id = mount_id(dir)?;
    if id == mount_id(parent)? {
        return Ok(None);
    }
    MountTable::read()?.entry(id)?.map(Some).ok_or_else(|| {
        io::Error::other(format!("mount {id} is not in this mount namespace's table"))
    })
}

/// Mountinfo escapes space, tab, newline and backslash as octal.
pub fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens the directory `inner` (a mount below the mount `top`, whose root is
/// `top_fd`) is mounted on, by walking its path from `top_fd` without following
/// symlinks, and returns it with the name of the mount point in it, once checked
/// that this name leads to that very mount: a pod that renames directories of a
/// volume cannot make us act on another mount.
pub fn open_inner_mount_point(
    top_fd: BorrowedFd<'_>,
    top: &MountEntry,
    inner: &MountEntry,
) -> io::Result<(OwnedFd, String)> {
    let top_point = unescape_mountinfo(&top.mount_point);
    let inner_point = unescape_mountinfo(&inner.mount_point);
    let relative = inner_point
        .strip_prefix(top_point.trim_end_matches('/'))
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| io::Error::other(format!("{inner_point} is not below {top_point}")))?;
    let components: Vec<&str> = relative.split('/').filter(|c| !c.is_empty()).collect();
    let Some((name, walk)) = components.split_last() else {
        return Err(io::Error::other(format!("{inner_point} is {top_point}")));
    };
    let mut dir = rustix::io::fcntl_dupfd_cloexec(top_fd, 0)?;
    for component in walk.iter().chain(std::iter::once(name)) {
        if *component == "." || *component == ".." {
            return Err(io::Error::other(format!(
                "{inner_point}: unexpected {component:?}"
            )));
        }
    }
    for component in walk {
        dir = open_nofollow(dir.as_fd(), component)?;
    }
    if mount_id(open_nofollow(dir.as_fd(), name)?.as_fd())? != inner.id {
        return Err(io::Error::other(format!(
            "{inner_point} no longer leads to mount {}",
            inner.id
        )));
    }
    Ok((dir, (*name).to_owned()))
}

fn open_nofollow(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The attributes every published mount gets.
fn attributes(options: &MountOptions) -> MountAttrFlags {
    let mut set = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    set.set(MountAttrFlags::MOUNT_ATTR_RDONLY, options.read_only);
    set.set(MountAttrFlags::MOUNT_ATTR_NOEXEC, options.no_exec);
    set
}

fn legacy_flags(options: &MountOptions) -> MsFlags {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    flags.set(MsFlags::MS_RDONLY, options.read_only);
    flags.set(MsFlags::MS_NOEXEC, options.no_exec);
    flags
}

/// Binds the directory `source` onto the directory `target` (with its submounts
/// when `recursive`), with the attributes of `options` on every mount of the copy.
/// `shown` names the source in errors.
pub fn bind(
    source: BorrowedFd<'_>,
    shown: &Path,
    target: BorrowedFd<'_>,
    recursive: bool,
    options: &MountOptions,
    staging: &Staging,
) -> Result<(), MountError> {
    match bind_detached(source, shown, target, recursive, options) {
        Err(MountError::Syscall { error, .. }) if error.raw_os_error() == Some(libc::ENOSYS) => {
            bind_staged(source, shown, target, recursive, options, staging)
        }
        other => other,
    }
}

/// Linux 5.12 and later: the copy gets its attributes and leaves the source's peer
/// group while still detached, so the target never shows it otherwise, not even for
/// an instant or after a crash, and the copies propagated to kubelet's peers carry
/// the same attributes.
fn bind_detached(
    source: BorrowedFd<'_>,
    shown: &Path,
    target: BorrowedFd<'_>,
    recursive: bool,
    options: &MountOptions,
) -> Result<(), MountError> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_EMPTY_PATH;
    flags.set(OpenTreeFlags::AT_RECURSIVE, recursive);
    let tree = rustix::mount::open_tree(source, "", flags)
        .map_err(|e| syscall("open_tree", shown)(e.into()))?;
    mount_setattr(tree.as_fd(), attributes(options), libc::MS_PRIVATE)
        .map_err(syscall("mount_setattr", shown))?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| syscall("move_mount", shown)(e.into()))
}

/// mount_setattr(2) on a whole (detached) tree, which rustix and nix do not wrap yet.
fn mount_setattr(tree: BorrowedFd<'_>, set: MountAttrFlags, propagation: u64) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: u64::from(set.bits()),
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    // SAFETY: the descriptor is open for the whole call, the path is a static
    // NUL-terminated string, and `attr` is initialised with its size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A private mount of the driver's own where binds are prepared on kernels without
/// the new mount API. Remounting a bind read-only once it is on the target would be
/// too late: the copies kubelet's peers (the host) got when it appeared there keep
/// the flags it had then, and remounts do not propagate. So the copy is made, made
/// private and given its attributes here, then moved onto the target in one step.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    ready: Mutex<bool>,
}

impl Staging {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            ready: Mutex::new(false),
        }
    }

    /// Mounts a private tmpfs on the staging directory once (a restarted driver
    /// finds its own and makes sure it is private).
    fn prepare(&self) -> Result<&Path, MountError> {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if !*ready {
            let dir = &self.dir;
            fs::create_dir_all(dir).map_err(syscall("create staging directory", dir))?;
            let fd = open_dir(dir).map_err(syscall("open staging directory", dir))?;
            let parent = open_dir(&dir.join("..")).map_err(syscall("open staging parent", dir))?;
            let mounted = mount_id(fd.as_fd()).map_err(syscall("fdinfo", dir))?
                != mount_id(parent.as_fd()).map_err(syscall("fdinfo", dir))?;
            if !mounted {
                nix::mount::mount(
                    Some("afs-csi-staging"),
                    dir,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some("mode=0700,size=64k"),
                )
                .map_err(|e| syscall("mount staging tmpfs", dir)(e.into()))?;
            }
            nix::mount::mount(
                None::<&str>,
                dir,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| syscall("make staging private", dir)(e.into()))?;
            *ready = true;
        }
        Ok(&self.dir)
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Kernels before 5.12: bind into the private staging mount, make the copy private,
/// remount every mount of it with the attributes, check them in the mount table,
/// then move it onto the target. Any failure takes the copy away again.
fn bind_staged(
    source: BorrowedFd<'_>,
    shown: &Path,
    target: BorrowedFd<'_>,
    recursive: bool,
    options: &MountOptions,
    staging: &Staging,
) -> Result<(), MountError> {
    let stage = staging
        .prepare()?
        .join(format!("bind-{}", target.as_raw_fd()));
    // A crash may have left one behind: it is ours and private, so detaching is safe.
    let _ = nix::mount::umount2(&stage, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&stage);
    fs::create_dir(&stage).map_err(syscall("create staging directory", &stage))?;
    let result = prepare_staged(source, shown, &stage, recursive, options).and_then(|()| {
        nix::mount::mount(
            Some(&stage),
            &fd_path(target),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| syscall("move", shown)(e.into()))
    });
    if result.is_err() {
        let _ = nix::mount::umount2(&stage, MntFlags::MNT_DETACH);
    }
    let _ = fs::remove_dir(&stage);
    result
}

fn prepare_staged(
    source: BorrowedFd<'_>,
    shown: &Path,
    stage: &Path,
    recursive: bool,
    options: &MountOptions,
) -> Result<(), MountError> {
    let mut bind = MsFlags::MS_BIND;
    bind.set(MsFlags::MS_REC, recursive);
    nix::mount::mount(
        Some(&fd_path(source)),
        stage,
        None::<&str>,
        bind,
        None::<&str>,
    )
    .map_err(|e| syscall("bind", shown)(e.into()))?;
    nix::mount::mount(
        None::<&str>,
        stage,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| syscall("make private", shown)(e.into()))?;
    let top_fd = open_dir(stage).map_err(syscall("open", stage))?;
    let top_id = mount_id(top_fd.as_fd()).map_err(syscall("fdinfo", stage))?;
    let table = MountTable::read().map_err(syscall("read mountinfo", stage))?;
    let top = table
        .entry(top_id)
        .map_err(syscall("read mountinfo", stage))?
        .ok_or_else(|| syscall("find", stage)(io::Error::other("staged bind not in mountinfo")))?;
    let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | legacy_flags(options);
    let mut ids = vec![top_id];
    nix::mount::mount(
        None::<&str>,
        &fd_path(top_fd.as_fd()),
        None::<&str>,
        remount,
        None::<&str>,
    )
    .map_err(|e| syscall("remount", shown)(e.into()))?;
    let inner_mounts = table
        .descendants(top_id)
        .map_err(syscall("read mountinfo", stage))?;
    for inner in &inner_mounts {
        let (dir, name) = open_inner_mount_point(top_fd.as_fd(), &top, inner)
            .map_err(syscall("open submount", stage))?;
        nix::mount::mount(
            None::<&str>,
            &fd_path(dir.as_fd()).join(name),
            None::<&str>,
            remount,
            None::<&str>,
        )
        .map_err(|e| syscall("remount submount", shown)(e.into()))?;
        ids.push(inner.id);
    }
    // Read back: every mount of the copy must show the attributes, and none may
    // still receive propagation.
    let table = MountTable::read().map_err(syscall("read mountinfo", stage))?;
    let read_back = |e| syscall("read mountinfo", stage)(e);
    let now = table.entry(top_id).map_err(read_back)?;
    let below = table.descendants(top_id).map_err(read_back)?;
    for entry in now.iter().chain(&below) {
        let missing = if !ids.contains(&entry.id) {
            Some("every submount made read-only (one appeared while remounting)")
        } else if options.read_only && !entry.read_only {
            Some("ro")
        } else if !entry.no_suid || !entry.no_dev {
            Some("nosuid,nodev")
        } else if options.no_exec && !entry.no_exec {
            Some("noexec")
        } else if entry.propagates {
            Some("private propagation")
        } else {
            None
        };
        if let Some(missing) = missing {
            return Err(MountError::AttributesNotApplied {
                path: shown.to_path_buf(),
                missing,
                detail: format!("{} at {}", entry.describe(), entry.mount_point),
            });
        }
    }
    Ok(())
}

/// Mounts a new kAFS filesystem of `device` (`#cell:volume`, `%cell:volume`) on the
/// directory `target`, with the attributes of `options` (and its SELinux context).
pub fn mount_afs(
    device: &str,
    target: BorrowedFd<'_>,
    shown: &Path,
    options: &MountOptions,
) -> Result<(), MountError> {
    // Quoted: an MLS level such as s0:c1,c2 holds commas, which separate options.
    let data = options
        .selinux_context
        .as_ref()
        .map(|context| format!("context=\"{context}\""));
    nix::mount::mount(
        Some(device),
        &fd_path(target),
        Some(AFS_FS_TYPE),
        legacy_flags(options),
        data.as_deref(),
    )
    .map_err(|errno| match errno {
        nix::errno::Errno::ENODEV => MountError::NoAfsFilesystem,
        nix::errno::Errno::ENOENT => MountError::SourceMissing {
            source_name: format!("AFS volume {device}"),
        },
        nix::errno::Errno::EINVAL if options.selinux_context.is_some() => {
            MountError::ContextRefused {
                context: options.selinux_context.clone().unwrap_or_default(),
            }
        }
        errno => MountError::Syscall {
            step: "mount afs",
            path: shown.to_path_buf(),
            error: errno.into(),
        },
    })
}

/// Why a mount on a target stays.
#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    #[error(
        "{mount_point} is busy: a process still uses it (the driver never detaches a mount in use)"
    )]
    Busy { mount_point: String },
    #[error("unmount {mount_point}: {error}")]
    Syscall {
        mount_point: String,
        #[source]
        error: io::Error,
    },
}

/// Unmounts `top`, the mount on `name` in the directory `parent`, and everything
/// mounted below it (when it has submounts: the deepest first), each with a plain
/// unmount: a mount busy
/// because a process uses it stays, and the caller hears so. (Detaching would hide
/// a mount that is still in use, and with it the module's user, from everyone.)
///
/// Each unmount names its mount point relative to a directory descriptor on the
/// mount above it, never by a path a pod could change, and holds no descriptor on
/// the mount itself (that alone would make it busy).
pub fn unmount_tree(
    parent: BorrowedFd<'_>,
    name: &str,
    top: &MountEntry,
) -> Result<(), UnmountError> {
    let failed = |entry: &MountEntry| {
        let mount_point = unescape_mountinfo(&entry.mount_point);
        move |error: io::Error| UnmountError::Syscall { mount_point, error }
    };
    // Most targets have nothing mounted below them: one unmount, no table to read.
    match unmount_one(parent, name, top) {
        Err(UnmountError::Busy { .. }) => {}
        done => return done,
    }
    {
        let top_fd = open_nofollow(parent, name).map_err(failed(top))?;
        let table = MountTable::read().map_err(failed(top))?;
        let inner_mounts = table.descendants(top.id).map_err(failed(top))?;
        for inner in inner_mounts.iter().rev() {
            match open_inner_mount_point(top_fd.as_fd(), top, inner) {
                Ok((dir, inner_name)) => unmount_one(dir.as_fd(), &inner_name, inner)?,
                // Gone since the table was read (an automount expired).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(inner)(e)),
            }
        }
    }
    unmount_one(parent, name, top)
}

fn unmount_one(dir: BorrowedFd<'_>, name: &str, entry: &MountEntry) -> Result<(), UnmountError> {
    match nix::mount::umount2(&fd_path(dir).join(name), MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => Err(UnmountError::Busy {
            mount_point: unescape_mountinfo(&entry.mount_point),
        }),
        Err(errno) => Err(UnmountError::Syscall {
            mount_point: unescape_mountinfo(&entry.mount_point),
            error: errno.into(),
        }),
    }
}

/// Whether `dir` (a mount's root) shows the same file as `source`.
pub fn same_file(dir: BorrowedFd<'_>, source: BorrowedFd<'_>) -> io::Result<bool> {
    let (a, b) = (rustix::fs::fstat(dir)?, rustix::fs::fstat(source)?);
    Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
}

/// `major:minor` of the filesystem `fd` lies on, as mountinfo shows it.
pub fn device_of(fd: BorrowedFd<'_>) -> io::Result<String> {
    let stat = rustix::fs::fstat(fd)?;
    let dev = stat.st_dev;
    Ok(format!(
        "{}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_like_the_kernel_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b\\134c\\011d"), "/a b\\c\td");
        assert_eq!(unescape_mountinfo("/plain/path"), "/plain/path");
        assert_eq!(unescape_mountinfo("/trailing\\04"), "/trailing\\04");
    }

    #[test]
    fn descendants_come_parents_first() {
        let table = MountTable {
            text: "1 0 0:1 / / rw - ext4 /dev/vda rw\n\
                   20 1 0:2 / /t rw shared:3 - tmpfs t rw\n\
                   21 20 0:3 / /t/a ro,nosuid - tmpfs a rw\n\
                   22 21 0:4 / /t/a/b rw master:4 - afs %c:v rw\n\
                   23 1 0:5 / /other rw - tmpfs o rw\n"
                .to_owned(),
        };
        let entry = |id| table.entry(id).expect("parses").expect("present");
        let ids: Vec<u64> = table
            .descendants(20)
            .expect("parses")
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, vec![21, 22]);
        let a = entry(21);
        assert!(a.read_only && a.no_suid && !a.no_dev && !a.propagates);
        assert!(entry(20).propagates);
        assert!(entry(22).propagates);
        assert_eq!(entry(22).describe(), "afs from %c:v, rw");
        assert_eq!(table.entry(99).expect("parses"), None);
    }

    #[test]
    fn finds_the_mount_of_a_descriptor() {
        let root = open_dir(Path::new("/")).expect("open /");
        let id = mount_id(root.as_fd()).expect("fdinfo has mnt_id");
        let table = MountTable::read().expect("mountinfo");
        let root = table.entry(id).expect("parses").expect("/ is mounted");
        assert_eq!(root.mount_point, "/");
    }

    /// Runs `body` on a thread with a mount namespace of its own, every mount in it
    /// private at first: what the test mounts stays there and goes with the thread.
    fn in_own_mount_namespace(body: impl FnOnce() + Send + 'static) {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: this test mounts and must run as root");
            return;
        }
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make / private");
            body();
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }

    fn mount_tmpfs(at: &Path) {
        fs::create_dir_all(at).expect("mount point");
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("tmpfs");
    }

    fn bind_self(dir: &Path, propagation: MsFlags) {
        fs::create_dir_all(dir).expect("dir");
        nix::mount::mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .expect("self bind");
        nix::mount::mount(None::<&str>, dir, None::<&str>, propagation, None::<&str>)
            .expect("propagation");
    }

    /// The topmost mount on `path`.
    fn entry_at(table: &MountTable, path: &Path) -> Option<MountEntry> {
        let wanted = path.display().to_string();
        table
            .text
            .lines()
            .rfind(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
            .map(|line| parse_line(line).expect("parses"))
    }

    /// The kernel paths a bind can take, both forced here: the new mount API and the
    /// staged fallback of kernels before 5.12. kubelet's directory is shared with a
    /// peer (the host's view, as Bidirectional propagation makes it), the AFS root is
    /// shared (as the host's /afs seen through HostToContainer).
    #[test]
    fn read_only_binds_are_recursive_private_and_reach_the_peer_so() {
        in_own_mount_namespace(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let afs = dir.path().join("afs");
            bind_self(&afs, MsFlags::MS_SHARED);
            mount_tmpfs(&afs.join("cell/sub"));
            let kubelet = dir.path().join("kubelet");
            bind_self(&kubelet, MsFlags::MS_SHARED);
            let host = dir.path().join("host");
            fs::create_dir(&host).expect("host view");
            nix::mount::mount(
                Some(&kubelet),
                &host,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("peer of kubelet's dir");
            let staging = Staging::new(dir.path().join("staging"));
            let read_only = MountOptions {
                read_only: true,
                ..MountOptions::default()
            };

            for (name, staged) in [("detached", false), ("staged", true)] {
                let target = kubelet.join(name);
                fs::create_dir(&target).expect("target");
                let source = open_dir(&afs).expect("source");
                let target_fd = open_dir(&target).expect("target fd");
                if staged {
                    bind_staged(
                        source.as_fd(),
                        &afs,
                        target_fd.as_fd(),
                        true,
                        &read_only,
                        &staging,
                    )
                } else {
                    bind_detached(source.as_fd(), &afs, target_fd.as_fd(), true, &read_only)
                }
                .unwrap_or_else(|e| panic!("{name}: {e}"));

                // A mount made on the AFS root afterwards stays out of the target.
                mount_tmpfs(&afs.join(format!("cell/later-{name}")));
                let table = MountTable::read().expect("mountinfo");
                for view in [&kubelet, &host] {
                    let top = view.join(name);
                    for path in [top.clone(), top.join("cell/sub")] {
                        let entry = entry_at(&table, &path)
                            .unwrap_or_else(|| panic!("{name}: {} mounted", path.display()));
                        assert!(
                            entry.read_only && entry.no_suid && entry.no_dev,
                            "{name}: {} must be ro,nosuid,nodev: {entry:?}",
                            path.display()
                        );
                    }
                    assert!(
                        entry_at(&table, &top.join(format!("cell/later-{name}"))).is_none(),
                        "{name}: a later AFS-root mount propagated into {}",
                        top.display()
                    );
                    let err = fs::write(top.join("cell/new.txt"), "x").expect_err("read-only");
                    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{name}");
                }
                // Unmounting here takes the peer's copy too.
                let top = table
                    .entry(mount_id(open_dir(&target).expect("mounted").as_fd()).expect("id"))
                    .expect("parses")
                    .expect("entry");
                let parent = open_dir(&kubelet).expect("parent");
                unmount_tree(parent.as_fd(), name, &top).expect("unmount");
                let table = MountTable::read().expect("mountinfo");
                assert!(entry_at(&table, &target).is_none(), "{name}: unmounted");
                assert!(
                    entry_at(&table, &host.join(name)).is_none(),
                    "{name}: peer copy gone"
                );
            }

            // What a fallback that binds onto the target and remounts it there does
            // (the driver's before the staging): the peer keeps a writable copy.
            let naive = kubelet.join("naive");
            fs::create_dir(&naive).expect("target");
            nix::mount::mount(
                Some(&afs),
                &naive,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .expect("bind");
            nix::mount::mount(
                None::<&str>,
                &naive,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | legacy_flags(&read_only),
                None::<&str>,
            )
            .expect("remount");
            let table = MountTable::read().expect("mountinfo");
            assert!(entry_at(&table, &naive).expect("mounted").read_only);
            assert!(
                !entry_at(&table, &host.join("naive"))
                    .expect("peer copy")
                    .read_only,
                "the peer's copy of an in-place remount stays writable"
            );
        });
    }

    #[test]
    fn a_busy_mount_is_never_detached() {
        in_own_mount_namespace(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let target = dir.path().join("t");
            mount_tmpfs(&target);
            mount_tmpfs(&target.join("inner"));
            let table = MountTable::read().expect("mountinfo");
            let top = table
                .entry(mount_id(open_dir(&target).expect("open").as_fd()).expect("id"))
                .expect("parses")
                .expect("entry");
            let parent = open_dir(dir.path()).expect("parent");
            // A process (this thread's open directory) holds the inner mount.
            let holder = fs::File::open(target.join("inner")).expect("hold");
            let err = unmount_tree(parent.as_fd(), "t", &top).expect_err("busy");
            assert!(matches!(err, UnmountError::Busy { .. }), "{err}");
            assert!(
                entry_at(
                    &MountTable::read().expect("mountinfo"),
                    &target.join("inner")
                )
                .is_some(),
                "still mounted, not detached"
            );
            drop(holder);
            unmount_tree(parent.as_fd(), "t", &top).expect("free now");
            assert!(entry_at(&MountTable::read().expect("mountinfo"), &target).is_none());
        });
    }
}
