//! Loading a module and its dependencies: verify every file first, then `finit_module`.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tracing::{debug, info, instrument, warn};

use crate::depmod::{self, DepError, ModulesDep, module_path};
use crate::modinfo::{FitError, ModInfo, ModinfoError, check_fit};
use crate::record::{RecordError, RecordStore};
use crate::state::{LoadedModule, ModuleState, StateError, SysPaths};
use crate::sys::{Live, ModuleSyscalls};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "module file {path} is a symbolic link: refused (a module is loaded only from a regular file, never through a link)"
    )]
    Symlink { path: PathBuf },
    #[error("module file {path} is a {kind}, not a regular file: refused")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error(transparent)]
    Dep(#[from] DepError),
    #[error("module {module} at {path} is corrupt: {source}")]
    Corrupt {
        module: String,
        path: PathBuf,
        #[source]
        source: ModinfoError,
    },
    #[error(
        "module {module} at {path} is refused: it decompresses to more than {} MiB ({limit} bytes), the limit for a module",
        limit / (1024 * 1024)
    )]
    TooLarge {
        module: String,
        path: PathBuf,
        limit: u64,
    },
    #[error("module {module} at {path} does not fit this kernel: {source}")]
    Unfit {
        module: String,
        path: PathBuf,
        #[source]
        source: FitError,
    },
    #[error(
        "module {module} is already loaded as {loaded}, but {path} is {file}: unload it first (the guard decides when)"
    )]
    Different {
        module: String,
        loaded: String,
        file: String,
        path: PathBuf,
    },
    #[error("module {module} is loaded but in state {state:?}")]
    NotLive { module: String, state: String },
    #[error("invalid module parameters {params:?}: {reason}")]
    Params { params: String, reason: String },
    #[error("loading {module} from {path} failed: {source}")]
    Insert {
        module: String,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Identity of a module build: `srcversion` when both sides have one, else GNU build id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sameness {
    /// Same build; names the identity compared (`build id 645e...`).
    Same(String),
    Different {
        loaded: String,
        file: String,
    },
    /// Neither srcversion nor build id is available on both sides.
    Unknown,
}

/// Compares a loaded module with a file (pure).
pub fn compare(loaded: &LoadedModule, file: &ModInfo) -> Sameness {
    let pairs = [
        (
            "srcversion",
            loaded.srcversion.as_deref(),
            file.srcversion(),
        ),
        (
            "build id",
            loaded.build_id.as_deref(),
            file.build_id.as_deref(),
        ),
    ];
    for (what, l, f) in pairs {
        if let (Some(l), Some(f)) = (l, f) {
            return if l == f {
                Sameness::Same(format!("{what} {l}"))
            } else {
                Sameness::Different {
                    loaded: format!("{what} {l}"),
                    file: format!("{what} {f}"),
                }
            };
        }
    }
    Sameness::Unknown
}

/// What the kernel gets for a module: exactly what was verified. There is no path in
/// it, so nothing can open the module file a second time between verifying and loading.
#[derive(Debug)]
pub enum ModuleImage {
    /// An uncompressed `.ko`: the descriptor it was verified through, for `finit_module`
    /// (the kernel reads it from offset 0, whatever was read through it before).
    File(File),
    /// A compressed module's decompressed image, for `init_module`.
    Decompressed(Vec<u8>),
}

/// A module file read once: its `.modinfo`, and what the kernel will get.
#[derive(Debug)]
pub struct Verified {
    pub info: ModInfo,
    pub image: ModuleImage,
}

/// One module of the chain, with everything observed about it.
#[derive(Debug)]
pub struct Candidate {
    pub name: String,
    pub path: PathBuf,
    pub state: ModuleState,
    /// `None` when the file was not needed (built-in module).
    pub file: Option<Result<Verified, ModinfoError>>,
}

/// One step of a verified plan; a load carries the verified image it will load.
#[derive(Debug)]
pub enum Planned {
    Load {
        name: String,
        path: PathBuf,
        verified: Verified,
    },
    AlreadyLoaded {
        name: String,
        verified_by: Option<String>,
    },
    BuiltIn {
        name: String,
    },
}

impl Planned {
    /// The step as reported.
    pub fn step(&self) -> Step {
        match self {
            Self::Load { name, path, .. } => Step::Load {
                name: name.clone(),
                path: path.clone(),
            },
            Self::AlreadyLoaded { name, verified_by } => Step::AlreadyLoaded {
                name: name.clone(),
                verified_by: verified_by.clone(),
            },
            Self::BuiltIn { name } => Step::BuiltIn { name: name.clone() },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Step {
    Load {
        name: String,
        path: PathBuf,
    },
    /// Loaded already; `verified_by` names the identity that matched (None: neither
    /// srcversion nor build id is available on both sides).
    AlreadyLoaded {
        name: String,
        verified_by: Option<String>,
    },
    BuiltIn {
        name: String,
    },
}

/// Decides what to do for every module of the chain, refusing the whole load if any
/// file is corrupt, built for another kernel, or differs from what is loaded (pure).
/// The plan takes the verified images over: loading uses those and nothing else.
pub fn plan(
    candidates: Vec<Candidate>,
    release: &str,
    host_arch: &str,
) -> Result<Vec<Planned>, LoadError> {
    let mut steps = Vec::with_capacity(candidates.len());
    for c in candidates {
        if c.state == ModuleState::BuiltIn {
            steps.push(Planned::BuiltIn { name: c.name });
            continue;
        }
        let verified = match c.file {
            Some(Ok(verified)) => verified,
            Some(Err(ModinfoError::TooLarge { limit, .. })) => {
                return Err(LoadError::TooLarge {
                    module: c.name,
                    path: c.path,
                    limit,
                });
            }
            Some(Err(source)) => {
                return Err(LoadError::Corrupt {
                    module: c.name,
                    path: c.path,
                    source,
                });
            }
            None => {
                return Err(LoadError::Corrupt {
                    module: c.name,
                    path: c.path,
                    source: ModinfoError::NoModinfo,
                });
            }
        };
        let info = &verified.info;
        if let Err(source) = check_fit(info, &c.name, release, host_arch) {
            return Err(LoadError::Unfit {
                module: c.name,
                path: c.path,
                source,
            });
        }
        match &c.state {
            ModuleState::Loaded(l) => {
                if l.initstate != "live" {
                    return Err(LoadError::NotLive {
                        module: c.name,
                        state: l.initstate.clone(),
                    });
                }
                let verified_by = match compare(l, info) {
                    Sameness::Different { loaded, file } => {
                        return Err(LoadError::Different {
                            module: c.name,
                            loaded,
                            file,
                            path: c.path,
                        });
                    }
                    Sameness::Same(by) => Some(by),
                    Sameness::Unknown => None,
                };
                steps.push(Planned::AlreadyLoaded {
                    name: c.name,
                    verified_by,
                });
            }
            _ => steps.push(Planned::Load {
                name: c.name,
                path: c.path,
                verified,
            }),
        }
    }
    Ok(steps)
}

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub module: String,
    pub module_dir: PathBuf,
    pub release: String,
    pub parameters: Vec<String>,
    pub load_order: Option<Vec<String>>,
}

/// The outcome of a load.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    pub steps: Vec<Step>,
    pub elapsed_ms: f64,
}

/// Resolves the chain (modules.dep or explicit order) relative to the module directory.
pub fn resolve_chain(req: &LoadRequest) -> Result<Vec<(String, PathBuf)>, LoadError> {
    let dep_file = req.module_dir.join("modules.dep");
    let dep_text = match std::fs::read_to_string(&dep_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && req.load_order.is_some() => {
            String::new()
        }
        Err(source) => {
            return Err(LoadError::ReadFile {
                path: dep_file,
                source,
            });
        }
    };
    let dep = ModulesDep::parse(&dep_text);
    let chain = match &req.load_order {
        Some(order) => depmod::explicit_order(order, &dep)?,
        None => dep.load_order(&req.module, &dep_file.display().to_string())?,
    };
    Ok(chain
        .into_iter()
        .map(|(n, rel)| (n, module_path(&req.module_dir, &rel)))
        .collect())
}

/// Opens a module file once, for verifying and for loading it: read-only and
/// close-on-exec (std's default), never through a symbolic link at the last component
/// (`O_NOFOLLOW`: a link could point anywhere on the node), without blocking
/// (`O_NONBLOCK`: a FIFO put in its place would otherwise hang the daemon in `open`) and
/// without becoming a controlling terminal (`O_NOCTTY`). Then only a regular file is
/// accepted, checked on the descriptor itself (`fstat`), so that nothing can change
/// between the check and the use.
pub fn open_module(path: &Path) -> Result<File, LoadError> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(code) if code == nix::Error::ELOOP as i32 => LoadError::Symlink {
                path: path.to_owned(),
            },
            _ => LoadError::ReadFile {
                path: path.to_owned(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| LoadError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(file);
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    };
    Err(LoadError::NotRegularFile {
        path: path.to_owned(),
        kind,
    })
}

/// Reads an opened module file: its `.modinfo`, and the image to load (the descriptor
/// itself for an uncompressed `.ko`, the decompressed bytes otherwise).
pub fn verify(file: File) -> Result<Verified, ModinfoError> {
    let (info, decompressed) = ModInfo::from_file(&file)?;
    let image = match decompressed {
        Some(bytes) => ModuleImage::Decompressed(bytes),
        None => ModuleImage::File(file),
    };
    Ok(Verified { info, image })
}

/// Observes every module of the chain: its state and (unless built in) its `.modinfo`,
/// each file opened once.
pub fn observe(paths: &SysPaths, chain: &[(String, PathBuf)]) -> Result<Vec<Candidate>, LoadError> {
    let table = paths.module_table()?;
    chain
        .iter()
        .map(|(name, path)| {
            let state = paths.module_state(&table, name);
            let file = if state == ModuleState::BuiltIn {
                None
            } else {
                Some(verify(open_module(path)?))
            };
            Ok(Candidate {
                name: name.clone(),
                path: path.clone(),
                state,
                file,
            })
        })
        .collect()
}

/// Verifies the whole chain, then loads what is missing. Idempotent. Every module it
/// inserts is noted in the record of `store`: those, and only those, are ours to unload.
pub fn load(
    paths: &SysPaths,
    store: &RecordStore,
    req: &LoadRequest,
) -> Result<LoadReport, LoadError> {
    load_with(paths, store, req, &mut Live)
}

/// [`load`] through the given syscalls.
#[instrument(skip_all, fields(module = %req.module, release = %req.release))]
pub fn load_with(
    paths: &SysPaths,
    store: &RecordStore,
    req: &LoadRequest,
    sys: &mut impl ModuleSyscalls,
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let params = CString::new(req.parameters.join(" ")).map_err(|e| LoadError::Params {
        params: req.parameters.join(" "),
        reason: e.to_string(),
    })?;
    let empty = CString::default();
    let chain = resolve_chain(req)?;
    // Held until the load is done, so that a concurrent unload sees what we insert.
    let mut held = store.lock(&paths.boot_id())?;
    held.record.retain_loaded(&paths.module_table()?);
    let candidates = observe(paths, &chain)?;
    let planned = plan(
        candidates,
        &req.release,
        crate::modinfo::host_architecture(),
    )?;
    let steps: Vec<Step> = planned.iter().map(Planned::step).collect();
    debug!(?steps, "load plan verified");
    for step in &planned {
        match step {
            Planned::Load {
                name,
                path,
                verified,
            } => {
                let p = if *name == depmod::normalize(&req.module) {
                    &params
                } else {
                    &empty
                };
                if insert(sys, name, path, &verified.image, p)? {
                    // Written at once: a crash after this insert must not lose it.
                    held.record.add(name, &verified.info);
                    held.save()?;
                }
            }
            Planned::AlreadyLoaded {
                name,
                verified_by: Some(by),
            } => info!(module = %name, verified_by = %by, "already loaded, same build"),
            Planned::AlreadyLoaded {
                name,
                verified_by: None,
            } => {
                warn!(module = %name, "already loaded; identity unverifiable (no srcversion or build id)")
            }
            Planned::BuiltIn { name } => debug!(module = %name, "built into the kernel"),
        }
    }
    // The kernel returns from finit_module after the module's init ran; confirm.
    let state = paths.read_state(&req.module)?;
    match &state {
        ModuleState::Loaded(m) if m.initstate == "live" => {}
        ModuleState::BuiltIn => {}
        other => {
            return Err(LoadError::NotLive {
                module: req.module.clone(),
                state: other.label().to_owned(),
            });
        }
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    info!(elapsed_ms, "module loaded and live");
    Ok(LoadReport { steps, elapsed_ms })
}

/// `finit_module` on the verified descriptor, or `init_module` on the verified
/// decompressed image of a compressed module (works whether or not the kernel can
/// decompress modules itself). `path` is only named in logs and errors: the file is
/// never opened again. `Ok(false)` when another process loaded it meanwhile (then it
/// is not ours).
fn insert(
    sys: &mut impl ModuleSyscalls,
    name: &str,
    path: &Path,
    image: &ModuleImage,
    params: &CString,
) -> Result<bool, LoadError> {
    let result = match image {
        ModuleImage::Decompressed(image) => {
            info!(module = %name, path = %path.display(), bytes = image.len(), "init_module (decompressed image)");
            sys.init_module(image, params)
        }
        ModuleImage::File(file) => {
            info!(module = %name, path = %path.display(), "finit_module");
            sys.finit_module(file, params)
        }
    };
    match result {
        Ok(()) => Ok(true),
        // Loaded concurrently by someone else: the post-load check confirms it is live.
        Err(nix::Error::EEXIST) => {
            warn!(module = %name, "loaded concurrently by another process; not ours to unload");
            Ok(false)
        }
        Err(source) => Err(LoadError::Insert {
            module: name.to_owned(),
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const REL: &str = "6.1.0-56-amd64";

    fn info(vermagic: &str, name: &str, build_id: Option<&str>) -> ModInfo {
        ModInfo {
            entries: vec![
                ("name".into(), name.into()),
                ("vermagic".into(), vermagic.into()),
            ],
            architecture: "X86_64".into(),
            build_id: build_id.map(str::to_owned),
        }
    }

    pub(crate) fn loaded(name: &str, build_id: Option<&str>) -> ModuleState {
        ModuleState::Loaded(LoadedModule {
            name: name.into(),
            size: 1,
            refcount: 0,
            holders: vec![],
            initstate: "live".into(),
            srcversion: None,
            build_id: build_id.map(str::to_owned),
        })
    }

    fn cand(
        name: &str,
        state: ModuleState,
        info: Option<Result<ModInfo, ModinfoError>>,
    ) -> Candidate {
        Candidate {
            name: name.into(),
            path: PathBuf::from(format!("/m/{name}.ko")),
            state,
            file: info.map(|r| {
                r.map(|info| Verified {
                    info,
                    image: ModuleImage::Decompressed(Vec::new()),
                })
            }),
        }
    }

    #[test]
    fn plans_loads_and_skips() {
        let vm = "6.1.0-56-amd64 SMP preempt mod_unload modversions ";
        let c = vec![
            cand(
                "netfs",
                loaded("netfs", Some("aa")),
                Some(Ok(info(vm, "netfs", Some("aa")))),
            ),
            cand("ipv6", ModuleState::BuiltIn, None),
            cand(
                "kafs",
                ModuleState::Absent,
                Some(Ok(info(vm, "kafs", Some("bb")))),
            ),
        ];
        let planned = plan(c, REL, "X86_64").expect("plan");
        let steps: Vec<Step> = planned.iter().map(Planned::step).collect();
        assert_eq!(steps.len(), 3);
        assert!(
            matches!(&steps[0], Step::AlreadyLoaded { name, verified_by: Some(by) } if name == "netfs" && by == "build id aa")
        );
        assert!(matches!(&steps[1], Step::BuiltIn { .. }));
        assert!(matches!(&steps[2], Step::Load { name, .. } if name == "kafs"));
    }

    #[test]
    fn any_bad_file_refuses_whole_chain() {
        let good = "6.1.0-56-amd64 SMP";
        let c = vec![
            cand(
                "netfs",
                ModuleState::Absent,
                Some(Ok(info(good, "netfs", None))),
            ),
            cand(
                "kafs",
                ModuleState::Absent,
                Some(Ok(info("6.1.0-99-amd64 SMP", "kafs", None))),
            ),
        ];
        let e = plan(c, REL, "X86_64").expect_err("refused");
        assert!(
            matches!(e, LoadError::Unfit { ref module, .. } if module == "kafs"),
            "{e}"
        );
        let c = vec![cand(
            "kafs",
            ModuleState::Absent,
            Some(Err(ModinfoError::NoModinfo)),
        )];
        assert!(matches!(
            plan(c, REL, "X86_64"),
            Err(LoadError::Corrupt { .. })
        ));
    }

    #[test]
    fn loaded_but_different_names_both() {
        let c = vec![cand(
            "kafs",
            loaded("kafs", Some("aa")),
            Some(Ok(info("6.1.0-56-amd64", "kafs", Some("bb")))),
        )];
        let e = plan(c, REL, "X86_64").expect_err("different");
        let msg = e.to_string();
        assert!(
            msg.contains("build id aa") && msg.contains("build id bb"),
            "{msg}"
        );
    }

    #[test]
    fn sameness_prefers_srcversion() {
        let mut l = LoadedModule {
            name: "x".into(),
            size: 1,
            refcount: 0,
            holders: vec![],
            initstate: "live".into(),
            srcversion: Some("S1".into()),
            build_id: Some("aa".into()),
        };
        let mut f = info("r", "x", Some("bb"));
        f.entries.push(("srcversion".into(), "S1".into()));
        assert_eq!(compare(&l, &f), Sameness::Same("srcversion S1".into()));
        l.srcversion = None;
        assert!(matches!(compare(&l, &f), Sameness::Different { .. }));
        l.build_id = None;
        assert_eq!(compare(&l, &f), Sameness::Unknown);
    }

    pub(crate) fn store(dir: &std::path::Path) -> RecordStore {
        RecordStore {
            dir: dir.join("run"),
        }
    }

    /// An ELF object with a `.modinfo` section, as a `.ko` has one.
    pub(crate) fn ko(name: &str, vermagic: &str, depends: &str) -> Vec<u8> {
        let mut obj = object::write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let sec = obj.add_section(
            Vec::new(),
            b".modinfo".to_vec(),
            object::SectionKind::ReadOnlyData,
        );
        let modinfo = format!("name={name}\0vermagic={vermagic}\0depends={depends}\0");
        obj.append_section_data(sec, modinfo.as_bytes(), 1);
        obj.write().expect("elf")
    }

    pub(crate) const VERMAGIC: &str = "6.1.0-56-amd64 SMP preempt mod_unload modversions ";

    /// A module tree with rxrpc and kafs (needing rxrpc), and paths for a fake kernel.
    pub(crate) fn kafs_tree(dir: &std::path::Path) -> (SysPaths, LoadRequest) {
        let lib = dir.join("lib");
        for (rel, bytes) in [
            ("kernel/net/rxrpc/rxrpc.ko", ko("rxrpc", VERMAGIC, "")),
            ("kernel/fs/afs/kafs.ko", ko("kafs", VERMAGIC, "rxrpc")),
        ] {
            let p = lib.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, bytes).expect("write module");
        }
        std::fs::write(
            lib.join("modules.dep"),
            "kernel/fs/afs/kafs.ko: kernel/net/rxrpc/rxrpc.ko\nkernel/net/rxrpc/rxrpc.ko:\n",
        )
        .expect("write modules.dep");
        let paths = SysPaths {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
        };
        let req = LoadRequest {
            module: "kafs".into(),
            module_dir: lib,
            release: REL.into(),
            parameters: vec![],
            load_order: None,
        };
        (paths, req)
    }

    /// (a) Whoever can write the module directory swaps kafs.ko for a module that was
    /// never verified (another kernel's) after the chain was verified, while rxrpc loads.
    /// The kernel must still get the verified file: same inode, same bytes.
    #[test]
    fn loads_the_verified_file_even_when_the_path_is_swapped_before_loading() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (paths, req) = kafs_tree(dir.path());
        let kafs = req.module_dir.join("kernel/fs/afs/kafs.ko");
        let verified = std::fs::read(&kafs).expect("read");
        let verified_inode = std::fs::metadata(&kafs).expect("stat").ino();
        let mut kernel = crate::sys::fake::FakeKernel::new(&paths.proc);
        let (target, unverified) = (kafs.clone(), ko("kafs", "6.1.0-99-amd64 SMP ", "rxrpc"));
        kernel.on_insert = Some(Box::new(move |name| {
            if name == "rxrpc" {
                let tmp = target.with_extension("swap");
                std::fs::write(&tmp, &unverified).expect("write");
                std::fs::rename(&tmp, &target).expect("swap");
            }
        }));
        load_with(&paths, &store(dir.path()), &req, &mut kernel).expect("loads");
        assert_ne!(
            std::fs::read(&kafs).expect("read"),
            verified,
            "the swap happened"
        );
        let loaded = kernel
            .inserted
            .iter()
            .find(|i| i.name == "kafs")
            .expect("kafs inserted");
        assert_eq!(
            loaded.inode,
            Some(verified_inode),
            "the verified file's inode"
        );
        assert!(
            loaded.bytes == verified,
            "the kernel got bytes that were never verified"
        );
    }

    /// (a) A module is opened once, never through a symbolic link, and only as a
    /// regular file: a link, a FIFO (which would block `open`) and a directory are
    /// refused, naming the path, before anything is loaded.
    #[test]
    fn module_files_are_regular_files_opened_without_following_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (paths, req) = kafs_tree(dir.path());
        let kafs = req.module_dir.join("kernel/fs/afs/kafs.ko");
        let real = dir.path().join("elsewhere.ko");
        std::fs::rename(&kafs, &real).expect("move");
        std::os::unix::fs::symlink(&real, &kafs).expect("symlink");
        let mut kernel = crate::sys::fake::FakeKernel::new(&paths.proc);
        let e =
            load_with(&paths, &store(dir.path()), &req, &mut kernel).expect_err("symlink refused");
        assert!(
            matches!(&e, LoadError::Symlink { path } if *path == kafs),
            "{e}"
        );
        assert!(
            kernel.inserted.is_empty(),
            "nothing loaded before the refusal"
        );

        std::fs::remove_file(&kafs).expect("rm");
        nix::unistd::mkfifo(&kafs, nix::sys::stat::Mode::S_IRUSR).expect("mkfifo");
        let e = load_with(&paths, &store(dir.path()), &req, &mut kernel).expect_err("FIFO refused");
        assert!(
            matches!(&e, LoadError::NotRegularFile { path, kind: "FIFO" } if *path == kafs),
            "{e}"
        );
        std::fs::remove_file(&kafs).expect("rm");
        std::fs::create_dir(&kafs).expect("mkdir");
        let e = load_with(&paths, &store(dir.path()), &req, &mut kernel)
            .expect_err("directory refused");
        assert!(
            matches!(
                e,
                LoadError::NotRegularFile {
                    kind: "directory",
                    ..
                }
            ),
            "{e}"
        );
        assert!(kernel.inserted.is_empty());
        // A link in the middle of the path (merged /usr: /lib -> usr/lib) is fine.
        std::fs::remove_dir(&kafs).expect("rmdir");
        std::fs::rename(&real, &kafs).expect("move back");
        let linked = dir.path().join("linked-lib");
        std::os::unix::fs::symlink(&req.module_dir, &linked).expect("symlink dir");
        let req = LoadRequest {
            module_dir: linked,
            ..req
        };
        load_with(&paths, &store(dir.path()), &req, &mut kernel)
            .expect("loads through a linked directory");
        assert_eq!(kernel.inserted.len(), 2);
    }

    /// (a) A compressed module is loaded from the very bytes that were decompressed and
    /// verified, whatever happens to the file afterwards.
    #[test]
    fn compressed_modules_load_the_verified_image() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let (paths, mut req) = kafs_tree(dir.path());
        let lib = &req.module_dir;
        let plain = std::fs::read(lib.join("kernel/fs/afs/kafs.ko")).expect("read");
        let gz = |bytes: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(bytes).expect("gz");
            e.finish().expect("gz")
        };
        let kafs_gz = lib.join("kernel/fs/afs/kafs.ko.gz");
        std::fs::write(&kafs_gz, gz(&plain)).expect("write");
        std::fs::write(
            lib.join("modules.dep"),
            "kernel/fs/afs/kafs.ko.gz: kernel/net/rxrpc/rxrpc.ko\nkernel/net/rxrpc/rxrpc.ko:\n",
        )
        .expect("write");
        req.module_dir = lib.clone();
        let mut kernel = crate::sys::fake::FakeKernel::new(&paths.proc);
        let (target, unverified) = (
            kafs_gz.clone(),
            gz(&ko("kafs", "6.1.0-99-amd64 SMP ", "rxrpc")),
        );
        kernel.on_insert = Some(Box::new(move |name| {
            if name == "rxrpc" {
                std::fs::write(&target, &unverified).expect("overwrite");
            }
        }));
        load_with(&paths, &store(dir.path()), &req, &mut kernel).expect("loads");
        let loaded = kernel
            .inserted
            .iter()
            .find(|i| i.name == "kafs")
            .expect("kafs inserted");
        assert_eq!(
            loaded.inode, None,
            "init_module of an image, not a descriptor"
        );
        assert!(loaded.bytes == plain, "the verified decompressed image");
    }

    #[test]
    fn resolves_chain_from_modules_dep() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/fs/afs/kafs.ko: kernel/net/rxrpc/rxrpc.ko\nkernel/net/rxrpc/rxrpc.ko:\n",
        )
        .expect("write");
        let req = LoadRequest {
            module: "kafs".into(),
            module_dir: dir.path().to_owned(),
            release: REL.into(),
            parameters: vec![],
            load_order: None,
        };
        let chain = resolve_chain(&req).expect("chain");
        assert_eq!(chain[0].0, "rxrpc");
        assert_eq!(chain[1].1, dir.path().join("kernel/fs/afs/kafs.ko"));
        // Files are missing: observing must fail with the path, not panic.
        let paths = SysPaths {
            proc: dir.path().join("proc"),
            sys: dir.path().join("sys"),
        };
        let e = observe(&paths, &chain).expect_err("missing file");
        assert!(e.to_string().contains("rxrpc.ko"), "{e}");
    }
}
