//! `status`: what is loaded, refcounts, holders and who uses it.

use std::fmt::Write as _;

use serde::Serialize;

use crate::guard::{Blocker, Decision};
use crate::state::ModuleState;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    pub name: String,
    #[serde(flatten)]
    pub state: ModuleState,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub kernel: String,
    pub module_support: bool,
    /// The managed module first, then its dependencies.
    pub modules: Vec<ModuleStatus>,
    /// Whether the managed module could be unloaded now, and what holds it.
    pub unload: Decision,
}

/// Renders the report as a fixed-width table (pure).
pub fn render_table(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kernel {}{}",
        r.kernel,
        if r.module_support {
            ""
        } else {
            " (no loadable-module support)"
        }
    );
    let _ = writeln!(
        out,
        "{:<20} {:<9} {:>8} {:>10}  HOLDERS",
        "MODULE", "STATE", "REFCOUNT", "SIZE"
    );
    for m in &r.modules {
        let (refc, size, holders) = match &m.state {
            ModuleState::Loaded(l) => (
                l.refcount.to_string(),
                l.size.to_string(),
                if l.holders.is_empty() {
                    "-".to_owned()
                } else {
                    l.holders.join(",")
                },
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:>8} {:>10}  {}",
            m.name,
            m.state.label(),
            refc,
            size,
            holders
        );
    }
    match &r.unload {
        Decision::NotLoaded => {
            let _ = writeln!(out, "unload: not loaded");
        }
        Decision::Safe => {
            let _ = writeln!(out, "unload: safe (no users)");
        }
        Decision::Refused { blockers } => {
            let _ = writeln!(out, "unload: refused, in use by:");
            for b in blockers {
                let _ = writeln!(out, "  - {b}");
            }
            let users = blockers
                .iter()
                .filter(|b| matches!(b, Blocker::Mount { .. } | Blocker::CsiTarget { .. }))
                .count();
            let _ = writeln!(out, "  ({users} mount(s)/target(s))");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LoadedModule;

    #[test]
    fn table_and_json() {
        let r = StatusReport {
            kernel: "6.1.0-56-amd64".into(),
            module_support: true,
            modules: vec![
                ModuleStatus {
                    name: "kafs".into(),
                    state: ModuleState::Loaded(LoadedModule {
                        name: "kafs".into(),
                        size: 397312,
                        refcount: 2,
                        holders: vec![],
                        initstate: "live".into(),
                        srcversion: None,
                        build_id: None,
                    }),
                },
                ModuleStatus {
                    name: "yfs".into(),
                    state: ModuleState::Absent,
                },
            ],
            unload: Decision::Refused {
                blockers: vec![Blocker::Refcount { refcount: 2 }],
            },
        };
        let t = render_table(&r);
        assert!(
            t.contains("kafs") && t.contains("loaded") && t.contains("397312"),
            "{t}"
        );
        assert!(t.contains("refcount is 2"), "{t}");
        let j = serde_json::to_value(&r).expect("json");
        assert_eq!(j["modules"][0]["state"], "loaded");
        assert_eq!(j["modules"][0]["refcount"], 2);
        assert_eq!(j["modules"][1]["state"], "absent");
        assert_eq!(j["unload"]["decision"], "refused");
    }
}
