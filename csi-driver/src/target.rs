//! The only places the node service acts on: kubelet's CSI target directories,
//! `<kubelet-dir>/pods/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount` (for
//! persistent and inline ephemeral volumes alike).
//!
//! A target path is checked for that exact shape, then opened one component at a
//! time below the kubelet directory without following any symlink, so a symlinked
//! pod or volume directory cannot lead a root process elsewhere on the node. The
//! directory the driver creates is marked, so that only a directory it made is ever
//! removed.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, XattrFlags};

use crate::volume::InvalidField;

/// kubelet's directory of CSI volumes of a pod.
const CSI_PLUGIN_DIR: &str = "kubernetes.io~csi";
/// The directory kubelet asks the driver to publish on, inside the volume's.
pub const MOUNT_DIR: &str = "mount";
/// The name a new target directory has until it is marked.
const NEW_MOUNT_DIR: &str = ".mount.afs-csi-new";
/// On a target directory the driver created: the driver's name. Trusted (root only):
/// a pod cannot forge it.
const CREATED_XATTR: &str = "trusted.afs-csi.created";
/// Longest pod uid accepted (kubelet's are UUIDs, static pods' 32 hex digits).
const MAX_POD_UID: usize = 128;
/// Longest volume directory name (a PV name is a DNS subdomain of at most 253).
const MAX_VOLUME_DIR: usize = 253;

/// kubelet's root directory, as kubelet names it in target paths.
#[derive(Debug, Clone)]
pub struct KubeletDir {
    dir: PathBuf,
}

impl KubeletDir {
    /// `dir` must be absolute and without `..`; it is used as given (kubelet puts its
    /// `--root-dir` into target paths unresolved).
    pub fn new(dir: &Path) -> Result<Self, InvalidField> {
        let field = "--kubelet-dir";
        if !dir.is_absolute() || dir.components().any(|c| c == Component::ParentDir) {
            return Err(InvalidField::new(
                field,
                format!(
                    "must be an absolute path without '..', got {}",
                    dir.display()
                ),
            ));
        }
        Ok(Self {
            dir: dir.components().collect(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The target a request names, or INVALID_ARGUMENT naming `field` and the rule.
    pub fn target(&self, field: &str, raw: &str) -> Result<Target, InvalidField> {
        let shape = || {
            InvalidField::new(
                field,
                format!(
                    "must be {}/pods/<pod uid>/volumes/{CSI_PLUGIN_DIR}/<volume>/{MOUNT_DIR} (kubelet's CSI target; --kubelet-dir), got {raw:?}",
                    self.dir.display()
                ),
            )
        };
        if raw.is_empty() {
            return Err(InvalidField::new(field, "required"));
        }
        if raw.contains('\0') {
            return Err(InvalidField::new(field, "must not contain NUL"));
        }
        let path = Path::new(raw);
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(shape());
        }
        let normal: PathBuf = path.components().collect();
        let relative = normal.strip_prefix(&self.dir).map_err(|_| shape())?;
        let parts: Vec<&str> = relative
            .components()
            .map(|c| match c {
                Component::Normal(part) => part.to_str().unwrap_or(""),
                _ => "",
            })
            .collect();
        let [pods, uid, volumes, plugin, volume, mount] = parts.as_slice() else {
            return Err(shape());
        };
        if *pods != "pods"
            || *volumes != "volumes"
            || *plugin != CSI_PLUGIN_DIR
            || *mount != MOUNT_DIR
        {
            return Err(shape());
        }
        let uid_ok = !uid.is_empty()
            && uid.len() <= MAX_POD_UID
            && uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        let volume_ok = !volume.is_empty()
            && volume.len() <= MAX_VOLUME_DIR
            && volume
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
        if !uid_ok || !volume_ok {
            return Err(shape());
        }
        Ok(Target {
            kubelet_dir: self.dir.clone(),
            below: [
                "pods".to_owned(),
                (*uid).to_owned(),
                "volumes".to_owned(),
                CSI_PLUGIN_DIR.to_owned(),
                (*volume).to_owned(),
            ],
            path: normal,
        })
    }
}

/// A checked target path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    kubelet_dir: PathBuf,
    /// The components from the kubelet directory to the volume directory.
    below: [String; 5],
    path: PathBuf,
}

/// A target whose volume directory (kubelet's `<volume>`, the parent of `mount`) is
/// a symlink or not a directory: the driver never goes there.
#[derive(Debug, thiserror::Error)]
#[error("{} is a symlink or not a directory; the driver never follows symlinks below the kubelet directory", .0.display())]
pub struct Escape(pub PathBuf);

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Escape(#[from] Escape),
    #[error("open {}: {error}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
}

impl Target {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the volume directory (the target's parent) below the kubelet directory,
    /// never following a symlink. `None` when some directory on the way is missing.
    pub fn open_parent(&self) -> Result<Option<OwnedFd>, OpenError> {
        let io_error = |path: PathBuf| move |error: io::Error| OpenError::Io { path, error };
        let mut fd = match rustix::fs::open(
            &self.kubelet_dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io_error(self.kubelet_dir.clone())(e.into())),
        };
        let mut walked = self.kubelet_dir.clone();
        for component in &self.below {
            walked.push(component);
            fd = match open_dir_nofollow(fd.as_fd(), component) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
                    return Err(Escape(walked).into());
                }
                Err(e) => return Err(io_error(walked)(e.into())),
            };
        }
        Ok(Some(fd))
    }
}

