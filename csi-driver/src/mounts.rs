//! The kernel side: mount(2)-family calls and the kernel's mount table.
//!
//! Every decision about an existing target is read back from
//! `/proc/self/mountinfo`, so a restarted driver needs no state of its own.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use procfs::process::MountInfo;
use rustix::mount::{MountAttrFlags, MoveMountFlags, OpenTreeFlags};

use crate::plan::{AFS_FS_TYPE, MountPlan, MountSource};

/// Stacked mounts on one target that unpublish removes before giving up.
const MAX_STACKED_MOUNTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{source_name} does not exist")]
    SourceMissing { source_name: String },
    #[error("the kernel has no {AFS_FS_TYPE:?} filesystem: is the kAFS module loaded?")]
    NoAfsFilesystem,
    #[error("{step} {}: {error}", path.display())]
    Syscall {
        step: &'static str,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
}

/// For the call that looks up the bind source: ENOENT means no such volume.
fn source_lookup(step: &'static str, source: &Path) -> impl FnOnce(io::Error) -> MountError {
    let source = source.to_path_buf();
    move |error| {
        if error.kind() == io::ErrorKind::NotFound {
            MountError::SourceMissing {
                source_name: source.display().to_string(),
            }
        } else {
            MountError::Syscall {
                step,
                path: source,
                error,
            }
        }
    }
}

fn syscall(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MountError {
    let path = path.to_path_buf();
    move |error| MountError::Syscall { step, path, error }
}

/// One line of mountinfo, reduced to what publish decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub fs_type: String,
    pub source: Option<String>,
    pub read_only: bool,
    /// The directory of the source filesystem this mount shows; the kernel
    /// appends `//deleted` when that directory was removed.
    pub root: String,
}

impl From<MountInfo> for MountEntry {
    fn from(info: MountInfo) -> Self {
        Self {
            read_only: info.mount_options.contains_key("ro"),
            fs_type: info.fs_type,
            source: info.mount_source,
            root: info.root,
        }
    }
}

/// Mountinfo escapes space, tab, newline and backslash as octal.
fn escape_mountinfo(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The topmost mount on `target` (an absolute, symlink-free path), if any.
pub fn mount_at(target: &Path) -> io::Result<Option<MountEntry>> {
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    let wanted = escape_mountinfo(target);
    // Only the matching lines are parsed in full; later lines are mounted on top.
    let line = table
        .lines()
        .rfind(|line| line.split(' ').nth(4) == Some(wanted.as_str()));
    line.map(|line| MountInfo::from_line(line).map(MountEntry::from))
        .transpose()
        .map_err(io::Error::other)
}

/// Whether an existing mount on `target` is exactly what `plan` would make.
pub fn is_published_as(plan: &MountPlan, target: &Path, entry: &MountEntry) -> io::Result<bool> {
    if entry.read_only != plan.read_only {
        return Ok(false);
    }
    match &plan.source {
        MountSource::Bind { path, .. } => {
            let (shown, source) = (fs::metadata(target)?, fs::metadata(path)?);
            Ok(shown.dev() == source.dev() && shown.ino() == source.ino())
        }
        MountSource::Afs { device } => Ok(entry.fs_type == AFS_FS_TYPE
            && entry
                .source
                .as_deref()
                .is_some_and(|shown| afs_source_matches(device, shown))),
    }
}

/// Whether kAFS shows a mount of `device` as `shown`. kAFS names a mount
/// after the volume it got, not the one asked for: `#cell:vol` (prefer a
/// read-only replica) of a volume that has no replica mounts the read-write
/// volume and shows `%cell:vol`. The read-only flag is compared separately.
fn afs_source_matches(device: &str, shown: &str) -> bool {
    shown == device
        || device
            .strip_prefix('#')
            .is_some_and(|rest| shown.strip_prefix('%') == Some(rest))
}

/// Makes the mount `plan` describes on the existing directory `target`.
/// Published mounts are always nosuid and nodev.
pub fn mount(plan: &MountPlan, target: &Path) -> Result<(), MountError> {
    match &plan.source {
        MountSource::Bind { path, recursive } => {
            match bind_with_attributes(path, target, *recursive, plan.read_only) {
                Err(MountError::Syscall { error, .. })
                    if error.raw_os_error() == Some(libc::ENOSYS) =>
                {
                    legacy_bind(path, target, *recursive, plan.read_only)
                }
                other => other,
            }
        }
        MountSource::Afs { device } => {
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            flags.set(MsFlags::MS_RDONLY, plan.read_only);
            nix::mount::mount(
                Some(device.as_str()),
                target,
                Some(AFS_FS_TYPE),
                flags,
                None::<&str>,
            )
            .map_err(|errno| match errno {
                nix::errno::Errno::ENODEV => MountError::NoAfsFilesystem,
                nix::errno::Errno::ENOENT => MountError::SourceMissing {
                    source_name: format!("AFS volume {device}"),
                },
                errno => MountError::Syscall {
                    step: "mount afs",
                    path: target.to_path_buf(),
                    error: errno.into(),
                },
            })
        }
    }
}

/// Binds with the new mount API: the clone gets its attributes while still
/// detached, so the target never shows a writable mount, not even for an
/// instant or after a crash between two calls (Linux 5.12 and later).
fn bind_with_attributes(
    source: &Path,
    target: &Path,
    recursive: bool,
    read_only: bool,
) -> Result<(), MountError> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    flags.set(OpenTreeFlags::AT_RECURSIVE, recursive);
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, flags)
        .map_err(|e| source_lookup("open_tree", source)(e.into()))?;
    let mut attributes = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    attributes.set(MountAttrFlags::MOUNT_ATTR_RDONLY, read_only);
    mount_setattr(tree.as_fd(), recursive, attributes).map_err(syscall("mount_setattr", source))?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| syscall("move_mount", target)(e.into()))
}

