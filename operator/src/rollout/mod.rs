//! The rolling-update planner (pure): observed nodes, pods and budgets -> actions.
//!
//! The controller observes one node group (the nodes of one SpecialResource), builds a
//! [`GroupView`], calls [`plan`] and executes the returned [`Action`]s in order. Nothing
//! here talks to the API server or keeps memory between calls: every decision comes from
//! the view, so an operator restart resumes a rollout from the states recorded on the
//! nodes.
//!
//! # Per-node states (label [`UPGRADE_STATE_LABEL`](crate::labels::UPGRADE_STATE_LABEL))
//!
//! ```text
//! upgrade-required -> cordon-required -> eviction-required -> wait-for-unmount
//!   -> module-swap-required -> validation-required -> uncordon-required -> upgrade-done
//! any of cordon-required ..= validation-required -> upgrade-failed (phase timeout)
//! validation-required -> module-swap-required (the desired revision moved on meanwhile)
//! ```
//!
//! * A node *needs upgrade* when its kmod or CSI node pod runs another revision than the
//!   desired one. Nodes without either pod are left to their DaemonSets.
//! * Starting a node (leaving `upgrade-required`) is the only step limited by the
//!   budgets; the other steps only advance nodes that already hold a slot. A pass takes
//!   a node through as many states as its observed conditions allow.
//! * The module swap (deleting the old kmod and CSI node pods) happens only when the node
//!   is Ready, observed cordoned, runs no pod using the driver's volumes and reports no
//!   published volume (or does not report the count). This is re-checked on every pass.
//! * A NotReady node in progress makes no step (its pods and counts cannot be trusted)
//!   but its phase clock runs, so a dead node fails and frees its slot.
//! * Failure before the swap (`cordon-required`, `eviction-required`,
//!   `wait-for-unmount`) releases the node: the operator's cordon is lifted, the node
//!   keeps serving at its old revision. Failure from `module-swap-required` on keeps the
//!   node cordoned: its module may be gone or unvalidated. That node occupies one unit of
//!   `maxUnavailable` but no `maxParallel` slot.
//! * A failed node is retried when the desired revision differs from its recorded
//!   target ([`UPGRADE_TARGET_ANNOTATION`]), or when an admin removes its state label.
//! * The operator uncordons only nodes it cordoned itself
//!   ([`CORDONED_BY_OPERATOR_ANNOTATION`](crate::labels::CORDONED_BY_OPERATOR_ANNOTATION)).
//!   An operator cordon left on a node with no upgrade in progress (an admin removed
//!   the state label, or the node no longer needs the upgrade) is lifted.
//!
//! # Executing a plan
//!
//! Execute the actions in order and stop at the first one that fails, except
//! [`Action::Evict`]: a refused eviction (HTTP 429 from a PodDisruptionBudget) is an
//! expected answer, the next pass asks again and no later action depends on it. Actions
//! are ordered so that every prefix is a consistent state: a node's slot is claimed
//! (`SetState`) before it is cordoned, cordoned before its pods are evicted, and nodes
//! that release budget come before nodes that take it.

mod machine;
mod policy;
mod selector;
pub mod sim;

use std::fmt;

pub use policy::{Policy, PolicyError};
pub use selector::{SelectorError, matches_selector, validate_selector};

/// On nodes: the desired revision of the node's last state change. A failed node whose
/// target differs from the group's desired revision is retried.
pub const UPGRADE_TARGET_ANNOTATION: &str = "afs.csi.auristor.com/upgrade-target-revision";

/// The rollout state of one node, stored in its upgrade-state label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UpgradeState {
    /// Runs an old revision; waits for a budget slot.
    UpgradeRequired,
    /// Holds a slot; the cordon comes next.
    CordonRequired,
    /// Cordoned; pods using the driver's volumes are being evicted (non-interruptible
    /// ones are waited for).
    EvictionRequired,
    /// Every such pod is leaving; waiting until none remains and no volume is published.
    WaitForUnmount,
    /// Nothing uses the module; the old kmod and CSI node pods are being replaced.
    ModuleSwapRequired,
    /// Old pods gone; waiting for the new ones to be Ready, the module loaded and the
    /// driver registered.
    ValidationRequired,
    /// Validated; the operator's cordon is lifted next.
    UncordonRequired,
    UpgradeDone,
    /// A phase timed out; the reason annotation names what blocked it.
    UpgradeFailed,
}

