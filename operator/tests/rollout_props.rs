//! Properties of the rolling-update planner, checked on the simulator
//! (`afs_operator::rollout::sim`): random groups and faults, invariants after every
//! executed action, liveness once faults clear; then scenarios one behaviour each.

#![allow(clippy::unwrap_used)]

use afs_operator::crd::RolloutSpec;
use afs_operator::rollout::sim::{
    Cluster, Faults, NEW_REVISION, NodeSpec, PodSpec, SimAfsPod, SimNode, XorShift,
};
use afs_operator::rollout::{
    Action, Blocked, GroupView, NodeView, Plan, PodView, Policy, UpgradeState, plan,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

const EVICTION_TIMEOUT: u32 = 30;
const PHASE_TIMEOUT: u32 = 20;

fn policy(max_unavailable: IntOrString, max_parallel: u32, group_size: usize) -> Policy {
    let mut spec = RolloutSpec {
        max_unavailable,
        max_parallel,
        ..RolloutSpec::default()
    };
    spec.eviction.timeout_seconds = EVICTION_TIMEOUT;
    spec.phase_timeouts.unmount_seconds = PHASE_TIMEOUT;
    spec.phase_timeouts.module_swap_seconds = PHASE_TIMEOUT;
    spec.phase_timeouts.validation_seconds = PHASE_TIMEOUT;
    Policy::from_spec(&spec, group_size).unwrap()
}

fn count(n: u32) -> IntOrString {
    IntOrString::Int(i32::try_from(n).unwrap())
}

/// Steps until `done` holds after a step; returns the last plan and the steps taken.
fn run(cluster: &mut Cluster, max_steps: usize, done: impl Fn(&Cluster) -> bool) -> (Plan, usize) {
    let mut last = None;
    for steps in 1..=max_steps {
        let plan = cluster.step().unwrap_or_else(|v| panic!("{v}"));
        if done(cluster) {
            return (plan, steps);
        }
        last = Some(plan);
    }
    (last.unwrap(), max_steps)
}

fn node(cluster: &Cluster, i: usize) -> &SimNode {
    &cluster.nodes[i]
}

fn max_unavailable() -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        (1..=5u32).prop_map(count),
        (1..=60u32).prop_map(|p| IntOrString::String(format!("{p}%"))),
    ]
}

/// `forever`: probability that a non-interruptible pod never ends by itself.
fn pod_spec(forever: f64) -> impl Strategy<Value = PodSpec> {
    (
        prop::bool::weighted(0.2),
        1..=10u32,
        prop::bool::weighted(forever),
    )
        .prop_map(|(non_interruptible, runs, never)| PodSpec {
            non_interruptible,
            runs_for: (non_interruptible && !never).then_some(runs),
        })
}

fn node_spec(forever: f64) -> impl Strategy<Value = NodeSpec> {
    (
        // Ready, cordoned by an admin, running the DaemonSet pods.
        (
            prop::bool::weighted(0.95),
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.95),
        ),
        prop::bool::weighted(0.8),
        prop::collection::vec(pod_spec(forever), 0..4),
        (1..=3u32, 1..=2u32, 1..=3u32),
    )
        .prop_map(
            |((ready, admin_cordoned, has_pods), reports_published, pods, (e, s, v))| NodeSpec {
                ready,
                admin_cordoned,
                has_pods,
                reports_published,
                pods,
                evict_ticks: e,
                swap_ticks: s,
                validate_ticks: v,
            },
        )
}

