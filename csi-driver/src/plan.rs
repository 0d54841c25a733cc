//! Where a mount comes from: a pure function of the cache manager, the AFS
//! root, the volume spec and the capability's mount options.

use std::path::{Path, PathBuf};

use crate::capability::MountOptions;
use crate::config::CacheManager;
use crate::volume::{InvalidField, VolumeKind, VolumeSpec};

/// The filesystem type kAFS registers.
pub const AFS_FS_TYPE: &str = "afs";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// Bind a directory of the AFS root (`path` is below it, or it); `recursive`
    /// carries its submounts along.
    Bind { path: PathBuf, recursive: bool },
    /// Mount a new `afs` filesystem (kAFS) from a `#cell:volume` device.
    Afs { device: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub source: MountSource,
    /// The attributes asked for; `read_only` also when the spec forces it.
    pub options: MountOptions,
}

impl MountPlan {
    pub fn read_only(&self) -> bool {
        self.options.read_only
    }
}

/// Builds the plan. `options` is what the request asks for (the CSI `readonly`
/// field, a reader-only access mode, mount flags); the spec may force read-only.
/// An SELinux `context=` can only be given to a new filesystem mount: a bind shows
/// the labels of the AFS root's own mount.
pub fn plan_mount(
    cache_manager: CacheManager,
    afs_root: &Path,
    spec: &VolumeSpec,
    options: &MountOptions,
) -> Result<MountPlan, InvalidField> {
    let read_only = options.read_only || spec.read_only();
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
    if options.selinux_context.is_some() && matches!(source, MountSource::Bind { .. }) {
        return Err(InvalidField::new(
            "volume_capability.mount.mount_flags",
            format!(
                "context= applies only to kafs volume mounts (a new afs filesystem); a bind of the AFS root (cache manager {cache_manager}, or mount-type root) shows the labels of the AFS root's own mount: give the context to that mount instead"
            ),
        ));
    }
    Ok(MountPlan {
        source,
        options: MountOptions {
            read_only,
            ..options.clone()
        },
    })
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

    fn ro(read_only: bool) -> MountOptions {
        MountOptions {
            read_only,
            ..MountOptions::default()
        }
    }

    fn plan(cm: CacheManager, spec: &VolumeSpec, read_only: bool) -> MountPlan {
        plan_mount(cm, Path::new("/afs"), spec, &ro(read_only)).expect("plans")
    }

    fn bind(path: &str, recursive: bool, read_only: bool) -> MountPlan {
        MountPlan {
            source: MountSource::Bind {
                path: path.into(),
                recursive,
            },
            options: ro(read_only),
        }
    }

    #[test]
    fn per_cache_manager() {
        let vol = volume("proj", false);
        assert_eq!(
            plan(CacheManager::Auristor, &vol, false),
            bind("/afs/.@mount/example.org/proj", false, false)
        );
        assert_eq!(
            plan(CacheManager::Openafs, &vol, true),
            bind("/afs/.:mount/example.org:proj", false, true)
        );
        let afs = |device: &str, read_only| MountPlan {
            source: MountSource::Afs {
                device: device.into(),
            },
            options: ro(read_only),
        };
        assert_eq!(
            plan(CacheManager::Kafs, &vol, false),
            afs("%example.org:proj", false)
        );
        assert_eq!(
            plan(CacheManager::Kafs, &vol, true),
            afs("#example.org:proj", true)
        );
        assert_eq!(
            plan(CacheManager::Kafs, &volume("proj.readonly", false), false),
            afs("#example.org:proj.readonly", true)
        );
        assert_eq!(
            plan(CacheManager::Kafs, &volume("proj", true), false),
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
                plan(cm, &VolumeSpec::Root { read_only: true }, false),
                bind("/afs", true, true)
            );
        }
    }

    #[test]
    fn selinux_context_only_for_new_afs_mounts() {
        let labelled = MountOptions {
            selinux_context: Some("system_u:object_r:container_file_t:s0".into()),
            no_exec: true,
            ..MountOptions::default()
        };
        let kafs = plan_mount(
            CacheManager::Kafs,
            Path::new("/afs"),
            &volume("proj", false),
            &labelled,
        )
        .expect("kafs volume mounts take it");
        assert_eq!(kafs.options.selinux_context, labelled.selinux_context);
        assert!(kafs.options.no_exec);
        for (cm, spec) in [
            (CacheManager::Auristor, volume("proj", false)),
            (CacheManager::Openafs, volume("proj", false)),
            (CacheManager::Kafs, VolumeSpec::Root { read_only: false }),
        ] {
            let err = plan_mount(cm, Path::new("/afs"), &spec, &labelled).expect_err("a bind");
            assert_eq!(err.field, "volume_capability.mount.mount_flags", "{cm}");
        }
    }
}
