//! Unloading through the guard: observe, decide, then `delete_module(O_NONBLOCK)`.

use std::ffi::CString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, instrument, warn};

use crate::guard::{Decision, Facts, Usage, decide, usage};
use crate::mounts::{CsiTarget, MountNamespace, ScanError, find_csi_targets, scan_namespaces};
use crate::state::{ModuleState, StateError, SysPaths, dependency_closure};
use crate::sys::{Live, ModuleSyscalls};

/// What the guard watches.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub module: String,
    pub fs_types: Vec<String>,
    pub csi_driver_name: String,
    pub kubelet_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UnloadError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("refusing to unload {module}: {}", blockers.join("; "))]
    Refused {
        module: String,
        blockers: Vec<String>,
    },
    #[error("gave up waiting {waited:?} to unload {module}: {}", blockers.join("; "))]
    Timeout {
        module: String,
        waited: Duration,
        blockers: Vec<String>,
    },
    #[error("delete_module({module}) failed: {source}")]
    Delete {
        module: String,
        #[source]
        source: nix::Error,
    },
    #[error("invalid module name {0:?}")]
    Name(String),
}

/// Everything observed for one decision.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    pub state: ModuleState,
    pub namespaces: Vec<MountNamespace>,
    pub csi_targets: Vec<CsiTarget>,
}

/// A decision and how long observing + deciding took.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    pub module: String,
    pub decision: Decision,
    pub namespaces_scanned: usize,
    pub mount_entries_scanned: usize,
    pub elapsed_ms: f64,
}

impl Observation {
    /// The facts the guard decides from.
    pub fn facts<'a>(&'a self, cfg: &'a GuardConfig) -> Facts<'a> {
        Facts {
            state: &self.state,
            namespaces: &self.namespaces,
            fs_types: &cfg.fs_types,
            csi_targets: &self.csi_targets,
        }
    }
}

/// Reads every fact the guard needs.
pub fn observe(paths: &SysPaths, cfg: &GuardConfig) -> Result<Observation, UnloadError> {
    Ok(Observation {
        state: paths.read_state(&cfg.module)?,
        namespaces: scan_namespaces(&paths.proc)?,
        csi_targets: find_csi_targets(&cfg.kubelet_dir, &cfg.csi_driver_name),
    })
}

/// Observes and decides, timing both.
pub fn evaluate(paths: &SysPaths, cfg: &GuardConfig) -> Result<Evaluation, UnloadError> {
    evaluate_with_usage(paths, cfg).map(|(eval, _)| eval)
}

/// [`evaluate`], plus the [`Usage`] summary of the same observation.
#[instrument(skip_all, fields(module = %cfg.module))]
pub fn evaluate_with_usage(
    paths: &SysPaths,
    cfg: &GuardConfig,
) -> Result<(Evaluation, Usage), UnloadError> {
    let started = Instant::now();
    let obs = observe(paths, cfg)?;
    let facts = obs.facts(cfg);
    let decision = decide(facts);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let usage = usage(facts);
    Ok((
        Evaluation {
            module: cfg.module.clone(),
            namespaces_scanned: obs.namespaces.len(),
            mount_entries_scanned: obs.namespaces.iter().map(|n| n.mounts.len()).sum(),
            decision,
            elapsed_ms,
        },
        usage,
    ))
}

/// Observes what uses the module, without deciding anything.
pub fn observe_usage(paths: &SysPaths, cfg: &GuardConfig) -> Result<Usage, UnloadError> {
    let obs = observe(paths, cfg)?;
    Ok(usage(obs.facts(cfg)))
}

/// The outcome of an unload.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnloadReport {
    /// Modules removed, in order.
    pub removed: Vec<String>,
    /// Dependencies left loaded because something else still uses them.
    pub kept: Vec<String>,
}

fn blockers_of(d: &Decision) -> Vec<String> {
    match d {
        Decision::Refused { blockers } => blockers.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    }
}

/// Unloads the module if (and only if) the guard allows, then the dependencies that
/// nothing else uses. With `wait`, polls every `poll` until safe or the time is up.
pub fn unload(
    paths: &SysPaths,
    cfg: &GuardConfig,
    wait: Option<Duration>,
    poll: Duration,
) -> Result<UnloadReport, UnloadError> {
    unload_with(paths, cfg, wait, poll, &mut Live)
}

/// [`unload`] through the given syscalls.
#[instrument(skip_all, fields(module = %cfg.module))]
pub fn unload_with(
    paths: &SysPaths,
    cfg: &GuardConfig,
    wait: Option<Duration>,
    poll: Duration,
    sys: &mut impl ModuleSyscalls,
) -> Result<UnloadReport, UnloadError> {
    let started = Instant::now();
    // Dependencies are learned before the module goes ("used by" columns).
    let deps = dependency_closure(&paths.module_table()?, &cfg.module);
    loop {
        let eval = evaluate(paths, cfg)?;
        match &eval.decision {
            Decision::NotLoaded => {
                info!("module not loaded; nothing to unload");
                return Ok(UnloadReport {
                    removed: vec![],
                    kept: vec![],
                });
            }
            Decision::Safe => break,
            Decision::Refused { .. } => {
                let blockers = blockers_of(&eval.decision);
                match wait {
                    Some(w) if started.elapsed() < w => {
                        info!(?blockers, "unload not safe yet; waiting");
                        std::thread::sleep(poll.min(w.saturating_sub(started.elapsed())));
                    }
                    Some(w) => {
                        return Err(UnloadError::Timeout {
                            module: cfg.module.clone(),
                            waited: w,
                            blockers,
                        });
                    }
                    None => {
                        return Err(UnloadError::Refused {
                            module: cfg.module.clone(),
                            blockers,
                        });
                    }
                }
            }
        }
    }
    remove(sys, &cfg.module)?;
    let mut report = UnloadReport {
        removed: vec![crate::depmod::normalize(&cfg.module)],
        kept: vec![],
    };
    for dep in deps {
        let table = paths.module_table()?;
        match paths.module_state(&table, &dep) {
            ModuleState::Loaded(m) if m.refcount == 0 && m.holders.is_empty() => {
                match remove(sys, &dep) {
                    Ok(()) => report.removed.push(dep),
                    Err(e) => {
                        warn!(module = %dep, error = %e, "dependency stays loaded");
                        report.kept.push(dep);
                    }
                }
            }
            ModuleState::Loaded(m) => {
                info!(module = %dep, refcount = m.refcount, holders = ?m.holders, "dependency still in use; kept");
                report.kept.push(dep);
            }
            _ => {}
        }
    }
    Ok(report)
}

/// `delete_module` with O_NONBLOCK: fails with EWOULDBLOCK instead of waiting, never forced.
fn remove(sys: &mut impl ModuleSyscalls, module: &str) -> Result<(), UnloadError> {
    let name = CString::new(crate::depmod::normalize(module))
        .map_err(|_| UnloadError::Name(module.to_owned()))?;
    info!(module, "delete_module(O_NONBLOCK)");
    sys.delete_module(&name)
        .map_err(|source| UnloadError::Delete {
            module: module.to_owned(),
            source,
        })
}
