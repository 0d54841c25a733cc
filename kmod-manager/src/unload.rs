//! Unloading through the guard: observe, decide, then `delete_module(O_NONBLOCK)`.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, instrument, warn};

use crate::guard::{Decision, Facts, Usage, decide, usage};
use crate::mounts::{CsiTarget, MountNamespace, ScanError, find_csi_targets, scan_namespaces};
use crate::record::{NotOurs, Record, RecordError, RecordStore};
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
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
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

/// Observes what uses the module, without deciding anything. Mounts at and below
/// `own_root` (the AFS root of the client kmod-manager runs, and kAFS's automounts in
/// it) are the client's, not a use.
pub fn observe_usage(
    paths: &SysPaths,
    cfg: &GuardConfig,
    own_root: Option<&Path>,
) -> Result<Usage, UnloadError> {
    let mut obs = observe(paths, cfg)?;
    if let Some(root) = own_root {
        for ns in &mut obs.namespaces {
            ns.mounts.retain(|m| !m.mount_point.starts_with(root));
        }
    }
    Ok(usage(obs.facts(cfg)))
}

/// The outcome of an unload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnloadReport {
    /// Modules removed, in order.
    pub removed: Vec<String>,
    /// Our dependencies left loaded because something else still uses them.
    pub kept: Vec<String>,
    /// Modules left loaded because this kmod-manager did not load them (they were
    /// there before it, or another tool loaded them): never removed.
    pub left: Vec<String>,
}

/// What an unload does with the module and its dependencies (pure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnloadPlan {
    /// Ours, in unload order (the module first); each goes when idle at its turn.
    pub remove: Vec<String>,
    /// Loaded, not ours: left as they are.
    pub left: Vec<(String, NotOurs)>,
}

/// Decides from what is loaded (`module` first, then its dependencies in unload order,
/// each with its state) and what we inserted which modules an unload may remove: only
/// ours. When the module itself is not ours nothing is removed (what it holds stays
/// in use anyway).
pub fn plan_unload(chain: &[(String, ModuleState)], record: &Record) -> UnloadPlan {
    let mut plan = UnloadPlan::default();
    for (i, (name, state)) in chain.iter().enumerate() {
        let ModuleState::Loaded(m) = state else {
            continue;
        };
        match record.owns(m) {
            Ok(()) => plan.remove.push(name.clone()),
            Err(why) if i == 0 => {
                plan.left.push((name.clone(), why));
                return plan;
            }
            Err(why) => plan.left.push((name.clone(), why)),
        }
    }
    plan
}

/// Whether this kmod-manager inserted the module (so an unload would remove it).
pub fn module_is_ours(
    paths: &SysPaths,
    store: &RecordStore,
    cfg: &GuardConfig,
) -> Result<bool, UnloadError> {
    let record = store.lock(&paths.boot_id())?.record;
    let module_only = chain_states(paths, &cfg.module, &[])?;
    Ok(plan_unload(&module_only, &record).left.is_empty())
}

pub(crate) fn blockers_of(d: &Decision) -> Vec<String> {
    match d {
        Decision::Refused { blockers } => blockers.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    }
}

/// The module and its dependencies with their current states, for [`plan_unload`].
fn chain_states(
    paths: &SysPaths,
    module: &str,
    deps: &[String],
) -> Result<Vec<(String, ModuleState)>, UnloadError> {
    let table = paths.module_table()?;
    Ok(std::iter::once(crate::depmod::normalize(module))
        .chain(deps.iter().cloned())
        .map(|n| {
            let state = paths.module_state(&table, &n);
            (n, state)
        })
        .collect())
}

/// Unloads the module if (and only if) the guard allows and this kmod-manager loaded
/// it, then the dependencies it loaded that nothing else uses. Modules it did not load
/// are reported as left, never removed. With `wait`, polls every `poll` until safe or
/// the time is up.
pub fn unload(
    paths: &SysPaths,
    store: &RecordStore,
    cfg: &GuardConfig,
    wait: Option<Duration>,
    poll: Duration,
) -> Result<UnloadReport, UnloadError> {
    unload_with(paths, store, cfg, wait, poll, &mut Live)
}