/// Opens the directory `name` in `dir`, refusing a symlink (O_NOFOLLOW and
/// O_DIRECTORY make the kernel answer ENOTDIR for one).
pub fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Creates the target directory in the volume directory, marked as the driver's.
/// `Ok(false)` when it already exists. The directory is made and marked under a
/// name of its own, then renamed into place, so a crash in between can never leave
/// an unmarked directory the driver made (a leftover is removed on the next call).
pub fn create_target_dir(parent: BorrowedFd<'_>, driver: &str) -> io::Result<bool> {
    remove_leftover(parent)?;
    match rustix::fs::statat(parent, MOUNT_DIR, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => return Ok(false),
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    rustix::fs::mkdirat(parent, NEW_MOUNT_DIR, Mode::from_raw_mode(0o750))?;
    let marked = rustix::fs::openat(
        parent,
        NEW_MOUNT_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(|dir| {
        rustix::fs::fsetxattr(&dir, CREATED_XATTR, driver.as_bytes(), XattrFlags::empty())
    });
    match marked {
        Ok(()) => {}
        // A filesystem without trusted xattrs: the directory stays unmarked, so the
        // driver leaves it to kubelet, which removes it after unpublish anyway.
        Err(rustix::io::Errno::NOTSUP) => tracing::warn!(
            "the kubelet directory's filesystem has no trusted xattrs: target directories are left to kubelet to remove"
        ),
        Err(e) => {
            let _ = rustix::fs::unlinkat(parent, NEW_MOUNT_DIR, AtFlags::REMOVEDIR);
            return Err(e.into());
        }
    }
    match rustix::fs::renameat_with(
        parent,
        NEW_MOUNT_DIR,
        parent,
        MOUNT_DIR,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = rustix::fs::unlinkat(parent, NEW_MOUNT_DIR, AtFlags::REMOVEDIR);
            if e == rustix::io::Errno::EXIST {
                Ok(false)
            } else {
                Err(e.into())
            }
        }
    }
}

/// Removes a target directory a crashed call left under its temporary name.
pub fn remove_leftover(parent: BorrowedFd<'_>) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, NEW_MOUNT_DIR, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the (unmounted) target directory in `parent` carries the driver's mark.
pub fn created_by(parent: BorrowedFd<'_>, driver: &str) -> io::Result<bool> {
    let dir = rustix::fs::openat(
        parent,
        MOUNT_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut value = [0u8; 256];
    match rustix::fs::fgetxattr(&dir, CREATED_XATTR, &mut value[..]) {
        Ok(len) => Ok(&value[..len] == driver.as_bytes()),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP | rustix::io::Errno::RANGE) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the target directory from `parent`.
pub fn remove_target_dir(parent: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::unlinkat(parent, MOUNT_DIR, AtFlags::REMOVEDIR).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubelet() -> KubeletDir {
        KubeletDir::new(Path::new("/var/lib/kubelet")).expect("valid")
    }

    const GOOD: &str = "/var/lib/kubelet/pods/0b5c0b8a-1f2e-4c3d-9a8b-7c6d5e4f3a2b/volumes/kubernetes.io~csi/pv-afs/mount";

    #[test]
    fn only_kubelet_csi_targets() {
        let target = kubelet()
            .target("target_path", GOOD)
            .expect("kubelet's shape");
        assert_eq!(target.path(), Path::new(GOOD));
        // Normalised like a path, nothing else.
        let slashes = GOOD.replace("/pods/", "//pods/./");
        assert_eq!(
            kubelet().target("t", &slashes).expect("same path").path(),
            Path::new(GOOD)
        );
        for bad in [
            "",
            "/etc",
            "/",
            "relative/pods/x/volumes/kubernetes.io~csi/v/mount",
            "/var/lib/kubelet",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount/deeper",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/v/mount",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/../../../../etc/mount",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/..",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/other",
            "/var/lib/kubelet/plugins/u/volumes/kubernetes.io~csi/v/mount",
            "/var/lib/kubelet2/pods/u/volumes/kubernetes.io~csi/v/mount",
            "/var/lib/kubelet/pods/u:x/volumes/kubernetes.io~csi/v/mount",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/a b/mount",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v\0/mount",
            "/tmp/pods/u/volumes/kubernetes.io~csi/v/mount",
        ] {
            let err = kubelet().target("target_path", bad).expect_err(bad);
            assert_eq!(err.field, "target_path", "{bad}");
        }
        let err = kubelet()
            .target("target_path", "/etc")
            .expect_err("outside");
        assert!(
            err.rule.contains("/var/lib/kubelet/pods/<pod uid>"),
            "{err}"
        );
    }

    #[test]
    fn kubelet_dir_must_be_absolute() {
        assert!(KubeletDir::new(Path::new("var/lib/kubelet")).is_err());
        assert!(KubeletDir::new(Path::new("/var/lib/../kubelet")).is_err());
        assert_eq!(
            KubeletDir::new(Path::new("/var/lib/kubelet/"))
                .expect("ok")
                .path(),
            Path::new("/var/lib/kubelet")
        );
    }

    #[test]
    fn the_walk_never_follows_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubelet = KubeletDir::new(dir.path()).expect("absolute");
        let volumes = dir.path().join("pods/uid-1/volumes/kubernetes.io~csi");
        std::fs::create_dir_all(volumes.join("real")).expect("volume dir");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, volumes.join("linked")).expect("symlink");
        std::os::unix::fs::symlink(dir.path().join("pods/uid-1"), dir.path().join("pods/uid-2"))
            .expect("symlinked pod dir");

        let path = |pod: &str, volume: &str| {
            format!(
                "{}/pods/{pod}/volumes/kubernetes.io~csi/{volume}/mount",
                dir.path().display()
            )
        };
        let real = kubelet.target("t", &path("uid-1", "real")).expect("shape");
        assert!(real.open_parent().expect("opens").is_some());
        let missing = kubelet
            .target("t", &path("uid-1", "missing"))
            .expect("shape");
        assert!(missing.open_parent().expect("no error").is_none());
        for (pod, volume) in [("uid-1", "linked"), ("uid-2", "real")] {
            let target = kubelet.target("t", &path(pod, volume)).expect("shape");
            assert!(
                matches!(target.open_parent(), Err(OpenError::Escape(_))),
                "{pod}/{volume} must not be followed"
            );
        }
    }

    #[test]
    fn only_marked_directories_count_as_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let parent = rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .expect("open");
        assert!(create_target_dir(parent.as_fd(), "drv").expect("mkdir"));
        assert!(!create_target_dir(parent.as_fd(), "drv").expect("exists"));
        assert!(created_by(parent.as_fd(), "drv").expect("xattr"));
        assert!(!created_by(parent.as_fd(), "other-driver").expect("xattr"));
        remove_target_dir(parent.as_fd()).expect("rmdir");
        std::fs::create_dir(dir.path().join(MOUNT_DIR)).expect("someone else's");
        assert!(!created_by(parent.as_fd(), "drv").expect("no xattr"));
    }
}
