//! The module syscalls, behind a trait: the loader and the unloader call the kernel only
//! through [`ModuleSyscalls`], so that tests stand in for a kernel (this host has no
//! loadable-module support) and see exactly which descriptor or bytes would be loaded.

use std::ffi::CStr;
use std::fs::File;

use nix::kmod::{DeleteModuleFlags, ModuleInitFlags, delete_module, finit_module, init_module};

pub trait ModuleSyscalls {
    /// `finit_module(2)`: the kernel reads the module from this descriptor (from offset 0).
    fn finit_module(&mut self, file: &File, params: &CStr) -> nix::Result<()>;
    /// `init_module(2)`: the kernel copies the module from this image.
    fn init_module(&mut self, image: &[u8], params: &CStr) -> nix::Result<()>;
    /// `delete_module(2)` with `O_NONBLOCK`: fails with EWOULDBLOCK instead of waiting,
    /// never forced.
    fn delete_module(&mut self, name: &CStr) -> nix::Result<()>;
}

/// The running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Live;

impl ModuleSyscalls for Live {
    fn finit_module(&mut self, file: &File, params: &CStr) -> nix::Result<()> {
        finit_module(file, params, ModuleInitFlags::empty())
    }
    fn init_module(&mut self, image: &[u8], params: &CStr) -> nix::Result<()> {
        init_module(image, params)
    }
    fn delete_module(&mut self, name: &CStr) -> nix::Result<()> {
        delete_module(name, DeleteModuleFlags::O_NONBLOCK)
    }
}

/// A kernel for tests: keeps a `/proc/modules` under a temporary directory up to date
/// (refcounts and "used by" from each module's `depends=`), records what it was given,
/// and refuses to delete a module in use, as the kernel does.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::BTreeMap;
    use std::ffi::CStr;
    use std::fs::File;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::PathBuf;

    use super::ModuleSyscalls;
    use crate::modinfo::ModInfo;

    /// What one insert handed to the kernel.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Inserted {
        pub name: String,
        /// Inode of the descriptor (`finit_module`), `None` for `init_module`.
        pub inode: Option<u64>,
        pub bytes: Vec<u8>,
    }

    #[derive(Debug, Default)]
    struct Module {
        depends: Vec<String>,
        used_by: Vec<String>,
    }

    /// Called with the module's name at the start of every insert.
    pub(crate) type InsertHook = Box<dyn FnMut(&str)>;

    pub(crate) struct FakeKernel {
        proc_modules: PathBuf,
        modules: BTreeMap<String, Module>,
        pub inserted: Vec<Inserted>,
        pub deleted: Vec<String>,
        /// Called with the module's name at the start of every insert.
        pub on_insert: Option<InsertHook>,
    }

    impl std::fmt::Debug for FakeKernel {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FakeKernel")
                .field("modules", &self.modules)
                .finish_non_exhaustive()
        }
    }

    impl FakeKernel {
        /// A kernel whose `/proc/modules` is `<proc>/modules` (written now, empty).
        pub(crate) fn new(proc: &std::path::Path) -> Self {
            std::fs::create_dir_all(proc).expect("proc dir");
            let k = Self {
                proc_modules: proc.join("modules"),
                modules: BTreeMap::new(),
                inserted: Vec::new(),
                deleted: Vec::new(),
                on_insert: None,
            };
            k.write();
            k
        }

        /// A module loaded by someone else (e.g. `modprobe`), needing `depends`.
        pub(crate) fn preload(&mut self, name: &str, depends: &[&str]) {
            self.add(name, depends.iter().map(|d| (*d).to_owned()).collect());
        }

        pub(crate) fn is_loaded(&self, name: &str) -> bool {
            self.modules.contains_key(name)
        }

        fn add(&mut self, name: &str, depends: Vec<String>) {
            for d in &depends {
                self.modules
                    .get_mut(d)
                    .unwrap_or_else(|| panic!("{name} needs {d}, which is not loaded"))
                    .used_by
                    .push(name.to_owned());
            }
            self.modules.insert(
                name.to_owned(),
                Module {
                    depends,
                    used_by: Vec::new(),
                },
            );
            self.write();
        }

        fn insert(&mut self, inode: Option<u64>, bytes: Vec<u8>) -> nix::Result<()> {
            let info = ModInfo::from_elf(&bytes).map_err(|_| nix::Error::ENOEXEC)?;
            let name = info.name().ok_or(nix::Error::ENOEXEC)?.to_owned();
            if let Some(hook) = self.on_insert.as_mut() {
                hook(&name);
            }
            if self.modules.contains_key(&name) {
                return Err(nix::Error::EEXIST);
            }
            let depends = info.depends().into_iter().map(str::to_owned).collect();
            self.inserted.push(Inserted {
                name: name.clone(),
                inode,
                bytes,
            });
            self.add(&name, depends);
            Ok(())
        }

        fn write(&self) {
            let text: String = self
                .modules
                .iter()
                .map(|(name, m)| {
                    let used_by = if m.used_by.is_empty() {
                        "-".to_owned()
                    } else {
                        m.used_by.iter().map(|u| format!("{u},")).collect()
                    };
                    format!(
                        "{name} 16384 {} {used_by} Live 0x0000000000000000\n",
                        m.used_by.len()
                    )
                })
                .collect();
            std::fs::write(&self.proc_modules, text).expect("write /proc/modules");
        }
    }

    impl ModuleSyscalls for FakeKernel {
        fn finit_module(&mut self, file: &File, _params: &CStr) -> nix::Result<()> {
            // The kernel reads the whole file from offset 0, whatever the file position.
            let len = file.metadata().map_err(|_| nix::Error::EBADF)?.len();
            let mut bytes = vec![0; usize::try_from(len).map_err(|_| nix::Error::EFBIG)?];
            file.read_exact_at(&mut bytes, 0)
                .map_err(|_| nix::Error::EIO)?;
            let inode = file.metadata().map_err(|_| nix::Error::EBADF)?.ino();
            self.insert(Some(inode), bytes)
        }
        fn init_module(&mut self, image: &[u8], _params: &CStr) -> nix::Result<()> {
            self.insert(None, image.to_vec())
        }
        fn delete_module(&mut self, name: &CStr) -> nix::Result<()> {
            let name = name.to_string_lossy().into_owned();
            let m = self.modules.get(&name).ok_or(nix::Error::ENOENT)?;
            if !m.used_by.is_empty() {
                return Err(nix::Error::EWOULDBLOCK);
            }
            let depends = m.depends.clone();
            self.modules.remove(&name);
            for d in depends {
                if let Some(dep) = self.modules.get_mut(&d) {
                    dep.used_by.retain(|u| *u != name);
                }
            }
            self.deleted.push(name);
            self.write();
            Ok(())
        }
    }
}
