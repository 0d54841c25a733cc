//! The modules this kmod-manager inserted, kept in its state directory, so that an
//! unload (a later `unload` command, or a restarted daemon) removes its own modules and
//! only those: a dependency that something else on the node loaded before us (rxrpc for
//! another AFS client, dns_resolver for NFS or CIFS, netfs) is never ours to remove.
//!
//! The ownership rules are pure ([`Record::owns`]); [`RecordStore`] reads and writes the
//! record under an exclusive `flock`, so that a `load` and an `unload` running at once
//! never lose each other's update.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::depmod::normalize;
use crate::modinfo::ModInfo;
use crate::state::{LoadedModule, ModuleTable};

/// Where the record lives by default: a tmpfs on the node (the driver container's
/// `/run/kmod-manager`), which a reboot clears together with the modules it names.
pub const DEFAULT_STATE_DIR: &str = "/run/kmod-manager";
const RECORD_FILE: &str = "inserted-modules.json";
const LOCK_FILE: &str = "inserted-modules.lock";

/// One module we inserted, with the identity of the build we verified and loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inserted {
    pub name: String,
    pub srcversion: Option<String>,
    pub build_id: Option<String>,
}

/// Everything this kmod-manager inserted in this boot and has not removed since.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// `/proc/sys/kernel/random/boot_id` of the boot the modules were inserted in: a
    /// record of another boot (a state directory that survived a reboot) names nothing
    /// that is loaded now.
    pub boot_id: String,
    pub modules: Vec<Inserted>,
}

/// Why a loaded module is not ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NotOurs {
    /// Not in the record: loaded before this kmod-manager, or by something else.
    NotInserted,
    /// The record names another build: someone removed ours and loaded this one.
    OtherBuild,
}

impl NotOurs {
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotInserted => {
                "not loaded by kmod-manager (it was there before, or another tool loaded it)"
            }
            Self::OtherBuild => {
                "not the build kmod-manager loaded (it was replaced by another tool)"
            }
        }
    }
}

impl Record {
    /// An empty record for this boot.
    pub fn new(boot_id: &str) -> Self {
        Self {
            boot_id: boot_id.to_owned(),
            modules: Vec::new(),
        }
    }

    /// Whether the loaded module `m` is one we inserted (pure): named in the record, and,
    /// where both sides know it, the same build (srcversion, else GNU build id).
    pub fn owns(&self, m: &LoadedModule) -> Result<(), NotOurs> {
        let name = normalize(&m.name);
        let ours = self
            .modules
            .iter()
            .find(|i| i.name == name)
            .ok_or(NotOurs::NotInserted)?;
        let pairs = [
            (ours.srcversion.as_deref(), m.srcversion.as_deref()),
            (ours.build_id.as_deref(), m.build_id.as_deref()),
        ];
        match pairs.into_iter().find_map(|p| match p {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        }) {
            Some(false) => Err(NotOurs::OtherBuild),
            _ => Ok(()),
        }
    }

    /// Notes that we inserted `name`, built as `info` says.
    pub fn add(&mut self, name: &str, info: &ModInfo) {
        let name = normalize(name);
        self.remove(&name);
        self.modules.push(Inserted {
            name,
            srcversion: info.srcversion().map(str::to_owned),
            build_id: info.build_id.clone(),
        });
    }

    pub fn remove(&mut self, name: &str) {
        let name = normalize(name);
        self.modules.retain(|i| i.name != name);
    }

    /// Forgets what is no longer loaded: whoever loads it next, it is not ours.
    pub fn retain_loaded(&mut self, table: &ModuleTable) {
        self.modules.retain(|i| table.modules.contains_key(&i.name));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The state directory holding the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordStore {
    pub dir: PathBuf,
}

impl Default for RecordStore {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// The record, read under the lock; the lock is held until this is dropped.
#[derive(Debug)]
pub struct Locked {
    _lock: Flock<File>,
    path: PathBuf,
    pub record: Record,
}

impl RecordStore {
    pub fn path(&self) -> PathBuf {
        self.dir.join(RECORD_FILE)
    }

    /// Takes the lock and reads the record (empty when there is none yet, or when it is
    /// of another boot).
    pub fn lock(&self, boot_id: &str) -> Result<Locked, RecordError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| RecordError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let lock_path = self.dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| RecordError::Dir {
                path: lock_path.clone(),
                source,
            })?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| {
            RecordError::Lock {
                path: lock_path,
                source,
            }
        })?;
        let path = self.path();
        let record = read_record(&path, boot_id)?;
        Ok(Locked {
            _lock: lock,
            path,
            record,
        })
    }
}