fn upgradable(n: &SimNode) -> bool {
    n.spec.has_pods && n.ready
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Without faults: invariants hold and every node that can be upgraded is, within a
    /// bound; nodes left waiting are blocked only by the budget that NotReady and
    /// admin-cordoned nodes take.
    #[test]
    fn rollout_without_faults_completes(
        nodes in prop::collection::vec(node_spec(0.0), 1..40),
        max_unavailable in max_unavailable(),
        max_parallel in 1..=4u32,
        seed in any::<u64>(),
    ) {
        let p = policy(max_unavailable, max_parallel, nodes.len());
        let mut cluster = Cluster::new(nodes, p.clone(), Faults::default(), seed);
        let static_unavailable = cluster.nodes.iter().filter(|n| !n.ready || n.admin_cordoned).count();
        let others_can_start = u32::try_from(static_unavailable).unwrap() < p.max_unavailable;
        let expected: Vec<usize> = (0..cluster.nodes.len())
            .filter(|&i| upgradable(node(&cluster, i)) && (others_can_start || node(&cluster, i).admin_cordoned))
            .collect();
        let bound = 20 * cluster.nodes.len() + 20;
        let (last, _) = run(&mut cluster, bound, |c| {
            expected.iter().all(|&i| c.nodes[i].upgraded_to(NEW_REVISION)) && c.in_progress() == 0
        });
        for &i in &expected {
            let n = node(&cluster, i);
            prop_assert!(n.upgraded_to(NEW_REVISION), "{} not upgraded: {:?} {}", n.name, n.state, n.reason);
        }
        for n in &cluster.nodes {
            prop_assert_ne!(n.state, Some(UpgradeState::UpgradeFailed), "{} failed: {}", n.name, n.reason);
            prop_assert!(!n.admin_cordoned || n.unschedulable, "{} admin cordon lifted", n.name);
        }
        let waiting = cluster.nodes.iter().filter(|n| upgradable(n) && !n.upgraded_to(NEW_REVISION)).count();
        if waiting > 0 {
            prop_assert!(matches!(last.summary.blocked, Some(Blocked::BudgetFull { .. })), "{:?}", last.summary);
        }
    }

    /// With faults (NotReady nodes, refused and stuck evictions, pods appearing on
    /// cordoned nodes, lingering mounts, operator restarts mid-plan, pause toggles,
    /// admin cordons, a revision change): every invariant holds at every action, and
    /// once the faults clear the group settles with nothing in progress and only the
    /// budget holding back nodes that did not fail.
    #[test]
    fn rollout_with_faults_keeps_invariants_and_settles(
        nodes in prop::collection::vec(node_spec(0.3), 1..40),
        max_unavailable in max_unavailable(),
        max_parallel in 1..=4u32,
        rate in 0.0..0.08f64,
        revision_change_at in prop::option::weighted(0.3, 0..120i64),
        fault_steps in 0..200usize,
        seed in any::<u64>(),
    ) {
        let p = policy(max_unavailable, max_parallel, nodes.len());
        let faults = Faults { revision_change_at, ..Faults::scaled(rate) };
        let mut cluster = Cluster::new(nodes, p.clone(), faults, seed);
        for _ in 0..fault_steps {
            if let Err(v) = cluster.step() {
                prop_assert!(false, "{}", v);
            }
        }
        cluster.clear_faults();
        let bound = 25 * cluster.nodes.len() + 100;
        let (last, _) = run(&mut cluster, bound, |_| false);
        let desired = cluster.desired().to_owned();
        prop_assert_eq!(cluster.in_progress(), 0);
        prop_assert!(last.actions.is_empty(), "not settled: {:?}", last.actions);
        let mut waiting = 0;
        for n in &cluster.nodes {
            prop_assert!(!n.admin_cordoned || n.unschedulable, "{} admin cordon lifted", n.name);
            match n.state {
                Some(UpgradeState::UpgradeFailed) => {
                    prop_assert_eq!(n.target.as_deref(), Some(desired.as_str()), "{} not retried", &n.name);
                }
                Some(UpgradeState::UpgradeDone) => {
                    prop_assert!(n.upgraded_to(&desired), "{} done but behind", n.name);
                }
                _ if upgradable(n) && n.behind(&desired) => waiting += 1,
                _ => {}
            }
        }
        if waiting > 0 {
            prop_assert!(
                matches!(last.summary.blocked, Some(Blocked::BudgetFull { unavailable, max_unavailable }) if unavailable >= max_unavailable),
                "{} waiting: {:?}", waiting, last.summary
            );
        }
    }

    /// The plan does not depend on the order of the observed nodes.
    #[test]
    fn plan_ignores_node_order(
        nodes in prop::collection::vec(node_spec(0.3), 1..40),
        max_unavailable in max_unavailable(),
        max_parallel in 1..=4u32,
        steps in 0..60usize,
        seed in any::<u64>(),
    ) {
        let p = policy(max_unavailable, max_parallel, nodes.len());
        let mut cluster = Cluster::new(nodes, p, Faults::scaled(0.05), seed);
        for _ in 0..steps {
            cluster.step().unwrap_or_else(|v| panic!("{v}"));
        }
        let view = cluster.view();
        let mut shuffled = view.clone();
        let mut rng = XorShift::new(seed);
        for i in (1..shuffled.nodes.len()).rev() {
            shuffled.nodes.swap(i, rng.below(i + 1));
        }
        prop_assert_eq!(plan(&view, &cluster.policy()), plan(&shuffled, &cluster.policy()));
    }
}

