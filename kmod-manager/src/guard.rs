//! The unload guard: a pure decision from observed facts.
//!
//! A module may be unloaded only when ALL hold: refcount 0, no holder modules, no mount
//! of one of its filesystem types in any mount namespace, and no mounted CSI target of
//! our driver. A refusal lists every blocker.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::mounts::{CsiTarget, MountNamespace};
use crate::state::ModuleState;

/// At most this many pids are named per blocker (the count is always given).
const MAX_PIDS_NAMED: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Blocker {
    /// The kernel holds references on the module.
    Refcount { refcount: i64 },
    /// Other modules depend on it.
    Holders { modules: Vec<String> },
    /// A mount of one of the module's filesystem types.
    Mount {
        namespace: u64,
        mount_point: PathBuf,
        fs_type: String,
        source: Option<String>,
        pids: Vec<i32>,
        pid_count: usize,
    },
    /// A mounted CSI target of our driver.
    CsiTarget {
        target_path: PathBuf,
        pod_uid: String,
        volume: String,
        namespaces: Vec<u64>,
    },
    /// The module is part of the kernel image.
    BuiltIn,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refcount { refcount } => write!(f, "refcount is {refcount}"),
            Self::Holders { modules } => write!(f, "held by modules {}", modules.join(",")),
            Self::Mount {
                namespace,
                mount_point,
                fs_type,
                source,
                pids,
                pid_count,
            } => {
                write!(
                    f,
                    "{fs_type} mount {} (source {}) in mount namespace {namespace} used by pids {}",
                    mount_point.display(),
                    source.as_deref().unwrap_or("none"),
                    pids.iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )?;
                if *pid_count > pids.len() {
                    write!(f, " (+{} more)", pid_count - pids.len())?;
                }
                Ok(())
            }
            Self::CsiTarget {
                target_path,
                pod_uid,
                volume,
                namespaces,
            } => write!(
                f,
                "CSI target {} of pod {pod_uid} (volume {volume}) mounted in namespaces {namespaces:?}",
                target_path.display()
            ),
            Self::BuiltIn => f.write_str("module is built into the kernel"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum Decision {
    /// Nothing to unload.
    NotLoaded,
    /// All conditions hold.
    Safe,
    /// At least one condition fails.
    Refused { blockers: Vec<Blocker> },
}

impl Decision {
    pub fn is_safe(&self) -> bool {
        matches!(self, Self::Safe)
    }
}

/// Observed facts the decision is made from.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub state: &'a ModuleState,
    pub namespaces: &'a [MountNamespace],
    pub fs_types: &'a [String],
    pub csi_targets: &'a [CsiTarget],
}

/// Decides whether the module may be unloaded.
pub fn decide(facts: Facts<'_>) -> Decision {
    let module = match facts.state {
        ModuleState::Absent => return Decision::NotLoaded,
        ModuleState::BuiltIn => {
            return Decision::Refused {
                blockers: vec![Blocker::BuiltIn],
            };
        }
        ModuleState::Loaded(m) => m,
    };
    let mut blockers = Vec::new();
    if module.refcount != 0 {
        blockers.push(Blocker::Refcount {
            refcount: module.refcount,
        });
    }
    if !module.holders.is_empty() {
        blockers.push(Blocker::Holders {
            modules: module.holders.clone(),
        });
    }
    blockers.extend(fs_mounts(facts.namespaces, facts.fs_types));
    blockers.extend(mounted_targets(facts.namespaces, facts.csi_targets));
    if blockers.is_empty() {
        Decision::Safe
    } else {
        Decision::Refused { blockers }
    }
}

/// The decision for taking the client down (pure): the client's own AFS root, mounted
/// at `afs_root` in the host's namespace and copied into others by propagation, with
/// the volumes kAFS automounted below it, and the
/// references the root and afsd hold, do not block: the teardown removes them before
/// the module goes. Everything else still does.
/// With `afs_root` `None` (the root already unmounted) only the references are left out:
/// a mount left at the root's path is then someone's private copy.
pub fn without_client(decision: Decision, afs_root: Option<&Path>) -> Decision {
    match decision {
        Decision::Refused { blockers } => {
            let rest: Vec<Blocker> = blockers
                .into_iter()
                .filter(|b| match b {
                    Blocker::Refcount { .. } => false,
                    Blocker::Mount { mount_point, .. } => {
                        !afs_root.is_some_and(|root| mount_point.starts_with(root))
                    }
                    _ => true,
                })
                .collect();
            if rest.is_empty() {
                Decision::Safe
            } else {
                Decision::Refused { blockers: rest }
            }
        }
        other => other,
    }
}

/// The module itself, as far as usage goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "state",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ModuleUse {
    NotLoaded,
    BuiltIn,
    Loaded { refcount: i64, holders: Vec<String> },
}

