//! Turning flags + config into a context, and the one-shot commands.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cli::{
    GuardArgs, LoadArgs, ModuleArgs, Output, SelectArgs, StatusArgs, StopwatchArgs, UnloadArgs,
};
use crate::config::{ConfigError, KmodConfig, valid_parameter};
use crate::depmod::normalize;
use crate::kernel::{KernelRelease, KernelReleaseError};
use crate::loader::{LoadError, LoadRequest};
use crate::mapping::{MappingError, MappingSet, Selection};
use crate::record::RecordStore;
use crate::state::{StateError, SysPaths, dependency_closure};
use crate::status::{ModuleStatus, StatusReport, render_table};
use crate::unload::{GuardConfig, UnloadError, evaluate, unload};

pub const DEFAULT_MODULE: &str = "kafs";
pub const DEFAULT_FS_TYPE: &str = "afs";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot read the running kernel release: {0}")]
    Uname(#[source] nix::Error),
    #[error("kernel release: {0}")]
    Kernel(#[from] KernelReleaseError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Unload(#[from] UnloadError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("--param {0:?} must be key=value")]
    Param(String),
    #[error(
        "this container runs image {running:?} but kernel {kernel} maps to {selected:?} (mapping [{index}])"
    )]
    WrongImage {
        running: String,
        selected: String,
        kernel: String,
        index: usize,
    },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stopwatch: {0}")]
    Stopwatch(String),
}

/// Everything a command needs, resolved from flags, environment and config.
#[derive(Debug, Clone)]
pub struct Context {
    pub paths: SysPaths,
    pub release: KernelRelease,
    pub config: Option<(KmodConfig, MappingSet)>,
    pub load: LoadRequest,
    pub guard: GuardConfig,
    /// The record of the modules we inserted.
    pub store: RecordStore,
}

/// The running kernel release (uname), unless overridden.
pub fn kernel_release(over: Option<&str>) -> Result<KernelRelease, AppError> {
    match over {
        Some(k) => Ok(KernelRelease::parse(k)?),
        None => {
            let u = nix::sys::utsname::uname().map_err(AppError::Uname)?;
            Ok(KernelRelease::parse(&u.release().to_string_lossy())?)
        }
    }
}

impl Context {
    pub fn build(
        m: &ModuleArgs,
        g: Option<&GuardArgs>,
        params: &[String],
    ) -> Result<Self, AppError> {
        let release = kernel_release(m.kernel.as_deref())?;
        let config = m.config.as_deref().map(KmodConfig::load).transpose()?;
        let settings = config
            .as_ref()
            .and_then(|(c, _)| c.module.clone())
            .unwrap_or_default();
        let module = m
            .module
            .clone()
            .or(settings.name.clone())
            .unwrap_or_else(|| DEFAULT_MODULE.to_owned());
        let module_dir = m
            .module_dir
            .clone()
            .or(settings.module_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/lib/modules").join(release.full()));
        let mut parameters = settings.parameters.clone();
        for p in params.iter().filter(|p| !p.is_empty()) {
            if !valid_parameter(p) {
                return Err(AppError::Param(p.clone()));
            }
            parameters.push(p.clone());
        }
        let fs_types = match g {
            Some(g) if !g.fs_types.is_empty() => g.fs_types.clone(),
            _ => settings
                .filesystem_types
                .clone()
                .unwrap_or_else(|| vec![DEFAULT_FS_TYPE.to_owned()]),
        };
        let guard = GuardConfig {
            module: normalize(&module),
            fs_types,
            csi_driver_name: g
                .map(|g| g.csi_driver_name.clone())
                .unwrap_or_else(|| crate::cli::DEFAULT_CSI_DRIVER.to_owned()),
            kubelet_dir: g
                .map(|g| g.kubelet_dir.clone())
                .unwrap_or_else(|| PathBuf::from("/var/lib/kubelet")),
        };
        Ok(Self {
            paths: SysPaths {
                proc: m.proc_root.clone(),
                sys: m.sys_root.clone(),
            },
            load: LoadRequest {
                module: module.clone(),
                module_dir,
                release: release.full().to_owned(),
                parameters,
                load_order: settings.load_order.clone(),
            },
            release,
            config,
            guard,
            store: RecordStore {
                dir: m.state_dir.clone(),
            },
        })
    }

    /// Selects the mapping for this kernel when a config with mappings is present.
    pub fn selection(&self, module_version: Option<&str>) -> Result<Option<Selection>, AppError> {
        let Some((cfg, set)) = &self.config else {
            return Ok(None);
        };
        if cfg.kernel_mappings.is_empty() {
            return Ok(None);
        }
        let mv = module_version.or(cfg.module_version.as_deref());
        Ok(Some(set.select(&self.release, mv)?))
    }
}

/// Refuses to continue when the image selected for this kernel is not the running one.
pub fn check_image(sel: &Selection, running: Option<&str>, kernel: &str) -> Result<(), AppError> {
    match running {
        Some(r) if r != sel.image => Err(AppError::WrongImage {
            running: r.to_owned(),
            selected: sel.image.clone(),
            kernel: kernel.to_owned(),
            index: sel.index,
        }),
        _ => Ok(()),
    }
}

pub fn select(args: &SelectArgs, out: &mut dyn Write) -> Result<(), AppError> {
    let release = kernel_release(args.kernel.as_deref())?;
    let (cfg, set) = KmodConfig::load(&args.config)?;
    let mv = args
        .module_version
        .as_deref()
        .or(cfg.module_version.as_deref());
    let sel = set.select(&release, mv)?;
    match args.output {
        Output::Table => writeln!(out, "{}", sel.image)?,
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&sel)?)?,
    }
    Ok(())
}