/// `total` nodes: `front`, then Ready nodes with one evictable pod.
fn group(front: Vec<NodeSpec>, total: usize) -> Vec<NodeSpec> {
    let mut nodes = front;
    nodes.resize_with(total, || NodeSpec::simple(1, 1, 1, 1));
    nodes
}

#[test]
fn budget_one_with_an_admin_cordoned_node() {
    let admin = NodeSpec {
        admin_cordoned: true,
        ..NodeSpec::simple(1, 1, 1, 1)
    };
    let nodes = group(vec![NodeSpec::simple(1, 1, 1, 1), admin], 4);
    let mut cluster = Cluster::new(nodes, policy(count(1), 2, 4), Faults::default(), 1);

    // The admin's node is already out of service: upgrading it costs nothing, so it is
    // the only one started; the others wait for the budget the admin holds.
    let first = cluster.step().unwrap();
    assert_eq!(first.summary.started, 1);
    assert_eq!(
        first.summary.blocked,
        Some(Blocked::BudgetFull {
            unavailable: 1,
            max_unavailable: 1
        })
    );
    assert_eq!(
        node(&cluster, 1).state,
        Some(UpgradeState::EvictionRequired)
    );
    assert!(
        !first
            .actions
            .iter()
            .any(|a| matches!(a, Action::Cordon { .. }))
    );
    let (last, _) = run(&mut cluster, 20, |c| c.nodes[1].upgraded_to(NEW_REVISION));
    assert!(node(&cluster, 1).unschedulable, "the admin's cordon stays");
    assert!(
        !last
            .actions
            .iter()
            .any(|a| matches!(a, Action::Uncordon { .. }))
    );
    let (last, _) = run(&mut cluster, 5, |_| false);
    assert_eq!(node(&cluster, 0).state, Some(UpgradeState::UpgradeRequired));
    assert_eq!(
        last.summary.blocked,
        Some(Blocked::BudgetFull {
            unavailable: 1,
            max_unavailable: 1
        })
    );

    // Once the admin uncordons, the rest goes one node at a time.
    cluster.nodes[1].unschedulable = false;
    cluster.nodes[1].admin_cordoned = false;
    run(&mut cluster, 60, |c| {
        c.nodes.iter().all(|n| n.upgraded_to(NEW_REVISION))
    });
    assert!(
        cluster
            .nodes
            .iter()
            .all(|n| n.upgraded_to(NEW_REVISION) && !n.unschedulable)
    );
    assert_eq!(cluster.stats().peak_after_operator, 1);
}

