//! Module state from `/proc/modules` and `/sys/module/<m>/{refcnt,holders,initstate}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use procfs::FromRead;
use serde::Serialize;

use crate::depmod::normalize;

/// Where the kernel's pseudo filesystems are (overridable for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysPaths {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for SysPaths {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// A module as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedModule {
    pub name: String,
    pub size: u64,
    /// References held on the module (`/sys/module/<m>/refcnt`, else `/proc/modules`).
    pub refcount: i64,
    /// Modules depending on this one (`/sys/module/<m>/holders`, else "used by").
    pub holders: Vec<String>,
    /// `live`, `coming` or `going`.
    pub initstate: String,
    pub srcversion: Option<String>,
    /// GNU build id (hex) from `/sys/module/<m>/notes/.note.gnu.build-id`.
    pub build_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ModuleState {
    Absent,
    BuiltIn,
    Loaded(LoadedModule),
}

impl ModuleState {
    pub fn loaded(&self) -> Option<&LoadedModule> {
        match self {
            Self::Loaded(m) => Some(m),
            _ => None,
        }
    }
    pub fn label(&self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::BuiltIn => "built-in",
            Self::Loaded(_) => "loaded",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
}

/// A snapshot of `/proc/modules`.
#[derive(Debug, Clone, Default)]
pub struct ModuleTable {
    /// `false` when the kernel has no loadable-module support (`/proc/modules` absent).
    pub supported: bool,
    pub modules: BTreeMap<String, procfs::KernelModule>,
}

impl SysPaths {
    /// Reads `/proc/modules`; a kernel without module support gives an empty table.
    pub fn module_table(&self) -> Result<ModuleTable, StateError> {
        let path = self.proc.join("modules");
        if !path.exists() {
            return Ok(ModuleTable::default());
        }
        let mods = procfs::KernelModules::from_file(&path)
            .map_err(|source| StateError::Read { path, source })?;
        Ok(ModuleTable {
            supported: true,
            modules: mods.0.into_iter().collect(),
        })
    }

    /// State of one module, combining `/proc/modules` and sysfs.
    pub fn module_state(&self, table: &ModuleTable, name: &str) -> ModuleState {
        let name = normalize(name);
        let sysdir = self.sys.join("module").join(&name);
        match table.modules.get(&name) {
            Some(m) => {
                let refcount = read_trimmed(&sysdir.join("refcnt"))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(i64::from(m.refcount));
                let mut holders =
                    list_dir(&sysdir.join("holders")).unwrap_or_else(|| m.used_by.clone());
                holders.sort();
                ModuleState::Loaded(LoadedModule {
                    name: name.clone(),
                    size: u64::from(m.size),
                    refcount,
                    holders,
                    initstate: read_trimmed(&sysdir.join("initstate"))
                        .unwrap_or_else(|| m.state.to_lowercase()),
                    srcversion: read_trimmed(&sysdir.join("srcversion")),
                    build_id: std::fs::read(sysdir.join("notes/.note.gnu.build-id"))
                        .ok()
                        .and_then(|n| note_desc(&n).map(hex)),
                })
            }
            // A built-in module has /sys/module/<m> (when it has parameters or a version)
            // but no /proc/modules line and no initstate.
            None if sysdir.is_dir() && !sysdir.join("initstate").exists() => ModuleState::BuiltIn,
            None => ModuleState::Absent,
        }
    }

    /// This boot's id (`/proc/sys/kernel/random/boot_id`); empty when the kernel does
    /// not expose one (tests, very old kernels).
    pub fn boot_id(&self) -> String {
        read_trimmed(&self.proc.join("sys/kernel/random/boot_id")).unwrap_or_default()
    }

