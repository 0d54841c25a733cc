//! Where a mount comes from: a pure function of the cache manager, the AFS
//! root and the volume spec.

use std::path::{Path, PathBuf};

use crate::config::CacheManager;
use crate::volume::{VolumeKind, VolumeSpec};

/// The filesystem type kAFS registers.
pub const AFS_FS_TYPE: &str = "afs";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// Bind an existing directory; `recursive` carries its submounts along.
    Bind { path: PathBuf, recursive: bool },
    /// Mount a new `afs` filesystem (kAFS) from a `#cell:volume` device.
    Afs { device: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub source: MountSource,
    pub read_only: bool,
}

/// Builds the plan. `read_only` is what the request asks for (the CSI
/// `readonly` field or a reader-only access mode); the spec may force it too.
pub fn plan_mount(
    cache_manager: CacheManager,
    afs_root: &Path,
    spec: &VolumeSpec,
    read_only: bool,
) -> MountPlan {
    let read_only = read_only || spec.read_only();
    let source = match (spec, cache_manager) {
        (VolumeSpec::Root { .. }, _) => MountSource::Bind {
            path: afs_root.to_path_buf(),
            recursive: true,
        },
        (VolumeSpec::Volume { cell, volume, .. }, CacheManager::Auristor) => MountSource::Bind {
            path: afs_root.join(".@mount").join(cell).join(volume.as_str()),
            recursive: false,
        },
        (VolumeSpec::Volume { cell, volume, .. }, CacheManager::Openafs) => MountSource::Bind {
            path: afs_root.join(".:mount").join(format!("{cell}:{volume}")),
            recursive: false,
        },
        (VolumeSpec::Volume { cell, volume, .. }, CacheManager::Kafs) => {
            // '%' forces the read-write volume; '#' lets kAFS prefer a
            // read-only replica, which is what a read-only mount wants.
            let prefix = if read_only || volume.kind != VolumeKind::ReadWrite {
                '#'
            } else {
                '%'
            };
            MountSource::Afs {
                device: format!("{prefix}{cell}:{volume}"),
            }
        }
    };
    MountPlan { source, read_only }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::validate_volume_name;

    fn volume(name: &str, read_only: bool) -> VolumeSpec {
        VolumeSpec::Volume {
            cell: "example.org".into(),
            volume: validate_volume_name(name).expect("valid"),
            read_only,
        }
    }

    fn bind(path: &str, recursive: bool, read_only: bool) -> MountPlan {
        MountPlan {
            source: MountSource::Bind {
                path: path.into(),
                recursive,
            },
            read_only,
        }
    }

    #[test]
    fn per_cache_manager() {
        let root = Path::new("/afs");
        let vol = volume("proj", false);
        assert_eq!(
            plan_mount(CacheManager::Auristor, root, &vol, false),
            bind("/afs/.@mount/example.org/proj", false, false)
        );
        assert_eq!(
            plan_mount(CacheManager::Openafs, root, &vol, true),
            bind("/afs/.:mount/example.org:proj", false, true)
        );
        let afs = |device: &str, read_only| MountPlan {
            source: MountSource::Afs {
                device: device.into(),
            },
            read_only,
        };
        assert_eq!(
            plan_mount(CacheManager::Kafs, root, &vol, false),
            afs("%example.org:proj", false)
        );
        assert_eq!(
            plan_mount(CacheManager::Kafs, root, &vol, true),
            afs("#example.org:proj", true)
        );
        assert_eq!(
            plan_mount(
                CacheManager::Kafs,
                root,
                &volume("proj.readonly", false),
                false
            ),
            afs("#example.org:proj.readonly", true)
        );
        assert_eq!(
            plan_mount(CacheManager::Kafs, root, &volume("proj", true), false),
            afs("#example.org:proj", true)
        );
    }

    #[test]
    fn root_is_a_recursive_bind_everywhere() {
        for cm in [
            CacheManager::Auristor,
            CacheManager::Openafs,
            CacheManager::Kafs,
        ] {
            assert_eq!(
                plan_mount(
                    cm,
                    Path::new("/afs"),
                    &VolumeSpec::Root { read_only: true },
                    false
                ),
                bind("/afs", true, true)
            );
        }
    }
}