/// [`unload`] through the given syscalls.
#[instrument(skip_all, fields(module = %cfg.module))]
pub fn unload_with(
    paths: &SysPaths,
    store: &RecordStore,
    cfg: &GuardConfig,
    wait: Option<Duration>,
    poll: Duration,
    sys: &mut impl ModuleSyscalls,
) -> Result<UnloadReport, UnloadError> {
    let started = Instant::now();
    let boot_id = paths.boot_id();
    // Dependencies are learned before the module goes ("used by" columns).
    let deps = dependency_closure(&paths.module_table()?, &cfg.module);
    // A module we did not load is not ours to unload, however long we would wait.
    let record = store.lock(&boot_id)?.record;
    let mut module_only = chain_states(paths, &cfg.module, &deps)?;
    module_only.truncate(1);
    let early = plan_unload(&module_only, &record);
    if !early.left.is_empty() {
        return Ok(report_left(early.left));
    }
    loop {
        let eval = evaluate(paths, cfg)?;
        match &eval.decision {
            Decision::NotLoaded => {
                info!("module not loaded; nothing to unload");
                return Ok(UnloadReport::default());
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
    // Decided again under the lock, from what is loaded now.
    let mut held = store.lock(&boot_id)?;
    held.record.retain_loaded(&paths.module_table()?);
    let plan = plan_unload(&chain_states(paths, &cfg.module, &deps)?, &held.record);
    let mut report = report_left(plan.left);
    let mut to_remove = plan.remove.into_iter();
    let Some(module) = to_remove.next() else {
        return Ok(report);
    };
    remove(sys, &module)?;
    held.record.remove(&module);
    held.save()?;
    report.removed.push(module);
    for dep in to_remove {
        let table = paths.module_table()?;
        match paths.module_state(&table, &dep) {
            ModuleState::Loaded(m) if m.refcount == 0 && m.holders.is_empty() => {
                match remove(sys, &dep) {
                    Ok(()) => {
                        held.record.remove(&dep);
                        held.save()?;
                        report.removed.push(dep);
                    }
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

/// A report naming the modules left because they are not ours, each logged with why.
fn report_left(left: Vec<(String, NotOurs)>) -> UnloadReport {
    for (module, why) in &left {
        info!(module = %module, reason = why.describe(), "left loaded: not ours to unload");
    }
    UnloadReport {
        left: left.into_iter().map(|(m, _)| m).collect(),
        ..UnloadReport::default()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::tests::{kafs_tree, store};
    use crate::loader::{LoadRequest, load_with};
    use crate::sys::fake::FakeKernel;

    fn guard(dir: &std::path::Path) -> GuardConfig {
        GuardConfig {
            module: "kafs".into(),
            fs_types: vec!["afs".into()],
            csi_driver_name: "auristorfs.csi.auristor.com".into(),
            kubelet_dir: dir.join("kubelet"),
        }
    }

    /// kafs needing rxrpc and netfs; rxrpc is already loaded (`modprobe rxrpc` before
    /// kmod-manager started), so the load inserts netfs and kafs.
    fn loaded_over_rxrpc(dir: &std::path::Path) -> (SysPaths, LoadRequest, FakeKernel) {
        let (paths, req) = kafs_tree(dir);
        let lib = &req.module_dir;
        std::fs::write(
            lib.join("kernel/fs/netfs.ko"),
            crate::loader::tests::ko("netfs", crate::loader::tests::VERMAGIC, ""),
        )
        .expect("write");
        std::fs::write(
            lib.join("kernel/fs/afs/kafs.ko"),
            crate::loader::tests::ko("kafs", crate::loader::tests::VERMAGIC, "rxrpc,netfs"),
        )
        .expect("write");
        std::fs::write(
            lib.join("modules.dep"),
            "kernel/fs/afs/kafs.ko: kernel/net/rxrpc/rxrpc.ko kernel/fs/netfs.ko\n\
             kernel/net/rxrpc/rxrpc.ko:\nkernel/fs/netfs.ko:\n",
        )
        .expect("write");
        let mut kernel = FakeKernel::new(&paths.proc);
        kernel.preload("rxrpc", &[]);
        load_with(&paths, &store(dir), &req, &mut kernel).expect("loads");
        let inserted: Vec<&str> = kernel.inserted.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(inserted, ["netfs", "kafs"], "rxrpc was there already");
        (paths, req, kernel)
    }

    /// (c) A dependency that was loaded before kmod-manager is never removed by its
    /// unload, and is reported as left; what kmod-manager loaded goes.
    #[test]
    fn unload_leaves_a_dependency_it_did_not_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (paths, _, mut kernel) = loaded_over_rxrpc(dir.path());
        let report = unload_with(
            &paths,
            &store(dir.path()),
            &guard(dir.path()),
            None,
            Duration::from_millis(10),
            &mut kernel,
        )
        .expect("unloads");
        assert!(kernel.is_loaded("rxrpc"), "rxrpc was not ours to remove");
        assert_eq!(kernel.deleted, ["kafs", "netfs"]);
        assert_eq!(
            report,
            UnloadReport {
                removed: vec!["kafs".into(), "netfs".into()],
                kept: vec![],
                left: vec!["rxrpc".into()],
            }
        );
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["left"], serde_json::json!(["rxrpc"]));
    }

    /// (c) The record lives in the state directory: a restarted kmod-manager (a new
    /// process reading the same directory) still removes what was loaded before it
    /// restarted, and still leaves the rest; with another state directory (or a record
    /// of another boot) nothing is ours.
    #[test]
    fn a_restarted_kmod_manager_knows_what_it_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (paths, req, mut kernel) = loaded_over_rxrpc(dir.path());
        let elsewhere = RecordStore {
            dir: dir.path().join("other-state"),
        };
        let cfg = guard(dir.path());
        let poll = Duration::from_millis(10);
        let report = unload_with(&paths, &elsewhere, &cfg, None, poll, &mut kernel).expect("no-op");
        assert_eq!(
            report.left,
            ["kafs"],
            "nothing is ours in another state dir"
        );
        assert!(kernel.deleted.is_empty());
        // A later start finds the chain loaded (already loaded, same build): still ours.
        load_with(&paths, &store(dir.path()), &req, &mut kernel).expect("adopts");
        assert_eq!(kernel.inserted.len(), 2, "nothing inserted again");
        let report = unload_with(&paths, &store(dir.path()), &cfg, None, poll, &mut kernel)
            .expect("unloads");
        assert_eq!(report.removed, ["kafs", "netfs"]);
        assert_eq!(report.left, ["rxrpc"]);
        // The record of another boot names nothing loaded now.
        let boot = paths.proc.join("sys/kernel/random");
        std::fs::create_dir_all(&boot).expect("mkdir");
        std::fs::write(boot.join("boot_id"), "boot-1\n").expect("write");
        load_with(&paths, &store(dir.path()), &req, &mut kernel).expect("loads");
        std::fs::write(boot.join("boot_id"), "boot-2\n").expect("write");
        let report =
            unload_with(&paths, &store(dir.path()), &cfg, None, poll, &mut kernel).expect("no-op");
        assert_eq!(report.left, ["kafs"]);
    }

    fn loaded(name: &str, build_id: &str) -> (String, ModuleState) {
        (
            name.to_owned(),
            crate::loader::tests::loaded(name, Some(build_id)),
        )
    }

    /// (c) The plan is a pure function of what is loaded and what we inserted.
    #[test]
    fn plan_removes_only_what_we_inserted() {
        let ours = |names: &[&str]| {
            let mut r = Record::new("b");
            for n in names {
                r.add(
                    n,
                    &crate::modinfo::ModInfo {
                        build_id: Some("aa".into()),
                        ..Default::default()
                    },
                );
            }
            r
        };
        let chain = [
            loaded("kafs", "aa"),
            loaded("rxrpc", "aa"),
            ("ipv6".to_owned(), ModuleState::BuiltIn),
            loaded("dns_resolver", "aa"),
            ("fscache".to_owned(), ModuleState::Absent),
            loaded("netfs", "bb"),
        ];
        let plan = plan_unload(&chain, &ours(&["kafs", "dns_resolver", "netfs", "fscache"]));
        assert_eq!(plan.remove, ["kafs", "dns_resolver"]);
        assert_eq!(
            plan.left,
            [
                ("rxrpc".to_owned(), NotOurs::NotInserted),
                ("netfs".to_owned(), NotOurs::OtherBuild)
            ]
        );
        // The module itself not ours: nothing is removed at all.
        let plan = plan_unload(&chain, &ours(&["rxrpc", "dns_resolver"]));
        assert_eq!(plan.remove, Vec::<String>::new());
        assert_eq!(plan.left, [("kafs".to_owned(), NotOurs::NotInserted)]);
        assert_eq!(plan_unload(&[], &ours(&[])), UnloadPlan::default());
    }
}