#[test]
fn a_non_interruptible_pod_is_waited_for_then_the_node_fails_and_is_released() {
    let stuck = NodeSpec {
        pods: vec![
            PodSpec {
                non_interruptible: true,
                runs_for: None,
            },
            PodSpec::default(),
        ],
        ..NodeSpec::simple(0, 1, 1, 1)
    };
    let mut cluster = Cluster::new(
        group(vec![stuck], 3),
        policy(count(1), 1, 3),
        Faults::default(),
        2,
    );
    let (_, steps) = run(&mut cluster, 60, |c| {
        c.nodes[0].state == Some(UpgradeState::UpgradeFailed)
    });
    let n = node(&cluster, 0);
    assert_eq!(n.state, Some(UpgradeState::UpgradeFailed));
    assert!(
        steps > usize::try_from(EVICTION_TIMEOUT).unwrap(),
        "failed after {steps} steps"
    );
    assert!(
        n.reason
            .starts_with("eviction-required timed out after 30s"),
        "{}",
        n.reason
    );
    assert!(
        n.reason
            .contains("non-interruptible pods still running: ns0/app-000-0"),
        "{}",
        n.reason
    );
    assert_eq!(
        n.afs.len(),
        1,
        "the evictable pod left, the other one was never evicted"
    );
    assert!(n.behind(NEW_REVISION), "no module swap");
    assert!(
        !n.unschedulable,
        "before the swap a failed node is released"
    );

    // The failure does not stall the others, and the failed node is not retried.
    run(&mut cluster, 40, |c| {
        c.nodes[1..].iter().all(|n| n.upgraded_to(NEW_REVISION))
    });
    assert!(
        cluster.nodes[1..]
            .iter()
            .all(|n| n.upgraded_to(NEW_REVISION))
    );
    assert_eq!(node(&cluster, 0).state, Some(UpgradeState::UpgradeFailed));
}

#[test]
fn a_failure_after_the_swap_keeps_the_cordon_and_its_budget_until_a_new_revision() {
    let broken = NodeSpec {
        validate_ticks: 1000,
        ..NodeSpec::simple(1, 1, 1, 1)
    };
    let faults = Faults {
        revision_change_at: Some(80),
        ..Faults::default()
    };
    let mut cluster = Cluster::new(group(vec![broken], 4), policy(count(2), 2, 4), faults, 3);
    run(&mut cluster, 60, |c| {
        c.nodes[0].state == Some(UpgradeState::UpgradeFailed)
    });
    let n = node(&cluster, 0);
    assert!(
        n.reason
            .starts_with("validation-required timed out after 20s"),
        "{}",
        n.reason
    );
    assert!(
        n.reason.contains("kmod pod not Ready at revision r2"),
        "{}",
        n.reason
    );
    assert!(
        n.unschedulable && n.cordoned_by_operator,
        "its module is unvalidated: it stays cordoned"
    );

    // It holds one unit of the budget of 2 and no slot: the others go one at a time.
    let (last, _) = run(&mut cluster, 19, |c| {
        c.nodes[1..].iter().all(|n| n.upgraded_to(NEW_REVISION))
    });
    assert!(
        cluster.nodes[1..]
            .iter()
            .all(|n| n.upgraded_to(NEW_REVISION))
    );
    assert_eq!(cluster.stats().peak_after_operator, 2);
    assert_eq!(last.summary.in_progress, 0);
    assert_eq!(last.summary.unavailable, 1);

    // Not retried at the same revision; retried (and freed) when the revision moves on.
    assert_eq!(node(&cluster, 0).state, Some(UpgradeState::UpgradeFailed));
    cluster.nodes[0].spec.validate_ticks = 1;
    run(&mut cluster, 100, |c| {
        c.nodes.iter().all(|n| n.upgraded_to("r3"))
    });
    assert!(
        cluster
            .nodes
            .iter()
            .all(|n| n.upgraded_to("r3") && !n.unschedulable)
    );
}

