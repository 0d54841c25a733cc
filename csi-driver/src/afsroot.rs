//! The AFS root (`--afs-root`): where the AFS client shows the AFS namespace, the
//! source of every bind this driver makes.
//!
//! With the client down (afsd stopped, the kAFS dynamic root unmounted), the path
//! is a plain directory of the node's own disk; binding it would give pods a
//! writable piece of the node instead of AFS. So for the clients whose filesystem
//! is known, the root is checked to be the AFS filesystem before every bind and at
//! every Probe, through the very descriptor the bind then uses.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::config::CacheManager;

/// `f_type` of OpenAFS's filesystem (`AFS_VFSMAGIC`; Linux's `AFS_SUPER_MAGIC`).
pub const OPENAFS_MAGIC: i64 = 0x5346_414f;
/// `f_type` of the kernel's kAFS, its dynamic root included (`AFS_FS_MAGIC`).
pub const KAFS_MAGIC: i64 = 0x6b41_4653;

#[derive(Debug, thiserror::Error)]
pub enum AfsRootError {
    #[error(
        "AFS root {}: {error} (is the AFS client running? {hint})",
        path.display()
    )]
    Unreachable {
        path: PathBuf,
        hint: &'static str,
        #[source]
        error: io::Error,
    },
    #[error(
        "AFS root {} is not the AFS filesystem (statfs type {magic:#x}, expected {expected}): is the AFS client running? {hint}",
        path.display()
    )]
    NotAfs {
        path: PathBuf,
        magic: i64,
        expected: &'static str,
        hint: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct AfsRoot {
    path: PathBuf,
    cache_manager: CacheManager,
}

impl AfsRoot {
    pub fn new(path: PathBuf, cache_manager: CacheManager) -> Self {
        Self {
            path,
            cache_manager,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the root must report, or `None` where the client's filesystem type is
    /// not published (AuriStorFS): then only reachability is checked.
    fn expected_magic(&self) -> Option<(i64, &'static str)> {
        match self.cache_manager {
            CacheManager::Kafs => Some((KAFS_MAGIC, "kAFS 0x6b414653")),
            CacheManager::Openafs => Some((OPENAFS_MAGIC, "OpenAFS 0x5346414f")),
            CacheManager::Auristor => None,
        }
    }

    fn hint(&self) -> &'static str {
        match self.cache_manager {
            CacheManager::Kafs => {
                "the kAFS dynamic root must be mounted there: mount -t afs none <root> -o dyn"
            }
            CacheManager::Openafs | CacheManager::Auristor => "afsd mounts the AFS root there",
        }
    }

    /// Opens the root (a directory, followed if the admin configured a symlink) and
    /// checks its filesystem.
    pub fn open(&self) -> Result<OwnedFd, AfsRootError> {
        let unreachable = |error: io::Error| AfsRootError::Unreachable {
            path: self.path.clone(),
            hint: self.hint(),
            error,
        };
        let root = rustix::fs::open(
            &self.path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| unreachable(e.into()))?;
        if let Some((expected, name)) = self.expected_magic() {
            let magic = rustix::fs::fstatfs(&root)
                .map_err(|e| unreachable(e.into()))?
                .f_type;
            // f_type is signed on some architectures; compare the 32-bit value.
            if magic as i64 & 0xffff_ffff != expected {
                return Err(AfsRootError::NotAfs {
                    path: self.path.clone(),
                    magic: magic as i64 & 0xffff_ffff,
                    expected: name,
                    hint: self.hint(),
                });
            }
        }
        Ok(root)
    }

    /// Probe's check: the root is the AFS filesystem and can be listed.
    pub fn check(&self) -> Result<(), AfsRootError> {
        let root = self.open()?;
        let listable = rustix::fs::openat(
            root.as_fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .and_then(|dir| {
            let mut entries = rustix::fs::Dir::read_from(&dir)?;
            entries
                .read()
                .transpose()
                .map(|_| ())
                .map_err(io::Error::from)
        });
        listable.map_err(|error| AfsRootError::Unreachable {
            path: self.path.clone(),
            hint: self.hint(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_afs() {
        let dir = tempfile::tempdir().expect("tempdir");
        for cache_manager in [CacheManager::Kafs, CacheManager::Openafs] {
            let root = AfsRoot::new(dir.path().to_path_buf(), cache_manager);
            let err = root.open().expect_err("not AFS");
            assert!(matches!(err, AfsRootError::NotAfs { .. }), "{err}");
            assert!(err.to_string().contains(&dir.path().display().to_string()));
            assert!(root.check().is_err());
        }
        // AuriStorFS: its type is not published; a listable root passes.
        let auristor = AfsRoot::new(dir.path().to_path_buf(), CacheManager::Auristor);
        auristor.check().expect("listable");
        let gone = AfsRoot::new(dir.path().join("missing"), CacheManager::Auristor);
        assert!(matches!(gone.open(), Err(AfsRootError::Unreachable { .. })));
    }
}
