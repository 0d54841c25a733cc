//! Loading a module and its dependencies: verify every file first, then `finit_module`.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tracing::{debug, info, instrument, warn};

use crate::depmod::{self, DepError, ModulesDep, module_path};
use crate::modinfo::{FitError, ModInfo, ModinfoError, check_fit};
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
    #[error(transparent)]
    Dep(#[from] DepError),
    #[error("module {module} at {path} is corrupt: {source}")]
    Corrupt {
        module: String,
        path: PathBuf,
        #[source]
        source: ModinfoError,
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

/// One module of the chain, with everything observed about it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub path: PathBuf,
    pub state: ModuleState,
    /// `None` when the file was not needed (built-in module).
    pub info: Option<Result<ModInfo, ModinfoError>>,
    /// Decompressed image of a compressed module (loaded with `init_module`).
    pub image: Option<Vec<u8>>,
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
pub fn plan(
    candidates: &[Candidate],
    release: &str,
    host_arch: &str,
) -> Result<Vec<Step>, LoadError> {
    let mut steps = Vec::with_capacity(candidates.len());
    for c in candidates {
        if c.state == ModuleState::BuiltIn {
            steps.push(Step::BuiltIn {
                name: c.name.clone(),
            });
            continue;
        }
        let info = match &c.info {
            Some(Ok(info)) => info,
            Some(Err(e)) => {
                return Err(LoadError::Corrupt {
                    module: c.name.clone(),
                    path: c.path.clone(),
                    source: e.clone(),
                });
            }
            None => {
                return Err(LoadError::Corrupt {
                    module: c.name.clone(),
                    path: c.path.clone(),
                    source: ModinfoError::NoModinfo,
                });
            }
        };
        check_fit(info, &c.name, release, host_arch).map_err(|source| LoadError::Unfit {
            module: c.name.clone(),
            path: c.path.clone(),
            source,
        })?;
        match &c.state {
            ModuleState::Loaded(l) => {
                if l.initstate != "live" {
                    return Err(LoadError::NotLive {
                        module: c.name.clone(),
                        state: l.initstate.clone(),
                    });
                }
                let verified_by = match compare(l, info) {
                    Sameness::Different { loaded, file } => {
                        return Err(LoadError::Different {
                            module: c.name.clone(),
                            loaded,
                            file,
                            path: c.path.clone(),
                        });
                    }
                    Sameness::Same(by) => Some(by),
                    Sameness::Unknown => None,
                };
                steps.push(Step::AlreadyLoaded {
                    name: c.name.clone(),
                    verified_by,
                });
            }
            _ => steps.push(Step::Load {
                name: c.name.clone(),
                path: c.path.clone(),
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

/// Observes every module of the chain: its state and (unless built in) its `.modinfo`.
pub fn observe(paths: &SysPaths, chain: &[(String, PathBuf)]) -> Result<Vec<Candidate>, LoadError> {
    let table = paths.module_table()?;
    chain
        .iter()
        .map(|(name, path)| {
            let state = paths.module_state(&table, name);
            let (info, image) = if state == ModuleState::BuiltIn {
                (None, None)
            } else {
                let file = std::fs::File::open(path).map_err(|source| LoadError::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                match ModInfo::from_file(&file) {
                    Ok((info, image)) => (Some(Ok(info)), image),
                    Err(e) => (Some(Err(e)), None),
                }
            };
            Ok(Candidate {
                name: name.clone(),
                path: path.clone(),
                state,
                info,
                image,
            })
        })
        .collect()
}

/// Verifies the whole chain, then loads what is missing. Idempotent.
pub fn load(paths: &SysPaths, req: &LoadRequest) -> Result<LoadReport, LoadError> {
    load_with(paths, req, &mut Live)
}

/// [`load`] through the given syscalls.
#[instrument(skip_all, fields(module = %req.module, release = %req.release))]
pub fn load_with(
    paths: &SysPaths,
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
    let candidates = observe(paths, &chain)?;
    let steps = plan(
        &candidates,
        &req.release,
        crate::modinfo::host_architecture(),
    )?;
    debug!(?steps, "load plan verified");
    for step in &steps {
        match step {
            Step::Load { name, path } => {
                let p = if *name == depmod::normalize(&req.module) {
                    &params
                } else {
                    &empty
                };
                let image = candidates
                    .iter()
                    .find(|c| c.name == *name)
                    .and_then(|c| c.image.as_deref());
                insert(sys, name, path, image, p)?;
            }
            Step::AlreadyLoaded {
                name,
                verified_by: Some(by),
            } => info!(module = %name, verified_by = %by, "already loaded, same build"),
            Step::AlreadyLoaded {
                name,
                verified_by: None,
            } => {
                warn!(module = %name, "already loaded; identity unverifiable (no srcversion or build id)")
            }
            Step::BuiltIn { name } => debug!(module = %name, "built into the kernel"),
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

/// `finit_module` on the file, or `init_module` on the decompressed image of a
/// compressed module (works whether or not the kernel can decompress modules itself).
fn insert(
    sys: &mut impl ModuleSyscalls,
    name: &str,
    path: &Path,
    image: Option<&[u8]>,
    params: &CString,
) -> Result<(), LoadError> {
    let result = match image {
        Some(image) => {
            info!(module = %name, path = %path.display(), bytes = image.len(), "init_module (decompressed image)");
            sys.init_module(image, params)
        }
        None => {
            let file = std::fs::File::open(path).map_err(|source| LoadError::ReadFile {
                path: path.to_owned(),
                source,
            })?;
            info!(module = %name, path = %path.display(), "finit_module");
            sys.finit_module(&file, params)
        }
    };
    match result {
        Ok(()) => Ok(()),
        // Loaded concurrently by someone else: the post-load check confirms it is live.
        Err(nix::Error::EEXIST) => {
            warn!(module = %name, "loaded concurrently by another process");
            Ok(())
        }
        Err(source) => Err(LoadError::Insert {
            module: name.to_owned(),
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
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

    fn loaded(name: &str, build_id: Option<&str>) -> ModuleState {
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
            info,
            image: None,
        }
    }

    #[test]
    fn plans_loads_and_skips() {
        let vm = "6.1.0-56-amd64 SMP preempt mod_unload modversions ";
        let c = [
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
        let steps = plan(&c, REL, "X86_64").expect("plan");
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
        let c = [
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
        let e = plan(&c, REL, "X86_64").expect_err("refused");
        assert!(
            matches!(e, LoadError::Unfit { ref module, .. } if module == "kafs"),
            "{e}"
        );
        let c = [cand(
            "kafs",
            ModuleState::Absent,
            Some(Err(ModinfoError::NoModinfo)),
        )];
        assert!(matches!(
            plan(&c, REL, "X86_64"),
            Err(LoadError::Corrupt { .. })
        ));
    }

    #[test]
    fn loaded_but_different_names_both() {
        let c = [cand(
            "kafs",
            loaded("kafs", Some("aa")),
            Some(Ok(info("6.1.0-56-amd64", "kafs", Some("bb")))),
        )];
        let e = plan(&c, REL, "X86_64").expect_err("different");
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