impl UpgradeState {
    pub const ALL: [Self; 9] = [
        Self::UpgradeRequired,
        Self::CordonRequired,
        Self::EvictionRequired,
        Self::WaitForUnmount,
        Self::ModuleSwapRequired,
        Self::ValidationRequired,
        Self::UncordonRequired,
        Self::UpgradeDone,
        Self::UpgradeFailed,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            Self::UpgradeRequired => "upgrade-required",
            Self::CordonRequired => "cordon-required",
            Self::EvictionRequired => "eviction-required",
            Self::WaitForUnmount => "wait-for-unmount",
            Self::ModuleSwapRequired => "module-swap-required",
            Self::ValidationRequired => "validation-required",
            Self::UncordonRequired => "uncordon-required",
            Self::UpgradeDone => "upgrade-done",
            Self::UpgradeFailed => "upgrade-failed",
        }
    }

    /// Total: an unknown value (a typo, or a state of a newer operator) reads as
    /// `upgrade-required`. That is safe because it claims nothing: the node holds no
    /// slot, is counted unavailable only if it is (cordoned or NotReady), and if it needs
    /// the upgrade it restarts from the cordon, where every check is made on observed
    /// pods and volumes, never on the label.
    pub fn from_label(value: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| s.as_label() == value)
            .unwrap_or(Self::UpgradeRequired)
    }

    /// Holds a `maxParallel` slot and makes the node unavailable.
    pub fn is_in_progress(self) -> bool {
        !matches!(
            self,
            Self::UpgradeRequired | Self::UpgradeDone | Self::UpgradeFailed
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for UpgradeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_label())
    }
}

/// One node group as observed at `now`.
#[derive(Debug, Clone)]
pub struct GroupView<'a> {
    /// The revision (hash of module and driver specs) the DaemonSet templates carry.
    pub desired_revision: &'a str,
    pub nodes: Vec<NodeView>,
    /// Unix seconds.
    pub now: i64,
}

/// What the planner needs to know about one node.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    /// The NodeReady condition is True.
    pub ready: bool,
    /// `spec.unschedulable`, whoever set it.
    pub unschedulable: bool,
    /// The cordoned-by-operator annotation is "true".
    pub cordoned_by_operator: bool,
    /// The upgrade-state label ([`UpgradeState::from_label`]); `None` without the label.
    pub state: Option<UpgradeState>,
    /// The upgrade-state-since annotation (unix seconds); `None` when missing or
    /// unparsable, which restarts the phase clock.
    pub state_since: Option<i64>,
    /// The [`UPGRADE_TARGET_ANNOTATION`].
    pub target_revision: Option<String>,
    /// The node's pod of the kmod DaemonSet. While an old pod terminates and a new one
    /// starts, pass the old one: the swap is complete only once it is gone.
    pub kmod_pod: Option<PodView>,
    /// The node's pod of the CSI node DaemonSet (same rule).
    pub csi_pod: Option<PodView>,
    /// Pods on this node using volumes of the driver (PVC-backed or inline), terminating
    /// ones included.
    pub afs_pods: Vec<AfsPod>,
    /// kmod-manager's published-volumes annotation; `None` when unknown.
    pub published_volumes: Option<u32>,
    /// kmod-manager's ready label is "true".
    pub module_ready: bool,
    /// The node's CSINode lists the driver.
    pub driver_registered: bool,
}

/// A DaemonSet pod of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// The revision label; `None` counts as an old revision.
    pub revision: Option<String>,
    /// The pod's Ready condition is True.
    pub ready: bool,
    /// Has a deletion timestamp.
    pub terminating: bool,
}

/// A pod using volumes of the driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfsPod {
    pub namespace: String,
    pub name: String,
    /// Matches `rollout.podNonInterruptLabels` ([`matches_selector`]): never evicted.
    pub non_interruptible: bool,
    /// Has a deletion timestamp.
    pub terminating: bool,
}

