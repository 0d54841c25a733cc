//! `cargo bench -p kmod-manager`: the unload-guard decision.
//!
//! 1. The pure decision over 10,000 synthetic mount entries in 50 namespaces (input
//!    constructed in memory, no real namespaces: this isolates the decision itself).
//! 2. A full observation + decision against this host's real `/proc` (whatever mount
//!    namespaces exist). `tests/vm/bench guard` measures the same with 50 real
//!    namespaces holding 10,000 real mounts.
#![allow(clippy::print_stdout, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kmod_manager::guard::{Facts, decide};
use kmod_manager::mounts::{CsiTarget, MountEntry, MountNamespace};
use kmod_manager::state::{LoadedModule, ModuleState, SysPaths};
use kmod_manager::unload::{GuardConfig, evaluate};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let namespaces: Vec<MountNamespace> = (0..50u64)
        .map(|n| MountNamespace {
            id: 4026531840 + n,
            pids: vec![1000 + n as i32],
            mounts: (0..200)
                .map(|m| MountEntry {
                    mount_point: PathBuf::from(format!("/var/lib/kubelet/pods/p{n}/volumes/v{m}")),
                    fs_type: if m == 199 && n == 49 { "afs" } else { "tmpfs" }.to_owned(),
                    source: Some("tmpfs".to_owned()),
                })
                .collect(),
        })
        .collect();
    let targets: Vec<CsiTarget> = (0..100)
        .map(|k| CsiTarget {
            pod_uid: format!("uid{k}"),
            volume: format!("pv{k}"),
            target_path: PathBuf::from(format!(
                "/var/lib/kubelet/pods/uid{k}/volumes/kubernetes.io~csi/pv{k}/mount"
            )),
            driver_name: "auristorfs.csi.auristor.com".to_owned(),
        })
        .collect();
    let state = ModuleState::Loaded(LoadedModule {
        name: "kafs".into(),
        size: 1,
        refcount: 0,
        holders: vec![],
        initstate: "live".into(),
        srcversion: None,
        build_id: None,
    });
    let fs = vec!["afs".to_owned()];
    let mut times = Vec::new();
    let mut refused = false;
    for _ in 0..50 {
        let t = Instant::now();
        let d = decide(Facts {
            state: &state,
            namespaces: &namespaces,
            fs_types: &fs,
            csi_targets: &targets,
        });
        times.push(t.elapsed());
        refused = !d.is_safe();
    }
    println!(
        "guard decide (pure, synthetic 10,000 mounts / 50 namespaces / 100 CSI targets): median {:?} (refused: {refused})",
        median(times)
    );

    let cfg = GuardConfig {
        module: "kafs".into(),
        fs_types: fs,
        csi_driver_name: "auristorfs.csi.auristor.com".into(),
        kubelet_dir: Path::new("/var/lib/kubelet").to_owned(),
    };
    let paths = SysPaths::default();
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..20 {
        match evaluate(&paths, &cfg) {
            Ok(e) => {
                times.push(Duration::from_secs_f64(e.elapsed_ms / 1000.0));
                last = Some(e);
            }
            Err(e) => {
                println!("guard evaluate on this host failed: {e}");
                return;
            }
        }
    }
    if let Some(e) = last {
        println!(
            "guard observe+decide on this host's /proc: median {:?} over {} namespaces / {} mount entries",
            median(times),
            e.namespaces_scanned,
            e.mount_entries_scanned
        );
    }
}