/// How much the module is used right now: the guard's view as counts (see [`usage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub module: ModuleUse,
    /// Published (mounted) CSI targets of our driver: the [`Blocker::CsiTarget`]s.
    pub csi_targets: usize,
    /// Mounts of the module's filesystem types over every mount namespace: the
    /// [`Blocker::Mount`]s (a CSI target of such a type is counted here too).
    pub mounts: usize,
}

impl Usage {
    /// Whether anything keeps the module (loaded or built in) from being unloaded.
    pub fn in_use(&self) -> bool {
        self.csi_targets > 0
            || self.mounts > 0
            || match &self.module {
                ModuleUse::NotLoaded => false,
                ModuleUse::BuiltIn => true,
                ModuleUse::Loaded { refcount, holders } => *refcount != 0 || !holders.is_empty(),
            }
    }
}

/// A short summary: `no`, `no (not loaded)`, or what uses the module, e.g.
/// `2 CSI targets, 1 mount, refcount 3`.
impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let mut parts = Vec::new();
        if self.csi_targets > 0 {
            parts.push(plural(self.csi_targets, "CSI target"));
        }
        if self.mounts > 0 {
            parts.push(plural(self.mounts, "mount"));
        }
        match &self.module {
            ModuleUse::Loaded { refcount, holders } => {
                if *refcount != 0 {
                    parts.push(format!("refcount {refcount}"));
                }
                if !holders.is_empty() {
                    parts.push(format!("held by {}", holders.join(",")));
                }
            }
            ModuleUse::BuiltIn => parts.push("built in".to_owned()),
            ModuleUse::NotLoaded if parts.is_empty() => return f.write_str("no (not loaded)"),
            ModuleUse::NotLoaded => parts.push("not loaded".to_owned()),
        }
        if parts.is_empty() {
            f.write_str("no")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// What uses the module, from the same facts and the same rules as [`decide`] (pure).
/// Unlike [`decide`], mounts and CSI targets are counted whether or not the module is
/// loaded or built in.
pub fn usage(facts: Facts<'_>) -> Usage {
    Usage {
        module: match facts.state {
            ModuleState::Absent => ModuleUse::NotLoaded,
            ModuleState::BuiltIn => ModuleUse::BuiltIn,
            ModuleState::Loaded(m) => ModuleUse::Loaded {
                refcount: m.refcount,
                holders: m.holders.clone(),
            },
        },
        csi_targets: mounted_targets(facts.namespaces, facts.csi_targets).len(),
        mounts: fs_mounts(facts.namespaces, facts.fs_types).len(),
    }
}

fn fs_mounts(namespaces: &[MountNamespace], fs_types: &[String]) -> Vec<Blocker> {
    let mut out = Vec::new();
    for ns in namespaces {
        for m in &ns.mounts {
            if fs_types.contains(&m.fs_type) {
                out.push(Blocker::Mount {
                    namespace: ns.id,
                    mount_point: m.mount_point.clone(),
                    fs_type: m.fs_type.clone(),
                    source: m.source.clone(),
                    pids: ns.pids.iter().take(MAX_PIDS_NAMED).copied().collect(),
                    pid_count: ns.pids.len(),
                });
            }
        }
    }
    out
}

fn mounted_targets(namespaces: &[MountNamespace], targets: &[CsiTarget]) -> Vec<Blocker> {
    if targets.is_empty() {
        return Vec::new();
    }
    // One pass over every mount: mount point -> namespaces it is mounted in.
    let mut mounted: HashMap<&Path, BTreeSet<u64>> = HashMap::new();
    for ns in namespaces {
        for m in &ns.mounts {
            mounted
                .entry(m.mount_point.as_path())
                .or_default()
                .insert(ns.id);
        }
    }
    targets
        .iter()
        .filter_map(|t| {
            mounted
                .get(t.target_path.as_path())
                .map(|ns| Blocker::CsiTarget {
                    target_path: t.target_path.clone(),
                    pod_uid: t.pod_uid.clone(),
                    volume: t.volume.clone(),
                    namespaces: ns.iter().copied().collect(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::MountEntry;
    use crate::state::LoadedModule;
    use proptest::prelude::*;

    fn loaded(refcount: i64, holders: &[&str]) -> ModuleState {
        ModuleState::Loaded(LoadedModule {
            name: "kafs".into(),
            size: 1,
            refcount,
            holders: holders.iter().map(|s| s.to_string()).collect(),
            initstate: "live".into(),
            srcversion: None,
            build_id: None,
        })
    }

    fn ns(id: u64, pids: &[i32], mounts: &[(&str, &str)]) -> MountNamespace {
        MountNamespace {
            id,
            pids: pids.to_vec(),
            mounts: mounts
                .iter()
                .map(|(p, t)| MountEntry {
                    mount_point: PathBuf::from(p),
                    fs_type: t.to_string(),
                    source: Some("none".into()),
                })
                .collect(),
        }
    }

    fn afs() -> Vec<String> {
        vec!["afs".into()]
    }

    #[test]
    fn safe_when_everything_clear() {
        let s = loaded(0, &[]);
        let n = [ns(1, &[1], &[("/", "ext4")])];
        let fs = afs();
        let d = decide(Facts {
            state: &s,
            namespaces: &n,
            fs_types: &fs,
            csi_targets: &[],
        });
        assert_eq!(d, Decision::Safe);
    }

    #[test]
    fn mount_in_other_namespace_blocks_and_is_named() {
        let s = loaded(0, &[]);
        let n = [
            ns(1, &[1], &[("/", "ext4")]),
            ns(2, &[42, 43], &[("/", "ext4"), ("/mnt/afsbind", "afs")]),
        ];
        let fs = afs();
        let d = decide(Facts {
            state: &s,
            namespaces: &n,
            fs_types: &fs,
            csi_targets: &[],
        });
        let Decision::Refused { blockers } = d else {
            panic!("must refuse")
        };
        assert_eq!(blockers.len(), 1);
        let msg = blockers[0].to_string();
        assert!(
            msg.contains("/mnt/afsbind") && msg.contains("42,43") && msg.contains("namespace 2"),
            "{msg}"
        );
    }

    #[test]
    fn every_blocker_is_listed() {
        let s = loaded(3, &["yfs_helper"]);
        let target = CsiTarget {
            pod_uid: "u1".into(),
            volume: "pv".into(),
            target_path: "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pv/mount".into(),
            driver_name: "d".into(),
        };
        let n = [ns(
            7,
            &[1],
            &[
                ("/afs", "afs"),
                (
                    "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pv/mount",
                    "afs",
                ),
            ],
        )];
        let fs = afs();
        let d = decide(Facts {
            state: &s,
            namespaces: &n,
            fs_types: &fs,
            csi_targets: std::slice::from_ref(&target),
        });
        let Decision::Refused { blockers } = d else {
            panic!("must refuse")
        };
        assert!(matches!(blockers[0], Blocker::Refcount { refcount: 3 }));
        assert!(matches!(blockers[1], Blocker::Holders { .. }));
        assert_eq!(
            blockers
                .iter()
                .filter(|b| matches!(b, Blocker::Mount { .. }))
                .count(),
            2
        );
        assert!(
            matches!(blockers.last(), Some(Blocker::CsiTarget { namespaces, .. }) if namespaces == &[7])
        );
    }

    #[test]
    fn unmounted_target_does_not_block() {
        let s = loaded(0, &[]);
        let target = CsiTarget {
            pod_uid: "u1".into(),
            volume: "pv".into(),
            target_path: "/k/pods/u1/volumes/kubernetes.io~csi/pv/mount".into(),
            driver_name: "d".into(),
        };
        let n = [ns(1, &[1], &[("/", "ext4")])];
        let fs = afs();
        assert!(
            decide(Facts {
                state: &s,
                namespaces: &n,
                fs_types: &fs,
                csi_targets: &[target],
            })
            .is_safe()
        );
    }

    #[test]
    fn absent_and_builtin() {
        let fs = afs();
        let f = |s: &ModuleState| {
            decide(Facts {
                state: s,
                namespaces: &[],
                fs_types: &fs,
                csi_targets: &[],
            })
        };
        assert_eq!(f(&ModuleState::Absent), Decision::NotLoaded);
        assert!(!f(&ModuleState::BuiltIn).is_safe());
    }

    #[test]
    fn usage_summary() {
        let target = |u: &str| CsiTarget {
            pod_uid: u.into(),
            volume: "pv".into(),
            target_path: format!("/k/pods/{u}/volumes/kubernetes.io~csi/pv/mount").into(),
            driver_name: "d".into(),
        };
        let targets = [target("u1"), target("u2"), target("u3")];
        let n = [
            ns(1, &[1], &[("/", "ext4"), ("/afs", "afs")]),
            ns(
                2,
                &[9],
                &[
                    ("/k/pods/u1/volumes/kubernetes.io~csi/pv/mount", "tmpfs"),
                    ("/k/pods/u2/volumes/kubernetes.io~csi/pv/mount", "tmpfs"),
                ],
            ),
        ];
        let fs = afs();
        let u = |s: &ModuleState, namespaces: &[MountNamespace]| {
            usage(Facts {
                state: s,
                namespaces,
                fs_types: &fs,
                csi_targets: &targets,
            })
        };
        let busy = u(&loaded(3, &[]), &n);
        assert_eq!((busy.csi_targets, busy.mounts), (2, 1), "u3 is not mounted");
        assert!(busy.in_use());
        assert_eq!(busy.to_string(), "2 CSI targets, 1 mount, refcount 3");
        assert_eq!(
            u(&loaded(0, &["yfs", "x"]), &n[..1]).to_string(),
            "1 mount, held by yfs,x"
        );
        let idle = u(&loaded(0, &[]), &[]);
        assert!(!idle.in_use());
        assert_eq!(idle.to_string(), "no");
        assert_eq!(u(&ModuleState::Absent, &[]).to_string(), "no (not loaded)");
        assert_eq!(
            u(&ModuleState::Absent, &n[1..]).to_string(),
            "2 CSI targets, not loaded"
        );
        // Unlike decide(), usage still counts the targets of a built-in module.
        let builtin = u(&ModuleState::BuiltIn, &n);
        assert_eq!(builtin.csi_targets, 2);
        assert_eq!(builtin.to_string(), "2 CSI targets, 1 mount, built in");
    }

    proptest! {
        /// The usage summary agrees with the guard: in use iff the unload is refused, and
        /// its counts are the guard's CSI-target and mount blockers.
        #[test]
        fn usage_agrees_with_decide(
            refcount in -1i64..3,
            holders in proptest::collection::vec("[a-z]{1,5}", 0..2),
            mounted in proptest::collection::vec(proptest::collection::vec((0u8..4, prop_oneof!["afs", "ext4"]), 0..5), 0..4),
        ) {
            let targets: Vec<CsiTarget> = (0..3u8).map(|t| CsiTarget {
                pod_uid: format!("u{t}"), volume: "pv".into(),
                target_path: PathBuf::from(format!("/k/pods/u{t}/volumes/kubernetes.io~csi/pv/mount")),
                driver_name: "d".into(),
            }).collect();
            // Path index 3 is not a target.
            let path = |i: u8| targets.get(usize::from(i)).map_or_else(|| PathBuf::from("/afs"), |t| t.target_path.clone());
            let namespaces: Vec<MountNamespace> = mounted.iter().enumerate().map(|(i, ms)| MountNamespace {
                id: i as u64, pids: vec![1],
                mounts: ms.iter().map(|(p, t)| MountEntry { mount_point: path(*p), fs_type: t.to_string(), source: None }).collect(),
            }).collect();
            let s = ModuleState::Loaded(LoadedModule {
                name: "kafs".into(), size: 1, refcount, holders,
                initstate: "live".into(), srcversion: None, build_id: None,
            });
            let facts = Facts { state: &s, namespaces: &namespaces, fs_types: &afs(), csi_targets: &targets };
            let u = usage(facts);
            let d = decide(facts);
            prop_assert_eq!(u.in_use(), !d.is_safe());
            prop_assert_eq!(u.to_string() == "no", d.is_safe());
            let blockers = match &d { Decision::Refused { blockers } => blockers.clone(), _ => Vec::new() };
            let count = |f: fn(&Blocker) -> bool| blockers.iter().filter(|b| f(b)).count();
            prop_assert_eq!(u.csi_targets, count(|b| matches!(b, Blocker::CsiTarget { .. })));
            prop_assert_eq!(u.mounts, count(|b| matches!(b, Blocker::Mount { .. })));
        }

        /// A CSI target blocks iff its path is a mount point in some namespace, and the
        /// blocker lists exactly those namespaces.
        #[test]
        fn csi_target_blocks_iff_mounted(
            mounted_in in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..4), 1..5),
        ) {
            // Namespace n mounts target t for every t listed in mounted_in[n].
            let targets: Vec<CsiTarget> = (0..4u8).map(|t| CsiTarget {
                pod_uid: format!("u{t}"), volume: format!("pv{t}"),
                target_path: PathBuf::from(format!("/k/pods/u{t}/volumes/kubernetes.io~csi/pv{t}/mount")),
                driver_name: "d".into(),
            }).collect();
            let namespaces: Vec<MountNamespace> = mounted_in.iter().enumerate().map(|(n, ts)| MountNamespace {
                id: n as u64, pids: vec![1],
                mounts: ts.iter().map(|t| MountEntry {
                    mount_point: targets[*t as usize].target_path.clone(), fs_type: "tmpfs".into(), source: None,
                }).collect(),
            }).collect();
            let s = loaded(0, &[]);
            let d = decide(Facts { state: &s, namespaces: &namespaces, fs_types: &afs(), csi_targets: &targets });
            let blocked: Vec<(String, Vec<u64>)> = match d {
                Decision::Refused { blockers } => blockers.into_iter().filter_map(|b| match b {
                    Blocker::CsiTarget { pod_uid, namespaces, .. } => Some((pod_uid, namespaces)),
                    _ => None,
                }).collect(),
                _ => Vec::new(),
            };
            for t in 0..4u8 {
                let expected: Vec<u64> = mounted_in.iter().enumerate()
                    .filter(|(_, ts)| ts.contains(&t)).map(|(n, _)| n as u64).collect();
                let got = blocked.iter().find(|(u, _)| *u == format!("u{t}")).map(|(_, ns)| ns.clone());
                if expected.is_empty() {
                    prop_assert!(got.is_none());
                } else {
                    prop_assert_eq!(got, Some(expected));
                }
            }
        }

        /// Safe iff refcount 0, no holders and no mount of a guarded type anywhere.
        #[test]
        fn safe_iff_all_conditions(
            refcount in -1i64..3,
            holders in proptest::collection::vec("[a-z]{1,5}", 0..2),
            types in proptest::collection::vec(proptest::collection::vec(prop_oneof!["afs", "ext4", "tmpfs", "yfs"], 0..6), 0..6),
        ) {
            let s = ModuleState::Loaded(LoadedModule {
                name: "kafs".into(), size: 1, refcount, holders: holders.clone(),
                initstate: "live".into(), srcversion: None, build_id: None,
            });
            let namespaces: Vec<MountNamespace> = types.iter().enumerate().map(|(i, ts)| MountNamespace {
                id: i as u64, pids: vec![i as i32 + 1],
                mounts: ts.iter().enumerate().map(|(j, t)| MountEntry {
                    mount_point: PathBuf::from(format!("/m{j}")), fs_type: t.to_string(), source: None,
                }).collect(),
            }).collect();
            let fs = vec!["afs".to_string(), "yfs".to_string()];
            let d = decide(Facts { state: &s, namespaces: &namespaces, fs_types: &fs, csi_targets: &[] });
            let any_mount = types.iter().flatten().any(|t| t == "afs" || t == "yfs");
            prop_assert_eq!(d.is_safe(), refcount == 0 && holders.is_empty() && !any_mount);
        }
    }

    #[test]
    fn the_client_s_own_root_and_references_do_not_block_its_teardown() {
        let root_mount = |ns: u64, at: &str| Blocker::Mount {
            namespace: ns,
            mount_point: at.into(),
            fs_type: "afs".into(),
            source: Some("none".into()),
            pids: vec![1],
            pid_count: 1,
        };
        let refused = |blockers| Decision::Refused { blockers };
        let afs = Some(Path::new("/afs"));
        // The host's root, a peer copy in the CSI pod, the references: safe.
        let own = refused(vec![
            root_mount(1, "/afs"),
            root_mount(2, "/afs"),
            root_mount(1, "/afs/test.afs/test.vol"),
            Blocker::Refcount { refcount: 2 },
        ]);
        assert_eq!(without_client(own.clone(), afs), Decision::Safe);
        // With the root gone, a mount left at /afs is someone's private copy.
        assert!(matches!(
            without_client(own, None),
            Decision::Refused { .. }
        ));
        // A pod's mount elsewhere, and a published target, still block.
        let used = refused(vec![
            root_mount(1, "/afs"),
            root_mount(3, "/mnt/afs"),
            root_mount(3, "/afsx"),
            Blocker::CsiTarget {
                target_path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/v/mount".into(),
                pod_uid: "p".into(),
                volume: "v".into(),
                namespaces: vec![1],
            },
        ]);
        match without_client(used, afs) {
            Decision::Refused { blockers } => {
                assert_eq!(blockers.len(), 3);
                assert!(blockers.iter().all(|b| !matches!(b, Blocker::Mount { mount_point, .. } if mount_point == Path::new("/afs"))));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