#[test]
fn a_module_swap_waits_for_a_pod_that_lands_on_the_cordoned_node() {
    // Without pods the node reaches module-swap-required in its first pass, and waits
    // there for its cordon to be observed.
    let mut cluster = Cluster::new(
        vec![NodeSpec::simple(0, 1, 1, 1)],
        policy(count(1), 1, 1),
        Faults::default(),
        4,
    );
    cluster.step().unwrap();
    assert_eq!(
        node(&cluster, 0).state,
        Some(UpgradeState::ModuleSwapRequired)
    );
    // A pod tolerating the cordon lands before the swap.
    cluster.nodes[0].afs.push(SimAfsPod {
        namespace: "ns".into(),
        name: "tolerating".into(),
        non_interruptible: false,
        runs_for: None,
        terminating: false,
        stuck: false,
        countdown: 0,
    });
    let plan = cluster.step().unwrap();
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::DeletePod { .. })),
        "{plan:?}"
    );
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Evict { pod, .. } if pod == "tolerating"))
    );
    let plan = cluster.step().unwrap();
    assert_eq!(
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::DeletePod { .. }))
            .count(),
        2
    );
    run(&mut cluster, 20, |c| c.nodes[0].upgraded_to(NEW_REVISION));
    assert!(cluster.nodes[0].upgraded_to(NEW_REVISION));
}

#[test]
fn a_revision_change_during_validation_swaps_again_without_failing() {
    // Pods replaced at t=1, the new ones Ready at t=5; the revision moves on at t=3.
    let faults = Faults {
        revision_change_at: Some(3),
        ..Faults::default()
    };
    let mut cluster = Cluster::new(
        vec![NodeSpec::simple(1, 1, 1, 3)],
        policy(count(1), 1, 1),
        faults,
        9,
    );
    for _ in 0..3 {
        cluster.step().unwrap();
    }
    assert_eq!(
        node(&cluster, 0).state,
        Some(UpgradeState::ValidationRequired)
    );
    let plan = cluster.step().unwrap();
    assert!(
        matches!(plan.actions.first(), Some(Action::SetState { state: UpgradeState::ModuleSwapRequired, revision, .. }) if revision == "r3"),
        "{plan:?}"
    );
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::DeletePod { .. }))
    );
    let (_, steps) = run(&mut cluster, 10, |c| c.nodes[0].upgraded_to("r3"));
    assert!(cluster.nodes[0].upgraded_to("r3"), "{:?}", cluster.nodes[0]);
    assert!(steps <= 6);
}

#[test]
fn every_prefix_of_every_plan_is_safe() {
    // An operator crash after any action of any pass: the run goes on from what was
    // recorded and still converges without breaking an invariant.
    let nodes = vec![
        NodeSpec::simple(2, 2, 1, 2),
        NodeSpec {
            admin_cordoned: true,
            ..NodeSpec::simple(1, 1, 2, 1)
        },
        NodeSpec::simple(0, 1, 1, 1),
        NodeSpec {
            pods: vec![PodSpec {
                non_interruptible: true,
                runs_for: Some(3),
            }],
            ..NodeSpec::simple(1, 1, 1, 1)
        },
    ];
    let base = Cluster::new(nodes, policy(count(2), 2, 4), Faults::default(), 5);
    let mut reference = base.clone();
    let mut plans = Vec::new();
    while !reference.nodes.iter().all(|n| n.upgraded_to(NEW_REVISION)) {
        plans.push(reference.step().unwrap());
        assert!(plans.len() < 100);
    }
    for (pass, full) in plans.iter().enumerate() {
        for cut in 0..full.actions.len() {
            let mut c = base.clone();
            for _ in 0..pass {
                c.step().unwrap();
            }
            let prefix = Plan {
                actions: full.actions[..cut].to_vec(),
                summary: full.summary.clone(),
            };
            c.execute(&prefix)
                .unwrap_or_else(|v| panic!("pass {pass} cut {cut}: {v}"));
            c.advance();
            run(&mut c, 100, |c| {
                c.nodes.iter().all(|n| n.upgraded_to(NEW_REVISION))
            });
            assert!(
                c.nodes.iter().all(|n| n.upgraded_to(NEW_REVISION)),
                "pass {pass} cut {cut}"
            );
            assert!(c.nodes[1].unschedulable && !c.nodes[0].unschedulable);
        }
    }
}

