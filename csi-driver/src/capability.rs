//! Checks of CSI volume capabilities, shared by the node and controller.

use csi_proto::v1::VolumeCapability;
use csi_proto::v1::volume_capability::AccessType;
use csi_proto::v1::volume_capability::access_mode::Mode;

use crate::volume::InvalidField;

/// The field of a capability that carries mount options (a PV's `mountOptions`).
const MOUNT_FLAGS: &str = "mount_flags";
/// The mount options this driver applies; any other is refused, never dropped.
pub const SUPPORTED_MOUNT_FLAGS: &str = "ro, noexec, context=<SELinux context>";
/// The longest SELinux context accepted (the kernel's own limit is a page).
const MAX_SELINUX_CONTEXT: usize = 255;

/// What a capability asks of the mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// A reader-only access mode or the `ro` option.
    pub read_only: bool,
    /// `noexec`.
    pub no_exec: bool,
    /// `context=<user:role:type[:level]>`, without quotes: the SELinux label of every
    /// file of the mount.
    pub selinux_context: Option<String>,
}

/// Accepts mount access with any known access mode (AFS is shared by nature) and
/// the supported mount options; tells what they ask for.
pub fn check(field: &str, capability: &VolumeCapability) -> Result<MountOptions, InvalidField> {
    let flags = match &capability.access_type {
        Some(AccessType::Mount(mount)) => &mount.mount_flags,
        Some(AccessType::Block(_)) => {
            return Err(InvalidField::new(
                field,
                "block access is not supported: AFS is a filesystem, use mount access",
            ));
        }
        None => return Err(InvalidField::new(field, "access_type is required (mount)")),
    };
    let mut options = mount_options(&format!("{field}.mount.{MOUNT_FLAGS}"), flags)?;
    let mode = capability
        .access_mode
        .as_ref()
        .map_or(Mode::Unknown, |mode| mode.mode());
    match mode {
        Mode::Unknown => {
            return Err(InvalidField::new(
                field,
                "access_mode is required (for example MULTI_NODE_MULTI_WRITER)",
            ));
        }
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly => options.read_only = true,
        Mode::SingleNodeWriter
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter
        | Mode::MultiNodeSingleWriter
        | Mode::MultiNodeMultiWriter => {}
    }
    Ok(options)
}

/// Parses mount options: each is applied or refused, naming it and what is supported.
fn mount_options(field: &str, flags: &[String]) -> Result<MountOptions, InvalidField> {
    let mut options = MountOptions::default();
    for flag in flags {
        match flag.as_str() {
            "ro" => options.read_only = true,
            "noexec" => options.no_exec = true,
            other => match other.strip_prefix("context=") {
                Some(context) => {
                    let context = selinux_context(field, context)?;
                    if options.selinux_context.replace(context).is_some() {
                        return Err(InvalidField::new(field, "context= is given twice"));
                    }
                }
                None => {
                    return Err(InvalidField::new(
                        field,
                        format!(
                            "{other:?} is not supported; supported are {SUPPORTED_MOUNT_FLAGS} (every mount is nosuid,nodev)"
                        ),
                    ));
                }
            },
        }
    }
    Ok(options)
}

/// An SELinux context `user:role:type[:level]`, optionally in double quotes (a level
/// such as `s0:c1,c2` holds commas).
fn selinux_context(field: &str, raw: &str) -> Result<String, InvalidField> {
    let value = raw
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(raw);
    let bad = || {
        InvalidField::new(
            field,
            format!("context={raw:?} is not an SELinux context user:role:type[:level]"),
        )
    };
    if value.is_empty() || value.len() > MAX_SELINUX_CONTEXT {
        return Err(bad());
    }
    let mut parts = value.splitn(4, ':');
    let name_ok = |part: Option<&str>| {
        part.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'))
        })
    };
    if !(name_ok(parts.next()) && name_ok(parts.next()) && name_ok(parts.next())) {
        return Err(bad());
    }
    if let Some(level) = parts.next()
        && (level.is_empty()
            || !level.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b',' | b':' | b'-')
            }))
    {
        return Err(bad());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn capability(access_type: Option<AccessType>, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type,
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn read_only(options: Result<MountOptions, InvalidField>) -> Result<bool, InvalidField> {
        options.map(|o| o.read_only)
    }

    fn with_flags(flags: &[&str]) -> Result<MountOptions, InvalidField> {
        let mount = Some(AccessType::Mount(MountVolume {
            mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            ..MountVolume::default()
        }));
        check("c", &capability(mount, Mode::MultiNodeMultiWriter))
    }

    #[test]
    fn mount_only_with_a_mode() {
        let mount = Some(AccessType::Mount(MountVolume::default()));
        assert_eq!(
            read_only(check(
                "c",
                &capability(mount.clone(), Mode::MultiNodeMultiWriter)
            )),
            Ok(false)
        );
        assert_eq!(
            read_only(check(
                "c",
                &capability(mount.clone(), Mode::MultiNodeReaderOnly)
            )),
            Ok(true)
        );
        assert!(check("c", &capability(mount, Mode::Unknown)).is_err());
        let ro = Some(AccessType::Mount(MountVolume {
            mount_flags: vec!["ro".into()],
            ..MountVolume::default()
        }));
        assert_eq!(
            read_only(check("c", &capability(ro, Mode::MultiNodeMultiWriter))),
            Ok(true)
        );
        let block = Some(AccessType::Block(BlockVolume::default()));
        let err = check("c", &capability(block, Mode::SingleNodeWriter)).expect_err("block");
        assert_eq!(err.field, "c");
        assert!(check("c", &capability(None, Mode::SingleNodeWriter)).is_err());
    }

    #[test]
    fn supported_mount_flags_are_applied() {
        assert_eq!(
            with_flags(&["noexec", "context=system_u:object_r:container_file_t:s0"]),
            Ok(MountOptions {
                read_only: false,
                no_exec: true,
                selinux_context: Some("system_u:object_r:container_file_t:s0".into()),
            })
        );
        assert_eq!(
            with_flags(&[r#"context="system_u:object_r:container_file_t:s0:c1,c2""#])
                .map(|o| o.selinux_context),
            Ok(Some("system_u:object_r:container_file_t:s0:c1,c2".into()))
        );
    }

    #[test]
    fn other_mount_flags_are_refused_not_dropped() {
        for bad in [
            &["rw"][..],
            &["nosuid"],
            &["sync"],
            &["context=container_file_t"],
            &["context=a:b:c:s0;rm"],
            &["context="],
            &["context=a:b:c", "context=a:b:d"],
        ] {
            let err = with_flags(bad).expect_err("refused");
            assert_eq!(err.field, "c.mount.mount_flags", "{bad:?}");
        }
        let err = with_flags(&["sync"]).expect_err("refused");
        assert!(err.rule.contains("\"sync\""), "{err}");
        assert!(
            err.rule.contains("context="),
            "names what is supported: {err}"
        );
    }
}