pub fn load(args: &LoadArgs, out: &mut dyn Write) -> Result<(), AppError> {
    let ctx = Context::build(&args.module, None, &args.params)?;
    let report = crate::loader::load(&ctx.paths, &ctx.store, &ctx.load)?;
    match args.output {
        Output::Table => {
            for s in &report.steps {
                match s {
                    crate::loader::Step::Load { name, path } => {
                        writeln!(out, "loaded   {name} ({})", path.display())?
                    }
                    crate::loader::Step::AlreadyLoaded { name, verified_by } => writeln!(
                        out,
                        "present  {name} ({})",
                        verified_by.as_deref().unwrap_or("identity unverified")
                    )?,
                    crate::loader::Step::BuiltIn { name } => writeln!(out, "built-in {name}")?,
                }
            }
            writeln!(
                out,
                "{} ready in {:.1} ms",
                ctx.load.module, report.elapsed_ms
            )?;
        }
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
    }
    Ok(())
}

pub fn unload_cmd(args: &UnloadArgs, out: &mut dyn Write) -> Result<(), AppError> {
    let ctx = Context::build(&args.module, Some(&args.guard), &[])?;
    if args.dry_run {
        let eval = evaluate(&ctx.paths, &ctx.guard)?;
        match args.output {
            Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&eval)?)?,
            Output::Table => {
                let verdict = match &eval.decision {
                    crate::guard::Decision::NotLoaded => "not loaded".to_owned(),
                    crate::guard::Decision::Safe => "safe to unload".to_owned(),
                    crate::guard::Decision::Refused { blockers } => format!(
                        "refused: {}",
                        blockers
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                };
                writeln!(out, "{}: {verdict}", eval.module)?;
                writeln!(
                    out,
                    "decided in {:.2} ms over {} mount namespaces, {} mount entries",
                    eval.elapsed_ms, eval.namespaces_scanned, eval.mount_entries_scanned
                )?;
            }
        }
        return Ok(());
    }
    let report = unload(&ctx.paths, &ctx.store, &ctx.guard, args.wait, args.poll)?;
    match args.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
        Output::Table => {
            if !report.removed.is_empty() {
                writeln!(out, "removed {}", report.removed.join(" "))?;
            } else if report.left.is_empty() {
                writeln!(out, "{}: not loaded", ctx.guard.module)?;
            }
            if !report.kept.is_empty() {
                writeln!(out, "kept (still used) {}", report.kept.join(" "))?;
            }
            if !report.left.is_empty() {
                writeln!(
                    out,
                    "left (not loaded by kmod-manager) {}",
                    report.left.join(" ")
                )?;
            }
        }
    }
    Ok(())
}

