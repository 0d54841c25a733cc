//! Volume attributes (PV `volumeAttributes`, StorageClass `parameters`, inline
//! volume attributes) parsed into a validated [`VolumeSpec`]. Pure: no I/O.
//!
//! Attribute names follow the original AuriStorFS driver for drop-in use.

use std::collections::HashMap;
use std::fmt;

pub const MOUNT_TYPE: &str = "mount-type";
pub const CELL_NAME: &str = "cell-name";
pub const VOLUME_NAME: &str = "volume-name";
pub const READ_ONLY: &str = "read-only";

/// Keys Kubernetes adds itself (pod info on mount, ephemeral flag, PVC/PV
/// names from `--extra-create-metadata`).
pub const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";

/// The longest AFS volume name, without a `.readonly` or `.backup` suffix.
pub const MAX_VOLUME_NAME: usize = 22;
/// The longest cell name OpenAFS and AuriStorFS accept (MAXCELLCHARS).
pub const MAX_CELL_NAME: usize = 64;

/// A bad field in a request: which field, and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InvalidField {
    pub field: String,
    pub rule: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// What to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSpec {
    /// One volume of one cell.
    Volume {
        cell: String,
        volume: VolumeName,
        read_only: bool,
    },
    /// The whole AFS namespace.
    Root { read_only: bool },
}

impl VolumeSpec {
    /// Read-only because the attributes or the volume itself say so.
    pub fn read_only(&self) -> bool {
        match self {
            Self::Volume {
                volume, read_only, ..
            } => *read_only || volume.kind != VolumeKind::ReadWrite,
            Self::Root { read_only } => *read_only,
        }
    }
}

/// Which instance of a volume a name selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    ReadWrite,
    ReadOnly,
    Backup,
}

/// A validated AFS volume name, e.g. `user.alice` or `root.cell.readonly`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeName {
    full: String,
    pub kind: VolumeKind,
}

impl VolumeName {
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Parses and validates volume attributes. Keys under `csi.storage.k8s.io/`
/// are Kubernetes' own and ignored here; any other unknown key is returned in
/// the second element so the caller can warn about a likely typo.
pub fn parse_attributes(
    attributes: &HashMap<String, String>,
) -> Result<(VolumeSpec, Vec<String>), InvalidField> {
    let get = |key: &str| attributes.get(key).map(String::as_str);
    let read_only = match get(READ_ONLY) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(InvalidField::new(
                READ_ONLY,
                format!("must be \"true\" or \"false\", got {other:?}"),
            ));
        }
    };
    let spec = match get(MOUNT_TYPE) {
        None | Some("") => {
            return Err(InvalidField::new(
                MOUNT_TYPE,
                "required: \"volume\" (one AFS volume) or \"root\" (the whole /afs)",
            ));
        }
        Some("volume") => {
            let cell = get(CELL_NAME).ok_or_else(|| {
                InvalidField::new(CELL_NAME, "required with mount-type \"volume\"")
            })?;
            let volume = get(VOLUME_NAME).ok_or_else(|| {
                InvalidField::new(VOLUME_NAME, "required with mount-type \"volume\"")
            })?;
            VolumeSpec::Volume {
                cell: validate_cell_name(cell)?.to_owned(),
                volume: validate_volume_name(volume)?,
                read_only,
            }
        }
        Some("root") => {
            for key in [CELL_NAME, VOLUME_NAME] {
                if attributes.contains_key(key) {
                    return Err(InvalidField::new(
                        key,
                        "not allowed with mount-type \"root\" (the root mount shows every cell)",
                    ));
                }
            }
            VolumeSpec::Root { read_only }
        }
        Some(other) => {
            return Err(InvalidField::new(
                MOUNT_TYPE,
                format!("must be \"volume\" or \"root\", got {other:?}"),
            ));
        }
    };
    let mut unknown: Vec<String> = attributes
        .keys()
        .filter(|key| {
            ![MOUNT_TYPE, CELL_NAME, VOLUME_NAME, READ_ONLY].contains(&key.as_str())
                && !key.starts_with(KUBERNETES_PREFIX)
        })
        .cloned()
        .collect();
    unknown.sort();
    Ok((spec, unknown))
}

/// A cell name is DNS-like: dot-separated labels of letters, digits and `-`,
/// each starting and ending with a letter or digit, at most 64 characters.
pub fn validate_cell_name(cell: &str) -> Result<&str, InvalidField> {
    let bad = |rule: String| Err(InvalidField::new(CELL_NAME, rule));
    if cell.is_empty() {
        return bad("must not be empty".into());
    }
    if cell.len() > MAX_CELL_NAME {
        return bad(format!(
            "is {} characters; a cell name is at most {MAX_CELL_NAME}",
            cell.len()
        ));
    }
    for label in cell.split('.') {
        let ok = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return bad(format!(
                "{cell:?} is not DNS-like: labels of letters, digits and '-' separated by single dots"
            ));
        }
    }
    Ok(cell)
}

