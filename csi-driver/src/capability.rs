//! Checks of CSI volume capabilities, shared by the node and controller.

use csi_proto::v1::VolumeCapability;
use csi_proto::v1::volume_capability::AccessType;
use csi_proto::v1::volume_capability::access_mode::Mode;

use crate::volume::InvalidField;

/// Accepts mount access with any known access mode (AFS is shared by nature)
/// and tells whether it asks for read-only access: a reader-only mode or the
/// `ro` mount option (a PV's `mountOptions`).
pub fn check(field: &str, capability: &VolumeCapability) -> Result<bool, InvalidField> {
    let ro_option = match &capability.access_type {
        Some(AccessType::Mount(mount)) => mount.mount_flags.iter().any(|flag| flag == "ro"),
        Some(AccessType::Block(_)) => {
            return Err(InvalidField::new(
                field,
                "block access is not supported: AFS is a filesystem, use mount access",
            ));
        }
        None => return Err(InvalidField::new(field, "access_type is required (mount)")),
    };
    let mode = capability
        .access_mode
        .as_ref()
        .map_or(Mode::Unknown, |mode| mode.mode());
    match mode {
        Mode::Unknown => Err(InvalidField::new(
            field,
            "access_mode is required (for example MULTI_NODE_MULTI_WRITER)",
        )),
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly => Ok(true),
        Mode::SingleNodeWriter
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter
        | Mode::MultiNodeSingleWriter
        | Mode::MultiNodeMultiWriter => Ok(ro_option),
    }
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

    #[test]
    fn mount_only_with_a_mode() {
        let mount = Some(AccessType::Mount(MountVolume::default()));
        assert_eq!(
            check("c", &capability(mount.clone(), Mode::MultiNodeMultiWriter)),
            Ok(false)
        );
        assert_eq!(
            check("c", &capability(mount.clone(), Mode::MultiNodeReaderOnly)),
            Ok(true)
        );
        assert!(check("c", &capability(mount, Mode::Unknown)).is_err());
        let ro = Some(AccessType::Mount(MountVolume {
            mount_flags: vec!["ro".into()],
            ..MountVolume::default()
        }));
        assert_eq!(
            check("c", &capability(ro, Mode::MultiNodeMultiWriter)),
            Ok(true)
        );
        let block = Some(AccessType::Block(BlockVolume::default()));
        let err = check("c", &capability(block, Mode::SingleNodeWriter)).expect_err("block");
        assert_eq!(err.field, "c");
        assert!(check("c", &capability(None, Mode::SingleNodeWriter)).is_err());
    }
}