impl AfsPod {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One step for the controller to execute (see the module docs for the order rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Set the upgrade-state label to `state`, the since annotation to the current time,
    /// the reason annotation to `reason` and [`UPGRADE_TARGET_ANNOTATION`] to `revision`.
    SetState {
        node: String,
        state: UpgradeState,
        reason: String,
        revision: String,
    },
    /// Set `spec.unschedulable` and the cordoned-by-operator annotation. If the node is
    /// already unschedulable when patched (an admin was faster), leave both untouched.
    Cordon { node: String },
    /// Clear `spec.unschedulable` and the cordoned-by-operator annotation.
    Uncordon { node: String },
    /// Evict the pod through the Eviction API (PodDisruptionBudgets hold).
    Evict {
        node: String,
        namespace: String,
        pod: String,
    },
    /// Delete a DaemonSet pod of the node (kmod or CSI node, in the group's namespace);
    /// the OnDelete DaemonSet recreates it at its current revision.
    DeletePod { node: String, pod: String },
}

impl Action {
    pub fn node(&self) -> &str {
        match self {
            Self::SetState { node, .. }
            | Self::Cordon { node }
            | Self::Uncordon { node }
            | Self::Evict { node, .. }
            | Self::DeletePod { node, .. } => node,
        }
    }
}

/// The planner's answer: actions to execute in order, and the group's figures once they
/// are executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub summary: Summary,
}

/// The group after the plan is executed, for status and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: u32,
    pub states: StateCounts,
    pub unavailable: u32,
    pub in_progress: u32,
    pub max_unavailable: u32,
    pub max_parallel: u32,
    /// Nodes started by this plan.
    pub started: u32,
    /// Nodes that need the upgrade and were not started (NotReady ones included).
    pub waiting: u32,
    /// Why waiting nodes were not started, if any waits.
    pub blocked: Option<Blocked>,
}

/// Nodes per state label; `none` counts nodes without one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    counts: [u32; UpgradeState::ALL.len()],
    pub none: u32,
}

impl StateCounts {
    pub fn get(&self, state: UpgradeState) -> u32 {
        self.counts[state.index()]
    }

    fn add(&mut self, state: Option<UpgradeState>) {
        match state {
            Some(s) => self.counts[s.index()] += 1,
            None => self.none += 1,
        }
    }
}

/// Why no (further) node was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    Paused,
    ParallelFull {
        in_progress: u32,
        max_parallel: u32,
    },
    BudgetFull {
        unavailable: u32,
        max_unavailable: u32,
    },
    /// Every waiting node is NotReady (they cannot be drained or swapped).
    NotReady {
        nodes: u32,
    },
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Paused => f.write_str("rollout paused"),
            Self::ParallelFull {
                in_progress,
                max_parallel,
            } => {
                write!(
                    f,
                    "{in_progress} nodes upgrading, maxParallel is {max_parallel}"
                )
            }
            Self::BudgetFull {
                unavailable,
                max_unavailable,
            } => {
                write!(
                    f,
                    "{unavailable} nodes unavailable, maxUnavailable is {max_unavailable}"
                )
            }
            Self::NotReady { nodes } => write!(f, "{nodes} waiting nodes are NotReady"),
        }
    }
}

/// Whether the node's kmod or CSI node pod runs another revision than `desired`.
pub fn needs_upgrade(node: &NodeView, desired: &str) -> bool {
    daemon_pods(node).any(|p| p.revision.as_deref() != Some(desired))
}

/// Counts against `maxUnavailable`: NotReady, cordoned by anyone, in progress, or failed
/// and still cordoned by the operator.
pub fn is_unavailable(node: &NodeView) -> bool {
    unavailable(
        node.ready,
        node.unschedulable,
        node.cordoned_by_operator,
        node.state,
    )
}

fn unavailable(
    ready: bool,
    unschedulable: bool,
    by_operator: bool,
    state: Option<UpgradeState>,
) -> bool {
    !ready
        || unschedulable
        || state.is_some_and(UpgradeState::is_in_progress)
        || (state == Some(UpgradeState::UpgradeFailed) && by_operator)
}

fn daemon_pods(node: &NodeView) -> impl Iterator<Item = &PodView> {
    node.kmod_pod.iter().chain(node.csi_pod.iter())
}

/// The state the planner acts on: a failed node aiming at another revision than the
/// desired one is treated as fresh, which retries it.
fn effective_state(node: &NodeView, desired: &str) -> Option<UpgradeState> {
    match node.state {
        Some(UpgradeState::UpgradeFailed)
            if node
                .target_revision
                .as_deref()
                .is_some_and(|t| t != desired) =>
        {
            None
        }
        state => state,
    }
}

/// Waiting for a slot: not in progress, not failed, and needing the upgrade.
fn is_candidate(node: &NodeView, state: Option<UpgradeState>, desired: &str) -> bool {
    matches!(
        state,
        None | Some(UpgradeState::UpgradeRequired | UpgradeState::UpgradeDone)
    ) && needs_upgrade(node, desired)
}

