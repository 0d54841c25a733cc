//! One node's walk through the states within one pass: as many steps as the observed
//! conditions allow, each emitting the actions that make it true.

use super::{
    Action, AfsPod, NodeView, PodView, Policy, Tally, UpgradeState, daemon_pods, unavailable,
};
use UpgradeState::{
    CordonRequired, EvictionRequired, ModuleSwapRequired, UncordonRequired, UpgradeDone,
    UpgradeFailed, UpgradeRequired, ValidationRequired, WaitForUnmount,
};

/// More than the longest forward path, so a pass always ends.
const MAX_STEPS: usize = 12;
/// Pods named in a failure reason before "and N more" (annotations stay short).
const MAX_NAMED: usize = 5;

#[derive(Debug)]
pub(super) struct Env<'a> {
    pub(super) desired: &'a str,
    pub(super) now: i64,
    pub(super) policy: &'a Policy,
}

/// Where a node's actions of this pass leave it.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) state: Option<UpgradeState>,
    cordoned: bool,
    uncordoned: bool,
}

impl Outcome {
    /// Whether the node counts against `maxUnavailable` once the actions are executed.
    pub(super) fn unavailable(&self, node: &NodeView) -> bool {
        let unschedulable = (node.unschedulable || self.cordoned) && !self.uncordoned;
        let by_operator = (node.cordoned_by_operator || self.cordoned) && !self.uncordoned;
        unavailable(node.ready, unschedulable, by_operator, self.state)
    }
}

/// Advances a node that is not waiting for a slot (in progress, failed, or not needing
/// the upgrade), appending its actions to `actions`.
pub(super) fn advance(
    node: &NodeView,
    state: Option<UpgradeState>,
    env: &Env<'_>,
    actions: &mut Vec<Action>,
) -> Outcome {
    Walk::new(node, state, env, actions).run()
}

/// Claims a slot for `node` and advances it as far as it goes.
pub(super) fn start(
    node: &NodeView,
    env: &Env<'_>,
    tally: &Tally,
    actions: &mut Vec<Action>,
) -> Outcome {
    let mut walk = Walk::new(node, node.state, env, actions);
    let p = env.policy;
    walk.set(
        CordonRequired,
        format!(
            "started toward revision {} ({}/{} unavailable, {}/{} upgrading before)",
            env.desired, tally.unavailable, p.max_unavailable, tally.in_progress, p.max_parallel
        ),
    );
    walk.run()
}

/// Marks a node that needs the upgrade and waits for a slot (or for Ready).
pub(super) fn wait(node: &NodeView, env: &Env<'_>, actions: &mut Vec<Action>) -> Outcome {
    let mut walk = Walk::new(node, node.state, env, actions);
    if node.state != Some(UpgradeRequired) {
        let reason = match (node.state, &node.target_revision) {
            (Some(UpgradeFailed), Some(target)) => {
                format!(
                    "retrying: failed toward revision {target}, desired is now {}",
                    env.desired
                )
            }
            _ => format!(
                "runs revision {}, desired {}",
                running_revisions(node),
                env.desired
            ),
        };
        walk.set(UpgradeRequired, reason);
    }
    walk.out
}

enum Next {
    Stay,
    Go(UpgradeState, String),
}

struct Walk<'a, 'v> {
    node: &'a NodeView,
    env: &'a Env<'a>,
    /// The plan's actions; this node's start at `first`.
    actions: &'v mut Vec<Action>,
    first: usize,
    out: Outcome,
    /// When the current state was entered: observed for the first, `now` after a step.
    since: Option<i64>,
}

impl<'a, 'v> Walk<'a, 'v> {
    fn new(
        node: &'a NodeView,
        state: Option<UpgradeState>,
        env: &'a Env<'a>,
        actions: &'v mut Vec<Action>,
    ) -> Self {
        let out = Outcome {
            state,
            cordoned: false,
            uncordoned: false,
        };
        let first = actions.len();
        Self {
            node,
            env,
            actions,
            first,
            out,
            since: node.state_since,
        }
    }

    fn run(mut self) -> Outcome {
        if let Some(state) = self.out.state.filter(|s| s.is_in_progress())
            && self.since.is_none()
        {
            // Without a start time the phase could never time out: restart its clock.
            self.set(
                state,
                format!("{state}: recorded start time missing, clock restarted"),
            );
        }
        for _ in 0..MAX_STEPS {
            match self.step() {
                Next::Stay => break,
                Next::Go(state, reason) => self.set(state, reason),
            }
        }
        self.out
    }

    /// Records a transition. Consecutive transitions with nothing between them become the
    /// last one: fewer writes, and every prefix of the actions stays consistent.
    fn set(&mut self, state: UpgradeState, reason: String) {
        if self.actions.len() > self.first
            && matches!(self.actions.last(), Some(Action::SetState { .. }))
        {
            self.actions.pop();
        }
        self.actions.push(Action::SetState {
            node: self.node.name.clone(),
            state,
            reason,
            revision: self.env.desired.to_owned(),
        });
        self.out.state = Some(state);
        self.since = Some(self.env.now);
    }

