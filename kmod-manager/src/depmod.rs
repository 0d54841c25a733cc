//! `modules.dep` / `modules.builtin` parsing and load-order resolution (pure).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Module names treat `-` and `_` alike; the kernel reports `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name of a path such as `kernel/fs/afs/kafs.ko` or `.../x.ko.xz`.
pub fn name_of_path(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))?;
    (!stem.is_empty()).then(|| normalize(stem))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// Path relative to the module directory.
    pub path: String,
    /// Dependencies in `modules.dep` order (a module before the ones it needs).
    pub deps: Vec<String>,
}

/// Parsed `modules.dep`: module name -> entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    entries: HashMap<String, DepEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepError {
    #[error("module {module:?} is not in {file} (checked {count} entries)")]
    Unknown {
        module: String,
        file: String,
        count: usize,
    },
    #[error("{file}: dependency {dep:?} of {module:?} has no entry of its own")]
    MissingDep {
        module: String,
        dep: String,
        file: String,
    },
    #[error("load order entry {entry:?} is neither a known module nor a .ko path")]
    BadOrderEntry { entry: String },
}

impl ModulesDep {
    /// Parses `path: dep1 dep2` lines; malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|line| {
                let (path, deps) = line.split_once(':')?;
                let path = path.trim();
                let name = name_of_path(path)?;
                Some((
                    name,
                    DepEntry {
                        path: path.to_owned(),
                        deps: deps.split_whitespace().map(str::to_owned).collect(),
                    },
                ))
            })
            .collect();
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn get(&self, module: &str) -> Option<&DepEntry> {
        self.entries.get(&normalize(module))
    }

    /// Load order for `module`: its dependencies deepest first, then the module, each
    /// as (name, path relative to the module directory).
    pub fn load_order(&self, module: &str, file: &str) -> Result<Vec<(String, String)>, DepError> {
        let name = normalize(module);
        let entry = self.entries.get(&name).ok_or_else(|| DepError::Unknown {
            module: name.clone(),
            file: file.to_owned(),
            count: self.entries.len(),
        })?;
        let mut order = Vec::with_capacity(entry.deps.len() + 1);
        for dep_path in entry.deps.iter().rev() {
            let dep = name_of_path(dep_path).ok_or_else(|| DepError::MissingDep {
                module: name.clone(),
                dep: dep_path.clone(),
                file: file.to_owned(),
            })?;
            order.push((dep, dep_path.clone()));
        }
        order.push((name, entry.path.clone()));
        Ok(order)
    }
}

/// Names of built-in modules from `modules.builtin`.
pub fn parse_builtin(text: &str) -> Vec<String> {
    text.lines().filter_map(name_of_path).collect()
}

/// Resolves an explicit load order (names or relative `.ko` paths).
pub fn explicit_order(
    entries: &[String],
    dep: &ModulesDep,
) -> Result<Vec<(String, String)>, DepError> {
    entries
        .iter()
        .map(|e| {
            if e.contains('/') || e.ends_with(".ko") {
                let name =
                    name_of_path(e).ok_or_else(|| DepError::BadOrderEntry { entry: e.clone() })?;
                Ok((name, e.clone()))
            } else {
                dep.get(e)
                    .map(|d| (normalize(e), d.path.clone()))
                    .ok_or_else(|| DepError::BadOrderEntry { entry: e.clone() })
            }
        })
        .collect()
}

/// Joins a module path to the module directory (absolute paths are kept).
pub fn module_path(module_dir: &Path, rel: &str) -> PathBuf {
    if rel.starts_with('/') {
        PathBuf::from(rel)
    } else {
        module_dir.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/afs/kafs.ko: kernel/net/rxrpc/rxrpc.ko kernel/net/ipv6/ip6_udp_tunnel.ko kernel/net/ipv4/udp_tunnel.ko kernel/net/dns_resolver/dns_resolver.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/rxrpc/rxrpc.ko: kernel/net/ipv6/ip6_udp_tunnel.ko kernel/net/ipv4/udp_tunnel.ko
kernel/net/dns_resolver/dns_resolver.ko:
garbage line
kernel/drivers/foo-bar.ko.xz:
";

    #[test]
    fn kafs_order() {
        let d = ModulesDep::parse(DEP);
        let names: Vec<String> = d
            .load_order("kafs", "modules.dep")
            .expect("known")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "netfs",
                "fscache",
                "dns_resolver",
                "udp_tunnel",
                "ip6_udp_tunnel",
                "rxrpc",
                "kafs"
            ]
        );
        assert!(d.get("foo_bar").is_some() && d.get("foo-bar").is_some());
        let e = d.load_order("yfs", "modules.dep").expect_err("unknown");
        assert!(e.to_string().contains("\"yfs\""), "{e}");
    }

    #[test]
    fn explicit() {
        let d = ModulesDep::parse(DEP);
        let o = explicit_order(&["netfs".into(), "extra/yfs.ko".into()], &d).expect("ok");
        assert_eq!(o[1], ("yfs".into(), "extra/yfs.ko".into()));
        assert!(explicit_order(&["nope".into()], &d).is_err());
        assert_eq!(parse_builtin("kernel/fs/ext4/ext4.ko\n"), vec!["ext4"]);
    }
}