/// Running totals of the group as it will be after the actions planned so far.
#[derive(Debug, Default)]
struct Tally {
    unavailable: u32,
    in_progress: u32,
}

/// Plans one pass over the group. Pure and deterministic: the result depends only on
/// the arguments (node order included: nodes are processed by name).
pub fn plan(view: &GroupView<'_>, policy: &Policy) -> Plan {
    let desired = view.desired_revision;
    let env = machine::Env {
        desired,
        now: view.now,
        policy,
    };
    let mut nodes: Vec<&NodeView> = view.nodes.iter().collect();
    // Node names are unique, so an unstable sort is deterministic too.
    nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));

    let mut actions = Vec::new();
    let mut tally = Tally::default();
    let mut states = StateCounts::default();
    let mut candidates = Vec::new();

    // Nodes holding or not needing a slot first: their actions only release budget.
    for node in nodes {
        let state = effective_state(node, desired);
        if is_candidate(node, state, desired) {
            tally.unavailable += u32::from(is_unavailable(node));
            candidates.push(node);
            continue;
        }
        let outcome = machine::advance(node, state, &env, &mut actions);
        tally.unavailable += u32::from(outcome.unavailable(node));
        tally.in_progress += u32::from(outcome.state.is_some_and(UpgradeState::is_in_progress));
        states.add(outcome.state);
    }

    // Then starts: nodes already out of service cost no budget, so they go first.
    candidates.sort_by_key(|n| !n.unschedulable);
    let (mut started, mut blocked, mut not_ready) = (0, None, 0);
    let mut waiting = Vec::new();
    for node in candidates {
        if !node.ready {
            not_ready += 1;
            waiting.push(node);
            continue;
        }
        match admit(node, &tally, policy) {
            Ok(()) => {
                let outcome = machine::start(node, &env, &tally, &mut actions);
                tally.unavailable += u32::from(!is_unavailable(node));
                tally.in_progress += 1;
                started += 1;
                states.add(outcome.state);
            }
            Err(reason) => {
                blocked.get_or_insert(reason);
                waiting.push(node);
            }
        }
    }
    if blocked.is_none() && not_ready > 0 {
        blocked = Some(Blocked::NotReady { nodes: not_ready });
    }
    for node in &waiting {
        let outcome = machine::wait(node, &env, &mut actions);
        states.add(outcome.state);
    }

    Plan {
        actions,
        summary: Summary {
            total: u32::try_from(view.nodes.len()).unwrap_or(u32::MAX),
            states,
            unavailable: tally.unavailable,
            in_progress: tally.in_progress,
            max_unavailable: policy.max_unavailable,
            max_parallel: policy.max_parallel,
            started,
            waiting: u32::try_from(waiting.len()).unwrap_or(u32::MAX),
            blocked,
        },
    }
}

/// May `node` (Ready, needing the upgrade) take a slot now?
fn admit(node: &NodeView, tally: &Tally, policy: &Policy) -> Result<(), Blocked> {
    if policy.paused {
        return Err(Blocked::Paused);
    }
    if tally.in_progress >= policy.max_parallel {
        return Err(Blocked::ParallelFull {
            in_progress: tally.in_progress,
            max_parallel: policy.max_parallel,
        });
    }
    if !is_unavailable(node) && tally.unavailable >= policy.max_unavailable {
        return Err(Blocked::BudgetFull {
            unavailable: tally.unavailable,
            max_unavailable: policy.max_unavailable,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_unknown_reads_as_upgrade_required() {
        for s in UpgradeState::ALL {
            assert_eq!(UpgradeState::from_label(s.as_label()), s);
        }
        assert_eq!(
            UpgradeState::from_label("drain-required"),
            UpgradeState::UpgradeRequired
        );
        assert_eq!(UpgradeState::from_label(""), UpgradeState::UpgradeRequired);
    }

    #[test]
    fn in_progress_states_are_cordon_through_uncordon() {
        let in_progress: Vec<_> = UpgradeState::ALL
            .into_iter()
            .filter(|s| s.is_in_progress())
            .collect();
        assert_eq!(in_progress.first(), Some(&UpgradeState::CordonRequired));
        assert_eq!(in_progress.last(), Some(&UpgradeState::UncordonRequired));
        assert_eq!(in_progress.len(), 6);
    }
}
