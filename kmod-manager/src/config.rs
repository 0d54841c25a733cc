//! The driver-container configuration file (`mappings.yaml`).
//!
//! ```yaml
//! moduleVersion: "1.0"
//! module:
//!   name: kafs
//!   parameters: ["rootcell=example.com"]
//!   filesystemTypes: [afs]
//! kernelMappings:
//!   - literal: 6.1.0-56-amd64
//!     containerImage: registry/kafs-${MODULE_VERSION}:${KERNEL_FULL_VERSION}
//!   - regexp: '6\.1\..*-amd64'
//!     containerImage: registry/kafs-${MODULE_VERSION}:${KERNEL_XYZ}
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mapping::{KernelMapping, MappingError, MappingSet};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KmodConfig {
    /// Value of `${MODULE_VERSION}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_version: Option<String>,
    /// Module settings; command-line flags override them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleSettings>,
    #[serde(default)]
    pub kernel_mappings: Vec<KernelMapping>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Parameters passed to the module itself (`key=value`).
    #[serde(default)]
    pub parameters: Vec<String>,
    /// Explicit load order (module names or paths relative to the module directory),
    /// used instead of `modules.dep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_order: Option<Vec<String>>,
    /// Filesystem types whose mounts keep the module in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_types: Option<Vec<String>>,
    /// Directory holding `modules.dep` and the modules (default `/lib/modules/<release>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    #[error("config {path}: {source}")]
    Mapping {
        path: PathBuf,
        #[source]
        source: MappingError,
    },
    #[error(
        "config {path}: module.parameters[{index}] {value:?} must be key=value without whitespace-only key"
    )]
    Parameter {
        path: PathBuf,
        index: usize,
        value: String,
    },
}

impl KmodConfig {
    /// Parses and validates a config from YAML text.
    pub fn from_yaml(path: &Path, text: &str) -> Result<(Self, MappingSet), ConfigError> {
        let cfg: Self = serde_norway::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let set =
            MappingSet::compile(&cfg.kernel_mappings).map_err(|source| ConfigError::Mapping {
                path: path.to_owned(),
                source,
            })?;
        if let Some(m) = &cfg.module {
            for (index, p) in m.parameters.iter().enumerate() {
                if !valid_parameter(p) {
                    return Err(ConfigError::Parameter {
                        path: path.to_owned(),
                        index,
                        value: p.clone(),
                    });
                }
            }
        }
        Ok((cfg, set))
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<(Self, MappingSet), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(path, &text)
    }
}

/// `key=value` or a bare `key`, with a non-empty key made of word characters.
pub fn valid_parameter(p: &str) -> bool {
    let key = p.split_once('=').map_or(p, |(k, _)| k);
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !p.contains(['\n', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config() {
        let y = r#"
moduleVersion: "1.0"
module:
  name: kafs
  parameters: ["rootcell=example.com"]
  filesystemTypes: [afs, yfs]
kernelMappings:
  - literal: 6.1.0-56-amd64
    containerImage: r/kafs-${MODULE_VERSION}:${KERNEL_FULL_VERSION}
"#;
        let (cfg, set) = KmodConfig::from_yaml(Path::new("m.yaml"), y).expect("valid");
        let m = cfg.module.clone().expect("module");
        assert_eq!(m.filesystem_types, Some(vec!["afs".into(), "yfs".into()]));
        let k = crate::kernel::KernelRelease::parse("6.1.0-56-amd64").expect("k");
        assert_eq!(
            set.select(&k, cfg.module_version.as_deref())
                .expect("match")
                .image,
            "r/kafs-1.0:6.1.0-56-amd64"
        );
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = KmodConfig::from_yaml(Path::new("m.yaml"), "kernelMapings: []").expect_err("typo");
        assert!(e.to_string().contains("m.yaml"), "{e}");
        let e = KmodConfig::from_yaml(
            Path::new("m.yaml"),
            "module: {parameters: [\"=x\"]}\nkernelMappings: []",
        )
        .expect_err("bad param");
        assert!(e.to_string().contains("module.parameters[0]"), "{e}");
    }
}