    fn step(&mut self) -> Next {
        let Some(state) = self.out.state else {
            return self.idle();
        };
        if let Some(limit) = self.timeout(state)
            && self.since.is_some_and(|since| self.env.now - since > limit)
        {
            return self.fail(state, limit);
        }
        if state.is_in_progress() && state != UncordonRequired && !self.node.ready {
            // Nothing reported by a NotReady node can be trusted; only its clock runs.
            return Next::Stay;
        }
        match state {
            UpgradeRequired | UpgradeDone => self.idle(),
            UpgradeFailed => Next::Stay,
            CordonRequired => self.cordon(),
            EvictionRequired => self.evict(),
            WaitForUnmount => self.wait_for_unmount(),
            ModuleSwapRequired => self.swap(),
            ValidationRequired => self.validate(),
            UncordonRequired => self.uncordon(),
        }
    }

    fn timeout(&self, state: UpgradeState) -> Option<i64> {
        let p = self.env.policy;
        match state {
            CordonRequired | EvictionRequired => Some(p.eviction_timeout),
            WaitForUnmount => Some(p.unmount_timeout),
            ModuleSwapRequired => Some(p.module_swap_timeout),
            ValidationRequired => Some(p.validation_timeout),
            UpgradeRequired | UncordonRequired | UpgradeDone | UpgradeFailed => None,
        }
    }

    /// Not waiting for a slot and not in progress: lift a leftover operator cordon and
    /// record `upgrade-done` for nodes whose pods run the desired revision.
    fn idle(&mut self) -> Next {
        self.release();
        let has_pods = daemon_pods(self.node).next().is_some();
        if has_pods && self.out.state != Some(UpgradeDone) {
            return Next::Go(UpgradeDone, format!("at revision {}", self.env.desired));
        }
        Next::Stay
    }

    fn cordon(&mut self) -> Next {
        let reason = if self.node.unschedulable && !self.node.cordoned_by_operator {
            "already cordoned by someone else, so it stays cordoned afterwards"
        } else {
            "cordoned"
        };
        self.recordon();
        Next::Go(EvictionRequired, reason.to_owned())
    }

    fn evict(&mut self) -> Next {
        self.recordon();
        self.drain();
        if self.node.afs_pods.iter().all(|p| p.terminating) {
            return Next::Go(
                WaitForUnmount,
                "every pod using the driver's volumes is leaving".to_owned(),
            );
        }
        Next::Stay
    }

    fn wait_for_unmount(&mut self) -> Next {
        self.recordon();
        self.drain();
        if self.unused() {
            return Next::Go(
                ModuleSwapRequired,
                "no pod uses the driver's volumes, none is published".to_owned(),
            );
        }
        Next::Stay
    }

    fn swap(&mut self) -> Next {
        let old: Vec<&PodView> = self.old_pods().collect();
        if old.is_empty() {
            return Next::Go(
                ValidationRequired,
                "old kmod and CSI node pods are gone".to_owned(),
            );
        }
        let live = old.iter().filter(|p| !p.terminating);
        if self.node.ready && self.node.unschedulable && self.unused() {
            // The safety gate, on this pass's observation: a cordon planned in this
            // pass does not count until it is seen.
            for pod in live {
                let (node, pod) = (self.node.name.clone(), pod.name.clone());
                self.actions.push(Action::DeletePod { node, pod });
            }
        } else {
            // Something landed since the drain (or the cordon is not observed yet).
            self.recordon();
            self.drain();
        }
        Next::Stay
    }

    fn validate(&mut self) -> Next {
        if self.old_pods().any(|p| !p.terminating) {
            // The DaemonSet recreated a pod at a revision that is no longer desired.
            return Next::Go(
                ModuleSwapRequired,
                format!(
                    "desired revision is now {}: replacing pods again",
                    self.env.desired
                ),
            );
        }
        if self.validation_gaps().is_empty() {
            return Next::Go(
                UncordonRequired,
                format!(
                    "kmod and CSI node pods Ready at revision {}, module loaded, driver registered",
                    self.env.desired
                ),
            );
        }
        Next::Stay
    }

    fn uncordon(&mut self) -> Next {
        self.release();
        Next::Go(UpgradeDone, format!("at revision {}", self.env.desired))
    }

    /// Times out `state`. Before the swap the node still serves at its old revision, so
    /// the operator's cordon is lifted; from the swap on it stays cordoned.
    fn fail(&mut self, state: UpgradeState, limit: i64) -> Next {
        let blockers = if self.node.ready {
            self.blockers(state)
        } else {
            "node NotReady".to_owned()
        };
        if matches!(state, CordonRequired | EvictionRequired | WaitForUnmount) {
            self.release();
        }
        Next::Go(
            UpgradeFailed,
            format!(
                "{state} timed out after {limit}s toward revision {}: {blockers}",
                self.env.desired
            ),
        )
    }