fn read_record(path: &Path, boot_id: &str) -> Result<Record, RecordError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::new(boot_id)),
        Err(source) => {
            return Err(RecordError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    match serde_json::from_str::<Record>(&text) {
        Ok(r) if r.boot_id == boot_id => Ok(r),
        Ok(_) => Ok(Record::new(boot_id)),
        // Unreadable: nothing counts as ours, the safe side (we may leave our own
        // modules loaded, never remove someone else's).
        Err(e) => {
            warn!(path = %path.display(), error = %e, "unreadable record of inserted modules; treating none as ours");
            Ok(Record::new(boot_id))
        }
    }
}

impl Locked {
    /// Writes the record (a new file renamed over the old one: never half-written).
    pub fn save(&self) -> Result<(), RecordError> {
        let err = |source| RecordError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut text = serde_json::to_vec_pretty(&self.record)
            .map_err(std::io::Error::other)
            .map_err(err)?;
        text.push(b'\n');
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&text).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(name: &str, srcversion: Option<&str>, build_id: Option<&str>) -> LoadedModule {
        LoadedModule {
            name: name.into(),
            size: 1,
            refcount: 0,
            holders: vec![],
            initstate: "live".into(),
            srcversion: srcversion.map(str::to_owned),
            build_id: build_id.map(str::to_owned),
        }
    }

    fn info(srcversion: Option<&str>, build_id: Option<&str>) -> ModInfo {
        let mut entries = vec![("name".to_owned(), "x".to_owned())];
        if let Some(s) = srcversion {
            entries.push(("srcversion".into(), s.into()));
        }
        ModInfo {
            entries,
            architecture: "X86_64".into(),
            build_id: build_id.map(str::to_owned),
        }
    }

    #[test]
    fn ownership_rules() {
        let mut r = Record::new("boot-1");
        r.add("kafs", &info(None, Some("aa")));
        r.add("dns-resolver", &info(Some("S1"), Some("bb")));
        assert_eq!(r.owns(&loaded("kafs", None, Some("aa"))), Ok(()));
        assert_eq!(
            r.owns(&loaded("kafs", None, None)),
            Ok(()),
            "unknown build: by name"
        );
        assert_eq!(
            r.owns(&loaded("kafs", None, Some("cc"))),
            Err(NotOurs::OtherBuild)
        );
        // Names are compared normalized; srcversion wins over the build id.
        assert_eq!(
            r.owns(&loaded("dns_resolver", Some("S1"), Some("zz"))),
            Ok(())
        );
        assert_eq!(
            r.owns(&loaded("rxrpc", None, None)),
            Err(NotOurs::NotInserted)
        );
        r.remove("kafs");
        assert_eq!(
            r.owns(&loaded("kafs", None, Some("aa"))),
            Err(NotOurs::NotInserted)
        );
    }

    #[test]
    fn store_round_trip_and_other_boots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RecordStore {
            dir: dir.path().join("state"),
        };
        {
            let mut held = store.lock("boot-1").expect("lock");
            assert_eq!(held.record, Record::new("boot-1"));
            held.record.add("kafs", &info(None, Some("aa")));
            held.save().expect("save");
        }
        let again = store.lock("boot-1").expect("lock");
        assert_eq!(again.record.modules.len(), 1);
        drop(again);
        assert_eq!(
            store.lock("boot-2").expect("lock").record,
            Record::new("boot-2"),
            "a record of another boot names nothing loaded now"
        );
        std::fs::write(store.path(), "{not json").expect("write");
        assert_eq!(
            store.lock("boot-1").expect("lock").record,
            Record::new("boot-1")
        );
    }
}
