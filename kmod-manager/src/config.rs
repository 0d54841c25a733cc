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
    /// The AFS client `run` brings up once the module is loaded, and takes down before
    /// it unloads the module; absent: the module only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientSettings>,
}

/// The AFS client of the node: what makes a loaded module serve the AFS root.
///
/// ```yaml
/// client:
///   cacheManager: openafs
///   afsRoot: /afs
///   configDir: /etc/openafs        # CellServDB + ThisCell (kafs, openafs)
///   afsd:
///     cacheDir: /var/cache/openafs # absent: memory cache
///     cacheBlocks: 100000          # 1 KiB blocks
///     options: [-dynroot, -fakestat]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientSettings {
    pub cache_manager: CacheManagerKind,
    /// Where the AFS root is mounted on the node (the host's mount namespace).
    #[serde(default = "default_afs_root")]
    pub afs_root: PathBuf,
    /// Directory of the client configuration: `CellServDB` and `ThisCell` (kafs,
    /// openafs; afsd's `-confdir`), `yfs-client.conf` (auristor).
    pub config_dir: PathBuf,
    /// auristor: directory of `cellservdb.conf` when it is not in `configDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_database_dir: Option<PathBuf>,
    /// The cache manager daemon (openafs, auristor); ignored for kafs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afsd: Option<AfsdSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheManagerKind {
    /// AuriStorFS: the `yfs` module and its afsd.
    Auristor,
    /// OpenAFS: the `openafs` module and its afsd.
    Openafs,
    /// The in-kernel kAFS client: cells through procfs, the dynamic root mount.
    Kafs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AfsdSettings {
    /// The image's afsd.
    #[serde(default = "default_afsd_path")]
    pub path: PathBuf,
    /// Disk cache directory; absent: a memory cache (`-memcache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Cache size in 1 KiB blocks (`-blocks`).
    #[serde(default = "default_cache_blocks")]
    pub cache_blocks: u64,
    /// Further afsd options, e.g. `-dynroot`, `-fakestat`, `-stat 2000`.
    #[serde(default)]
    pub options: Vec<String>,
}

impl Default for AfsdSettings {
    fn default() -> Self {
        Self {
            path: default_afsd_path(),
            cache_dir: None,
            cache_blocks: default_cache_blocks(),
            options: Vec::new(),
        }
    }
}

pub fn default_afs_root() -> PathBuf {
    PathBuf::from("/afs")
}

pub fn default_afsd_path() -> PathBuf {
    PathBuf::from("/usr/sbin/afsd")
}

pub const fn default_cache_blocks() -> u64 {
    100_000
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