/// mount_setattr(2), which rustix and nix do not wrap yet.
fn mount_setattr(tree: BorrowedFd<'_>, recursive: bool, set: MountAttrFlags) -> io::Result<()> {
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
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the descriptor is open for the whole call, the path is a static
    // NUL-terminated string, and `attr` is initialised with its size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
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

/// Kernels before 5.12: bind, then remount with the attributes. A failed
/// remount takes the bind away again so no writable mount is left behind.
fn legacy_bind(
    source: &Path,
    target: &Path,
    recursive: bool,
    read_only: bool,
) -> Result<(), MountError> {
    let mut flags = MsFlags::MS_BIND;
    flags.set(MsFlags::MS_REC, recursive);
    // The target was just made by publish: ENOENT can only be the source.
    nix::mount::mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .map_err(|e| source_lookup("bind", source)(e.into()))?;
    let mut remount =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    remount.set(MsFlags::MS_RDONLY, read_only);
    if let Err(errno) = nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
    {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        return Err(syscall("remount", target)(errno.into()));
    }
    Ok(())
}

/// Removes every mount stacked on `target`; returns how many. The kernel
/// answers EINVAL once nothing is mounted there any more. A mount kept busy
/// by its own submounts (kAFS automounts) is detached instead. A symlink at
/// the target is never followed.
pub fn unmount_all(target: &Path) -> io::Result<usize> {
    let plain = MntFlags::UMOUNT_NOFOLLOW;
    for removed in 0..MAX_STACKED_MOUNTS {
        match nix::mount::umount2(target, plain) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) => return Ok(removed),
            Err(nix::errno::Errno::EBUSY) => {
                nix::mount::umount2(target, plain | MntFlags::MNT_DETACH)?;
            }
            Err(errno) => return Err(errno.into()),
        }
    }
    Err(io::Error::other(format!(
        "more than {MAX_STACKED_MOUNTS} mounts are stacked on {}",
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_the_kernel() {
        assert_eq!(
            escape_mountinfo(Path::new("/a b\\c\td")),
            "/a\\040b\\134c\\011d"
        );
        assert_eq!(escape_mountinfo(Path::new("/plain/path")), "/plain/path");
    }

    #[test]
    fn kafs_shows_the_volume_it_got() {
        assert!(afs_source_matches("%c.org:v", "%c.org:v"));
        assert!(afs_source_matches("#c.org:v", "#c.org:v"));
        // No read-only replica: '#' falls back to the read-write volume.
        assert!(afs_source_matches("#c.org:v", "%c.org:v"));
        assert!(afs_source_matches("#c.org:v.readonly", "#c.org:v.readonly"));
        // A read-write request is never satisfied by a replica.
        assert!(!afs_source_matches("%c.org:v", "#c.org:v"));
        assert!(!afs_source_matches("#c.org:v", "%c.org:w"));
        assert!(!afs_source_matches("#c.org:v", "%other.org:v"));
    }

    #[test]
    fn finds_the_root_mount() {
        let root = mount_at(Path::new("/")).expect("mountinfo readable");
        assert!(root.is_some(), "/ is always a mount point");
        assert_eq!(
            mount_at(Path::new("/no/such/mount")).expect("readable"),
            None
        );
    }
}