    /// What kept the node in `state`, for the failure reason.
    fn blockers(&self, state: UpgradeState) -> String {
        let pods = &self.node.afs_pods;
        let mut parts = Vec::new();
        let mut add = |what: &str, found: Vec<&AfsPod>| {
            if !found.is_empty() {
                parts.push(format!("{what} {}", name_list(&found)));
            }
        };
        add(
            "non-interruptible pods still running:",
            pods.iter()
                .filter(|p| p.non_interruptible && !p.terminating)
                .collect(),
        );
        add(
            "eviction refused or pending for",
            pods.iter()
                .filter(|p| !p.non_interruptible && !p.terminating)
                .collect(),
        );
        add(
            "pods still terminating:",
            pods.iter().filter(|p| p.terminating).collect(),
        );
        if let Some(n @ 1..) = self.node.published_volumes {
            parts.push(format!("{n} volumes still published"));
        }
        match state {
            ModuleSwapRequired => {
                let old: Vec<String> = self.old_pods().map(|p| p.name.clone()).collect();
                if !old.is_empty() {
                    parts.push(format!("old pods not gone: {}", old.join(", ")));
                }
                if !self.node.unschedulable {
                    parts.push("node not cordoned".to_owned());
                }
            }
            ValidationRequired => parts.extend(self.validation_gaps()),
            _ => {}
        }
        if parts.is_empty() {
            "no blocker observed".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// Evicts every pod using the driver's volumes that may be evicted and is not leaving.
    fn drain(&mut self) {
        for pod in self
            .node
            .afs_pods
            .iter()
            .filter(|p| !p.terminating && !p.non_interruptible)
        {
            self.actions.push(Action::Evict {
                node: self.node.name.clone(),
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
            });
        }
    }

    /// Cordons again a node in progress found schedulable (the slot already counts it).
    fn recordon(&mut self) {
        if !self.node.unschedulable && !self.out.cordoned {
            self.actions.push(Action::Cordon {
                node: self.node.name.clone(),
            });
            self.out.cordoned = true;
        }
    }

    /// Lifts the operator's own cordon; an admin's stays.
    fn release(&mut self) {
        if self.node.cordoned_by_operator && !self.out.uncordoned {
            self.actions.push(Action::Uncordon {
                node: self.node.name.clone(),
            });
            self.out.uncordoned = true;
        }
    }

    /// No pod uses the driver's volumes (terminating ones included) and none is
    /// published, as far as the node reports.
    fn unused(&self) -> bool {
        self.node.afs_pods.is_empty() && self.node.published_volumes.unwrap_or(0) == 0
    }

    fn old_pods(&self) -> impl Iterator<Item = &'a PodView> + use<'a> {
        let desired = self.env.desired;
        daemon_pods(self.node).filter(move |p| p.revision.as_deref() != Some(desired))
    }

    /// What validation still waits for; empty once the node is validated.
    fn validation_gaps(&self) -> Vec<String> {
        let n = self.node;
        let mut gaps = Vec::new();
        for (what, pod) in [("kmod", &n.kmod_pod), ("CSI node", &n.csi_pod)] {
            let ok = pod.as_ref().is_some_and(|p| {
                p.ready && !p.terminating && p.revision.as_deref() == Some(self.env.desired)
            });
            if !ok {
                gaps.push(format!(
                    "{what} pod not Ready at revision {}",
                    self.env.desired
                ));
            }
        }
        if !n.module_ready {
            gaps.push("module not reported ready".to_owned());
        }
        if !n.driver_registered {
            gaps.push("driver not registered in CSINode".to_owned());
        }
        gaps
    }
}

fn name_list(pods: &[&AfsPod]) -> String {
    let mut names: Vec<String> = pods.iter().take(MAX_NAMED).map(|p| p.key()).collect();
    if pods.len() > MAX_NAMED {
        names.push(format!("and {} more", pods.len() - MAX_NAMED));
    }
    names.join(", ")
}

/// `r1`, or `r1+r2` when the kmod and CSI node pods differ.
fn running_revisions(node: &NodeView) -> String {
    fn rev(pod: Option<&PodView>) -> Option<&str> {
        pod.map(|p| p.revision.as_deref().unwrap_or("(none)"))
    }
    match (rev(node.kmod_pod.as_ref()), rev(node.csi_pod.as_ref())) {
        (Some(k), Some(c)) if k != c => format!("{k}+{c}"),
        (Some(r), _) | (None, Some(r)) => r.to_owned(),
        (None, None) => "(none)".to_owned(),
    }
}