/// A volume name is 1 to 22 characters of letters, digits, `.`, `_`, `-`,
/// `+`, not starting with `.`, optionally followed by `.readonly` or `.backup`.
pub fn validate_volume_name(name: &str) -> Result<VolumeName, InvalidField> {
    let bad = |rule: String| Err(InvalidField::new(VOLUME_NAME, rule));
    let (base, kind) = if let Some(base) = name.strip_suffix(".readonly") {
        (base, VolumeKind::ReadOnly)
    } else if let Some(base) = name.strip_suffix(".backup") {
        (base, VolumeKind::Backup)
    } else {
        (name, VolumeKind::ReadWrite)
    };
    if base.is_empty() {
        return bad("must not be empty".into());
    }
    if let Some(c) = base
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')))
    {
        return bad(format!(
            "{name:?} contains {c:?}; allowed are letters, digits, '.', '_', '-' and '+'"
        ));
    }
    if base.starts_with('.') {
        return bad(format!("{name:?} must not start with '.'"));
    }
    if base.len() > MAX_VOLUME_NAME {
        return bad(format!(
            "{name:?} is {} characters; an AFS volume name is at most {MAX_VOLUME_NAME} (plus .readonly or .backup)",
            base.len()
        ));
    }
    Ok(VolumeName {
        full: name.to_owned(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn field_of(pairs: &[(&str, &str)]) -> String {
        parse_attributes(&attrs(pairs))
            .expect_err("must be refused")
            .field
    }

    #[test]
    fn volume_and_root() {
        let (spec, unknown) = parse_attributes(&attrs(&[
            (MOUNT_TYPE, "volume"),
            (CELL_NAME, "example.org"),
            (VOLUME_NAME, "user.alice"),
            (POD_NAME, "web-0"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .expect("valid");
        assert!(unknown.is_empty());
        assert_eq!(
            spec,
            VolumeSpec::Volume {
                cell: "example.org".into(),
                volume: validate_volume_name("user.alice").expect("valid"),
                read_only: false
            }
        );
        assert!(!spec.read_only());
        let (root, _) =
            parse_attributes(&attrs(&[(MOUNT_TYPE, "root"), (READ_ONLY, "true")])).expect("valid");
        assert_eq!(root, VolumeSpec::Root { read_only: true });
    }

    #[test]
    fn replicas_are_read_only() {
        for name in ["root.cell.readonly", "root.cell.backup"] {
            let (spec, _) = parse_attributes(&attrs(&[
                (MOUNT_TYPE, "volume"),
                (CELL_NAME, "example.org"),
                (VOLUME_NAME, name),
            ]))
            .expect("valid");
            assert!(spec.read_only(), "{name}");
        }
    }

    #[test]
    fn unknown_keys_are_reported_not_refused() {
        let (_, unknown) =
            parse_attributes(&attrs(&[(MOUNT_TYPE, "root"), ("volume_name", "x")])).expect("valid");
        assert_eq!(unknown, vec!["volume_name".to_owned()]);
    }

    #[test]
    fn bad_input_names_the_field() {
        assert_eq!(field_of(&[]), MOUNT_TYPE);
        assert_eq!(field_of(&[(MOUNT_TYPE, "cell")]), MOUNT_TYPE);
        assert_eq!(field_of(&[(MOUNT_TYPE, "volume")]), CELL_NAME);
        assert_eq!(
            field_of(&[(MOUNT_TYPE, "volume"), (CELL_NAME, "example.org")]),
            VOLUME_NAME
        );
        assert_eq!(
            field_of(&[(MOUNT_TYPE, "root"), (CELL_NAME, "example.org")]),
            CELL_NAME
        );
        assert_eq!(
            field_of(&[(MOUNT_TYPE, "root"), (READ_ONLY, "yes")]),
            READ_ONLY
        );
    }

    #[test]
    fn cell_names() {
        for good in ["example.org", "a", "grand.central.org", "cell-1.x9"] {
            assert!(validate_cell_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(65);
        for bad in [
            "", "..", "a..b", ".a", "a.", "-a", "a-", "a/b", "a\0b", "a b", "ü.org", &long,
        ] {
            assert!(validate_cell_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn volume_names() {
        for good in [
            "root.cell",
            "user.alice",
            "a",
            "proj_x-1+2",
            "abcdefghijklmnopqrstuv",
            "abcdefghijklmnopqrstuv.readonly",
            "root.afs.backup",
        ] {
            assert!(validate_volume_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../etc",
            "a\0",
            "a b",
            ".readonly",
            "abcdefghijklmnopqrstuvw",
            "vol:other",
        ] {
            assert!(validate_volume_name(bad).is_err(), "{bad:?}");
        }
        let err = validate_volume_name("abcdefghijklmnopqrstuvw").expect_err("too long");
        assert!(err.rule.contains("at most 22"), "{err}");
    }
}
