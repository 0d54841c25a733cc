//! What this node lets a publish reach, set by the cluster admin (the SpecialResource)
//! rather than by whoever writes the volume attributes. Pure: no I/O.
//!
//! An inline ephemeral volume is written by any pod creator, and a publish of a cell
//! makes this node's kernel talk to that cell's servers; so cells are allow-listed,
//! the whole AFS namespace (every cell, reachable by name under a root mount) and
//! inline volumes are opt-in.

use std::collections::{BTreeSet, HashMap};

use crate::volume::{self, InvalidField, VolumeSpec};

/// The allow-list entry that allows every cell.
pub const ANY_CELL: &str = "*";

/// Which cells may be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedCells {
    Any,
    Only(BTreeSet<String>),
}

impl AllowedCells {
    /// Parses `--allowed-cells`: cell names (compared case-insensitively, as AFS
    /// does), or the single entry `*`. Empty entries are ignored.
    pub fn parse(entries: &[String]) -> Result<Self, InvalidField> {
        let entries: Vec<&str> = entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .collect();
        if entries.contains(&ANY_CELL) {
            if entries.len() > 1 {
                return Err(InvalidField::new(
                    "--allowed-cells",
                    "\"*\" allows every cell and cannot be combined with cell names",
                ));
            }
            return Ok(Self::Any);
        }
        let mut cells = BTreeSet::new();
        for entry in entries {
            let cell = volume::validate_cell_name(entry)
                .map_err(|e| InvalidField::new("--allowed-cells", e.rule))?;
            cells.insert(cell.to_ascii_lowercase());
        }
        Ok(Self::Only(cells))
    }

    pub fn allows(&self, cell: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(cells) => cells.contains(&cell.to_ascii_lowercase()),
        }
    }
}

impl std::fmt::Display for AllowedCells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str(ANY_CELL),
            Self::Only(cells) if cells.is_empty() => f.write_str("none"),
            Self::Only(cells) => {
                let list: Vec<&str> = cells.iter().map(String::as_str).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allowed_cells: AllowedCells,
    pub allow_root_mounts: bool,
    pub allow_ephemeral: bool,
}

/// A publish this node's policy refuses; the message names the attribute and the
/// setting that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Refused {
    pub field: &'static str,
    pub rule: String,
}

impl Policy {
    /// Checks a parsed volume against the policy; `context` is the request's volume
    /// context, where kubelet marks inline volumes (`csi.storage.k8s.io/ephemeral`).
    pub fn check(
        &self,
        spec: &VolumeSpec,
        context: &HashMap<String, String>,
    ) -> Result<(), Refused> {
        if context.get(volume::EPHEMERAL).is_some_and(|v| v == "true") && !self.allow_ephemeral {
            return Err(Refused {
                field: volume::EPHEMERAL,
                rule: "inline ephemeral volumes are not allowed on this node (csi.allowEphemeral of the SpecialResource, --allow-ephemeral)".into(),
            });
        }
        match spec {
            VolumeSpec::Root { .. } if !self.allow_root_mounts => Err(Refused {
                field: volume::MOUNT_TYPE,
                rule: "\"root\" (the whole AFS namespace) is not allowed on this node (csi.allowRootMounts of the SpecialResource, --allow-root-mounts)".into(),
            }),
            VolumeSpec::Volume { cell, .. } if !self.allowed_cells.allows(cell) => Err(Refused {
                field: volume::CELL_NAME,
                rule: format!(
                    "cell {cell:?} is not allowed on this node (allowed: {}; csi.allowedCells of the SpecialResource, --allowed-cells)",
                    self.allowed_cells
                ),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::validate_volume_name;

    fn cells(list: &[&str]) -> AllowedCells {
        AllowedCells::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("valid list")
    }

    fn volume_of(cell: &str) -> VolumeSpec {
        VolumeSpec::Volume {
            cell: cell.into(),
            volume: validate_volume_name("proj").expect("valid"),
            read_only: false,
        }
    }

    fn ephemeral(flag: &str) -> HashMap<String, String> {
        HashMap::from([(volume::EPHEMERAL.to_owned(), flag.to_owned())])
    }

    #[test]
    fn allow_list_parsing() {
        assert_eq!(cells(&["*"]), AllowedCells::Any);
        assert_eq!(cells(&[]), AllowedCells::Only(BTreeSet::new()));
        assert_eq!(
            cells(&["Example.ORG", " test.afs ", ""]),
            AllowedCells::Only(BTreeSet::from(["example.org".into(), "test.afs".into()]))
        );
        for bad in [&["*", "example.org"][..], &["a/b"], &["../etc"]] {
            let list: Vec<String> = bad.iter().map(|s| (*s).to_owned()).collect();
            let err = AllowedCells::parse(&list).expect_err("refused");
            assert_eq!(err.field, "--allowed-cells");
        }
    }

    #[test]
    fn cells_outside_the_list_are_refused() {
        let policy = Policy {
            allowed_cells: cells(&["example.org"]),
            allow_root_mounts: false,
            allow_ephemeral: false,
        };
        let none = HashMap::new();
        assert_eq!(policy.check(&volume_of("example.org"), &none), Ok(()));
        assert_eq!(policy.check(&volume_of("EXAMPLE.org"), &none), Ok(()));
        let refused = policy
            .check(&volume_of("evil.example"), &none)
            .expect_err("not listed");
        assert_eq!(refused.field, volume::CELL_NAME);
        assert!(refused.rule.contains("example.org"), "{refused}");
        let nobody = Policy {
            allowed_cells: cells(&[]),
            ..policy
        };
        assert!(nobody.check(&volume_of("example.org"), &none).is_err());
    }

    #[test]
    fn root_mounts_and_inline_volumes_are_opt_in() {
        let closed = Policy {
            allowed_cells: AllowedCells::Any,
            allow_root_mounts: false,
            allow_ephemeral: false,
        };
        let root = VolumeSpec::Root { read_only: true };
        let none = HashMap::new();
        assert_eq!(
            closed.check(&root, &none).expect_err("root").field,
            volume::MOUNT_TYPE
        );
        assert_eq!(
            closed
                .check(&volume_of("example.org"), &ephemeral("true"))
                .expect_err("inline")
                .field,
            volume::EPHEMERAL
        );
        assert_eq!(
            closed.check(&volume_of("example.org"), &ephemeral("false")),
            Ok(()),
            "a persistent volume with pod info"
        );
        let open = Policy {
            allow_root_mounts: true,
            allow_ephemeral: true,
            ..closed
        };
        assert_eq!(open.check(&root, &ephemeral("true")), Ok(()));
    }
}