    /// Reads the state afresh.
    pub fn read_state(&self, name: &str) -> Result<ModuleState, StateError> {
        let table = self.module_table()?;
        Ok(self.module_state(&table, name))
    }
}

/// Modules `name` depends on (transitively), from the "used by" columns of
/// `/proc/modules`, ordered so that each module comes before the ones it needs:
/// the order in which they can be unloaded after `name`.
pub fn dependency_closure(table: &ModuleTable, name: &str) -> Vec<String> {
    let name = normalize(name);
    let mut out: Vec<String> = Vec::new();
    let mut frontier = vec![name.clone()];
    while let Some(current) = frontier.pop() {
        for (dep, m) in &table.modules {
            if m.used_by.iter().any(|u| normalize(u) == current) && !out.contains(dep) {
                out.push(dep.clone());
                frontier.push(dep.clone());
            }
        }
    }
    // Topological order: a dependency goes after every module of the set that uses it.
    let mut ordered: Vec<String> = Vec::with_capacity(out.len());
    let mut remaining = out;
    while !remaining.is_empty() {
        let before = remaining.len();
        let mut i = 0;
        while i < remaining.len() {
            let cand = &remaining[i];
            let blocked = remaining.iter().any(|other| {
                other != cand
                    && table
                        .modules
                        .get(cand)
                        .is_some_and(|m| m.used_by.iter().any(|u| normalize(u) == *other))
            });
            if blocked {
                i += 1;
            } else {
                ordered.push(remaining.remove(i));
            }
        }
        if remaining.len() == before {
            // A cycle cannot happen in the kernel; keep whatever is left as is.
            ordered.append(&mut remaining);
        }
    }
    ordered
}

/// The descriptor of an ELF note (`namesz`, `descsz`, `type`, name, desc; 4-aligned).
pub fn note_desc(note: &[u8]) -> Option<&[u8]> {
    let word = |i: usize| -> Option<usize> {
        let b: [u8; 4] = note.get(i..i + 4)?.try_into().ok()?;
        usize::try_from(u32::from_ne_bytes(b)).ok()
    };
    let namesz = word(0)?;
    let descsz = word(4)?;
    let start = 12usize.checked_add(namesz.checked_add(3)? & !3)?;
    note.get(start..start.checked_add(descsz)?)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn list_dir(path: &Path) -> Option<Vec<String>> {
    let rd = std::fs::read_dir(path).ok()?;
    Some(
        rd.filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_MODULES: &str = "kafs 397312 1 - Live 0x0000000000000000
rxrpc 540672 1 kafs, Live 0x0000000000000000
ip6_udp_tunnel 16384 1 rxrpc, Live 0x0000000000000000
udp_tunnel 28672 1 rxrpc, Live 0x0000000000000000
dns_resolver 16384 1 kafs, Live 0x0000000000000000
fscache 389120 1 kafs, Live 0x0000000000000000
netfs 61440 2 kafs,fscache, Live 0x0000000000000000
";

    fn fake_root() -> (tempfile::TempDir, SysPaths) {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(&proc).expect("mkdir");
        std::fs::write(proc.join("modules"), PROC_MODULES).expect("write");
        let kafs = sys.join("module/kafs");
        std::fs::create_dir_all(kafs.join("holders")).expect("mkdir");
        std::fs::write(kafs.join("refcnt"), "2\n").expect("write");
        std::fs::write(kafs.join("initstate"), "live\n").expect("write");
        std::fs::write(kafs.join("srcversion"), "ABC123\n").expect("write");
        let netfs = sys.join("module/netfs/holders");
        std::fs::create_dir_all(&netfs).expect("mkdir");
        std::fs::write(netfs.join("kafs"), "").expect("write");
        std::fs::write(netfs.join("fscache"), "").expect("write");
        std::fs::create_dir_all(sys.join("module/ipv6/parameters")).expect("mkdir");
        (dir, SysPaths { proc, sys })
    }

    #[test]
    fn states() {
        let (_d, p) = fake_root();
        let t = p.module_table().expect("table");
        assert!(t.supported);
        let kafs = p.module_state(&t, "kafs");
        let m = kafs.loaded().expect("loaded");
        assert_eq!(m.refcount, 2, "sysfs refcnt wins");
        assert_eq!(m.srcversion.as_deref(), Some("ABC123"));
        assert_eq!(m.initstate, "live");
        let netfs = p.module_state(&t, "netfs");
        assert_eq!(netfs.loaded().expect("loaded").holders, ["fscache", "kafs"]);
        assert_eq!(p.module_state(&t, "ipv6"), ModuleState::BuiltIn);
        assert_eq!(p.module_state(&t, "yfs"), ModuleState::Absent);
        // No sysfs entry for rxrpc: falls back to /proc/modules.
        assert_eq!(
            p.module_state(&t, "rxrpc")
                .loaded()
                .expect("loaded")
                .holders,
            ["kafs"]
        );
    }

    #[test]
    fn build_id_note() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_ne_bytes());
        note.extend_from_slice(&3u32.to_ne_bytes());
        note.extend_from_slice(&3u32.to_ne_bytes());
        note.extend_from_slice(b"GNU\0\xab\xcd\xef");
        assert_eq!(note_desc(&note).map(hex).as_deref(), Some("abcdef"));
        assert_eq!(note_desc(&note[..10]), None);
        assert_eq!(note_desc(&[0xff; 16]), None);
    }

    #[test]
    fn no_module_support() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = SysPaths {
            proc: dir.path().to_owned(),
            sys: dir.path().to_owned(),
        };
        let t = p.module_table().expect("table");
        assert!(!t.supported);
        assert_eq!(p.module_state(&t, "kafs"), ModuleState::Absent);
    }

    #[test]
    fn closure_order() {
        let (_d, p) = fake_root();
        let t = p.module_table().expect("table");
        let c = dependency_closure(&t, "kafs");
        let pos = |n: &str| c.iter().position(|x| x == n).expect(n);
        assert_eq!(c.len(), 6, "{c:?}");
        assert!(pos("rxrpc") < pos("udp_tunnel"));
        assert!(pos("rxrpc") < pos("ip6_udp_tunnel"));
        assert!(pos("fscache") < pos("netfs"));
    }
}