#[test]
fn paused_starts_nothing_but_finishes_what_runs() {
    let mut cluster = Cluster::new(
        group(vec![], 4),
        policy(count(2), 2, 4),
        Faults::default(),
        6,
    );
    cluster.step().unwrap();
    assert_eq!(cluster.in_progress(), 2);
    cluster.set_paused(true);
    let (last, _) = run(&mut cluster, 30, |_| false);
    assert_eq!(
        cluster
            .nodes
            .iter()
            .filter(|n| n.upgraded_to(NEW_REVISION))
            .count(),
        2
    );
    assert_eq!(cluster.in_progress(), 0);
    assert_eq!(last.summary.blocked, Some(Blocked::Paused));
    assert_eq!(last.summary.waiting, 2);
    cluster.set_paused(false);
    run(&mut cluster, 30, |c| {
        c.nodes.iter().all(|n| n.upgraded_to(NEW_REVISION))
    });
    assert!(cluster.nodes.iter().all(|n| n.upgraded_to(NEW_REVISION)));
}

#[test]
fn a_not_ready_node_in_progress_times_out_and_frees_its_slot() {
    let mut cluster = Cluster::new(
        group(vec![], 3),
        policy(count(1), 1, 3),
        Faults::default(),
        7,
    );
    cluster.step().unwrap();
    assert_eq!(
        node(&cluster, 0).state,
        Some(UpgradeState::EvictionRequired)
    );
    cluster.nodes[0].ready = false; // down for good
    let (_, steps) = run(&mut cluster, 40, |c| {
        c.nodes[0].state == Some(UpgradeState::UpgradeFailed)
    });
    assert!(steps > 30);
    assert!(
        node(&cluster, 0).reason.ends_with("node NotReady"),
        "{}",
        node(&cluster, 0).reason
    );
    // Still NotReady, it keeps the budget of 1: nobody else may start.
    let (last, _) = run(&mut cluster, 5, |_| false);
    assert_eq!(
        last.summary.blocked,
        Some(Blocked::BudgetFull {
            unavailable: 1,
            max_unavailable: 1
        })
    );
    cluster.nodes[0].ready = true;
    run(&mut cluster, 40, |c| {
        c.nodes[1..].iter().all(|n| n.upgraded_to(NEW_REVISION))
    });
    assert!(
        cluster.nodes[1..]
            .iter()
            .all(|n| n.upgraded_to(NEW_REVISION))
    );
}

#[test]
fn percent_budget_is_rounded_up_and_used() {
    // 25% of 10 nodes is 2.5: three nodes may be out at once.
    let mut cluster = Cluster::new(
        group(vec![], 10),
        policy(IntOrString::String("25%".into()), 4, 10),
        Faults::default(),
        8,
    );
    let first = cluster.step().unwrap();
    assert_eq!(
        (first.summary.started, first.summary.max_unavailable),
        (3, 3)
    );
    run(&mut cluster, 60, |c| {
        c.nodes.iter().all(|n| n.upgraded_to(NEW_REVISION))
    });
    assert!(cluster.nodes.iter().all(|n| n.upgraded_to(NEW_REVISION)));
    assert_eq!(cluster.stats().peak_after_operator, 3);
}

#[test]
fn a_node_without_state_and_no_stale_pods_is_only_marked_done() {
    let view_node = NodeView {
        name: "n".into(),
        ready: true,
        kmod_pod: Some(PodView {
            name: "k".into(),
            revision: Some("x".into()),
            ready: true,
            terminating: false,
        }),
        ..NodeView::default()
    };
    let view = GroupView {
        desired_revision: "x",
        nodes: vec![view_node.clone()],
        now: 0,
    };
    let p = plan(&view, &policy(count(1), 1, 1));
    assert!(
        matches!(
            p.actions.as_slice(),
            [Action::SetState {
                state: UpgradeState::UpgradeDone,
                ..
            }]
        ),
        "{p:?}"
    );
    // No DaemonSet pod at all (kernel without mapping): nothing to do.
    let bare = NodeView {
        kmod_pod: None,
        ..view_node
    };
    let view = GroupView {
        desired_revision: "x",
        nodes: vec![bare],
        now: 0,
    };
    assert!(plan(&view, &policy(count(1), 1, 1)).actions.is_empty());
}