pub fn status(args: &StatusArgs, out: &mut dyn Write) -> Result<(), AppError> {
    let ctx = Context::build(&args.module, Some(&args.guard), &[])?;
    let table = ctx.paths.module_table()?;
    let mut modules = vec![ModuleStatus {
        name: ctx.guard.module.clone(),
        state: ctx.paths.module_state(&table, &ctx.guard.module),
    }];
    for dep in dependency_closure(&table, &ctx.guard.module) {
        modules.push(ModuleStatus {
            state: ctx.paths.module_state(&table, &dep),
            name: dep,
        });
    }
    let eval = evaluate(&ctx.paths, &ctx.guard)?;
    let report = StatusReport {
        kernel: ctx.release.full().to_owned(),
        module_support: table.supported,
        modules,
        unload: eval.decision,
    };
    match args.output {
        Output::Table => write!(out, "{}", render_table(&report))?,
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
    }
    Ok(())
}

/// Times a command, or until a file appears (then the command keeps running).
pub fn stopwatch(args: &StopwatchArgs, out: &mut dyn Write) -> Result<(), AppError> {
    let (prog, rest) = args
        .command
        .split_first()
        .ok_or_else(|| AppError::Stopwatch("no command".into()))?;
    let started = Instant::now();
    let mut child = std::process::Command::new(prog)
        .args(rest)
        .spawn()
        .map_err(|e| AppError::Stopwatch(format!("spawn {prog}: {e}")))?;
    if let Some(file) = &args.until_file {
        loop {
            if file.exists() {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                writeln!(
                    out,
                    "stopwatch: {ms:.1} ms until {} (pid {})",
                    file.display(),
                    child.id()
                )?;
                return Ok(());
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(AppError::Stopwatch(format!(
                    "{prog} exited ({st}) before {} appeared",
                    file.display()
                )));
            }
            if started.elapsed() > args.timeout {
                return Err(AppError::Stopwatch(format!(
                    "{} did not appear within {:?}",
                    file.display(),
                    args.timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let st = child
        .wait()
        .map_err(|e| AppError::Stopwatch(format!("wait {prog}: {e}")))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    writeln!(out, "stopwatch: {ms:.1} ms ({st})")?;
    if st.success() {
        Ok(())
    } else {
        Err(AppError::Stopwatch(format!("{prog} failed: {st}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::KernelMapping;

    #[test]
    fn select_prints_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("m.yaml");
        std::fs::write(
            &cfg,
            "moduleVersion: '2'\nkernelMappings:\n- regexp: '6\\.1\\..*'\n  containerImage: r/kafs-${MODULE_VERSION}:${KERNEL_XYZ}\n",
        )
        .expect("write");
        let args = SelectArgs {
            kernel: Some("6.1.0-56-amd64".into()),
            config: cfg.clone(),
            module_version: None,
            output: Output::Table,
        };
        let mut out = Vec::new();
        select(&args, &mut out).expect("selects");
        assert_eq!(String::from_utf8_lossy(&out), "r/kafs-2:6.1.0\n");
        let args = SelectArgs {
            kernel: Some("5.15.0-91-generic".into()),
            ..args
        };
        let e = select(&args, &mut Vec::new()).expect_err("no match");
        assert!(e.to_string().contains("5.15.0-91-generic"), "{e}");
    }

    #[test]
    fn wrong_image_is_refused() {
        let set = MappingSet::compile(&[KernelMapping {
            literal: Some("6.1.0-56-amd64".into()),
            container_image: "r/kafs:${KERNEL_FULL_VERSION}".into(),
            ..Default::default()
        }])
        .expect("valid");
        let k = KernelRelease::parse("6.1.0-56-amd64").expect("k");
        let sel = set.select(&k, None).expect("match");
        assert!(check_image(&sel, Some("r/kafs:6.1.0-56-amd64"), k.full()).is_ok());
        assert!(check_image(&sel, None, k.full()).is_ok());
        let e = check_image(&sel, Some("r/kafs:6.1.0-55-amd64"), k.full()).expect_err("wrong");
        assert!(e.to_string().contains("6.1.0-55"), "{e}");
    }
}
