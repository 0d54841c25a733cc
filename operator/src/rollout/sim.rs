//! A deterministic cluster simulator for the planner, shared by the property tests and
//! the rollout benchmark. It is not used by the controller.
//!
//! One tick is one second and one planner pass: [`Cluster::step`] observes the group,
//! calls [`plan`], executes the actions (checking the rollout invariants at every
//! action) and advances the world by one tick. Pods evicted on a node leave after the
//! node's `evict_ticks`; a deleted DaemonSet pod is replaced after `swap_ticks` at the
//! DaemonSet's revision, and the new pod is Ready `validate_ticks` later. Nothing moves
//! on a NotReady node. Faults ([`Faults`]) are drawn from a seeded xorshift generator,
//! so a run is reproducible from its inputs.

use super::{Action, AfsPod, GroupView, NodeView, Plan, PodView, Policy, UpgradeState, plan};

/// Revision the nodes run at the start.
pub const OLD_REVISION: &str = "r1";
/// Revision the group is rolled to.
pub const NEW_REVISION: &str = "r2";
/// Revision of a [`Faults::revision_change_at`] mid-rollout change.
pub const NEXT_REVISION: &str = "r3";

/// A small, seedable xorshift64* generator (no dependency, reproducible runs).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed: never zero, and close seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        let span = u64::from(hi.saturating_sub(lo)) + 1;
        lo + u32::try_from(self.next_u64() % span).unwrap_or(0)
    }

    /// Uniform in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX);
        if n64 == 0 {
            0
        } else {
            usize::try_from(self.next_u64() % n64).unwrap_or(0)
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a fraction in [0, 1).
        #[allow(clippy::cast_precision_loss)]
        let x = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }
}

/// How one node starts and how long its upgrade steps take.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub ready: bool,
    /// Cordoned by an admin before the rollout; must stay cordoned.
    pub admin_cordoned: bool,
    /// Runs kmod and CSI node pods (false: a kernel without mapping).
    pub has_pods: bool,
    /// kmod-manager reports the published-volume count (else `None`).
    pub reports_published: bool,
    pub pods: Vec<PodSpec>,
    /// Ticks an evicted pod takes to leave (>= 1).
    pub evict_ticks: u32,
    /// Ticks until a deleted DaemonSet pod is replaced (>= 1).
    pub swap_ticks: u32,
    /// Ticks until a replacement pod is Ready (>= 1).
    pub validate_ticks: u32,
}

impl NodeSpec {
    /// A Ready node with `pods` evictable pods and the given step durations.
    pub fn simple(pods: usize, evict_ticks: u32, swap_ticks: u32, validate_ticks: u32) -> Self {
        Self {
            ready: true,
            admin_cordoned: false,
            has_pods: true,
            reports_published: true,
            pods: vec![PodSpec::default(); pods],
            evict_ticks,
            swap_ticks,
            validate_ticks,
        }
    }

    /// Ticks from the start of its upgrade to `upgrade-done` when nothing goes wrong and
    /// every pod is evictable: the floor no planner can beat.
    pub fn upgrade_ticks(&self) -> u32 {
        self.evict_ticks.max(1) + self.swap_ticks.max(1) + self.validate_ticks.max(1)
    }
}

/// A pod using the driver's volumes.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub non_interruptible: bool,
    /// A non-interruptible pod ends by itself after this many ticks; `None`: never.
    pub runs_for: Option<u32>,
}

/// Per-tick (or per-action) fault probabilities, active until [`Cluster::clear_faults`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// A Ready node goes NotReady for 1..=8 ticks.
    pub not_ready: f64,
    /// An eviction is refused (a PodDisruptionBudget).
    pub pdb_refusal: f64,
    /// An evicted pod never finishes terminating (until the faults clear).
    pub stuck_pod: f64,
    /// The operator restarts mid-plan: only a random prefix of the plan is executed.
    pub restart: f64,
    /// The rollout is paused (for 10 ticks on average).
    pub pause: f64,
    /// A pod using the driver's volumes appears on a Ready node, cordoned or not
    /// (tolerations, static pods): the swap gate must notice.
    pub stray_pod: f64,
    /// A volume stays published for 1..=3 ticks after its pod left.
    pub lingering_mount: f64,
    /// An admin cordons a schedulable node.
    pub admin_cordon: f64,
    /// At this tick the desired revision (and the DaemonSets) move to [`NEXT_REVISION`].
    pub revision_change_at: Option<i64>,
}

impl Faults {
    /// Every fault at a rate proportional to `rate` (per node per tick for node faults).
    pub fn scaled(rate: f64) -> Self {
        Self {
            not_ready: rate * 0.2,
            pdb_refusal: rate * 2.0,
            stuck_pod: rate * 0.2,
            restart: rate * 2.0,
            pause: rate * 0.5,
            stray_pod: rate,
            lingering_mount: rate * 2.0,
            admin_cordon: rate * 0.05,
            revision_change_at: None,
        }
    }
}

/// A DaemonSet pod in the simulation.
#[derive(Debug, Clone)]
pub struct SimDsPod {
    pub name: String,
    pub revision: String,
    pub ready: bool,
    pub terminating: bool,
    /// Ticks left until replaced (terminating) or Ready (starting).
    pub countdown: u32,
}

/// A pod using the driver's volumes in the simulation.
#[derive(Debug, Clone)]
pub struct SimAfsPod {
    pub namespace: String,
    pub name: String,
    pub non_interruptible: bool,
    pub runs_for: Option<u32>,
    pub terminating: bool,
    pub stuck: bool,
    /// Ticks left until gone, once terminating.
    pub countdown: u32,
}

/// One simulated node (ground truth).
#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub spec: NodeSpec,
    pub ready: bool,
    /// Ticks until a faulted node is Ready again; `None` with `!ready`: down for good.
    pub down_for: Option<u32>,
    pub unschedulable: bool,
    pub cordoned_by_operator: bool,
    pub admin_cordoned: bool,
    pub state: Option<UpgradeState>,
    pub since: Option<i64>,
    pub target: Option<String>,
    pub reason: String,
    pub kmod: Option<SimDsPod>,
    pub csi: Option<SimDsPod>,
    pub afs: Vec<SimAfsPod>,
    /// Ticks a volume stays published after its pod left.
    pub lingering: u32,
}

impl SimNode {
    fn daemon_pods(&self) -> impl Iterator<Item = &SimDsPod> {
        self.kmod.iter().chain(self.csi.iter())
    }

    /// Counts against `maxUnavailable` (the simulator's own, independent definition).
    pub fn unavailable(&self) -> bool {
        !self.ready || self.unschedulable || self.in_progress()
    }

    pub fn in_progress(&self) -> bool {
        self.state.is_some_and(UpgradeState::is_in_progress)
    }

    /// `upgrade-done` with both pods at `revision`.
    pub fn upgraded_to(&self, revision: &str) -> bool {
        self.state == Some(UpgradeState::UpgradeDone)
            && self.spec.has_pods
            && self
                .daemon_pods()
                .all(|p| p.revision == revision && !p.terminating)
    }

    /// Runs pods at another revision than `revision`.
    pub fn behind(&self, revision: &str) -> bool {
        self.daemon_pods().any(|p| p.revision != revision)
    }

    fn published(&self) -> u32 {
        u32::try_from(self.afs.len()).unwrap_or(u32::MAX) + u32::from(self.lingering > 0)
    }

    fn view(&self) -> NodeView {
        let pod = |p: &SimDsPod| PodView {
            name: p.name.clone(),
            revision: Some(p.revision.clone()),
            ready: p.ready,
            terminating: p.terminating,
        };
        let live = |p: &Option<SimDsPod>| p.as_ref().is_some_and(|p| p.ready && !p.terminating);
        NodeView {
            name: self.name.clone(),
            ready: self.ready,
            unschedulable: self.unschedulable,
            cordoned_by_operator: self.cordoned_by_operator,
            state: self.state,
            state_since: self.since,
            target_revision: self.target.clone(),
            kmod_pod: self.kmod.as_ref().map(pod),
            csi_pod: self.csi.as_ref().map(pod),
            afs_pods: self
                .afs
                .iter()
                .map(|p| AfsPod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    non_interruptible: p.non_interruptible,
                    terminating: p.terminating,
                })
                .collect(),
            published_volumes: self.spec.reports_published.then(|| self.published()),
            module_ready: live(&self.kmod),
            driver_registered: live(&self.csi),
        }
    }
}

/// A rollout invariant broken by an action of the planner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("t={now}: {action:?} made {unavailable} nodes unavailable, maxUnavailable is {max}")]
    BudgetExceeded {
        now: i64,
        action: Action,
        unavailable: u32,
        max: u32,
    },
    #[error("t={now}: {action:?} put {in_progress} nodes in progress, maxParallel is {max}")]
    ParallelExceeded {
        now: i64,
        action: Action,
        in_progress: u32,
        max: u32,
    },
    #[error("t={now}: {action:?} started a node while paused")]
    StartedWhilePaused { now: i64, action: Action },
    #[error("t={now}: {action:?} uncordoned a node an admin cordoned")]
    UncordonedAdminNode { now: i64, action: Action },
    #[error("t={now}: {action:?} evicted a non-interruptible pod")]
    EvictedNonInterruptible { now: i64, action: Action },
    #[error(
        "t={now}: {action:?} while {pods} pods use the driver's volumes and {published} are published"
    )]
    SwapWhileInUse {
        now: i64,
        action: Action,
        pods: usize,
        published: u32,
    },
    #[error("t={now}: {action:?} names an unknown node or pod")]
    UnknownTarget { now: i64, action: Action },
}

/// Counters of a run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Most unavailable nodes seen at any moment (faults included).
    pub peak_unavailable: u32,
    /// Most unavailable nodes right after an action of the planner made one unavailable.
    pub peak_after_operator: u32,
    pub evictions: u32,
    pub refused_evictions: u32,
    pub pod_deletions: u32,
    pub actions: u64,
    /// Plans cut short by a simulated operator restart.
    pub cut_plans: u32,
}

/// One node group and its DaemonSets.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub nodes: Vec<SimNode>,
    desired: String,
    daemonset_revision: String,
    now: i64,
    policy: Policy,
    /// `spec.rollout.paused` as set by the user ([`Cluster::set_paused`]).
    paused: bool,
    /// A pause drawn by [`Faults::pause`], on top of the user's.
    fault_pause: bool,
    faults: Faults,
    faults_on: bool,
    rng: XorShift,
    seq: u64,
    stats: Stats,
}

impl Cluster {
    /// Nodes `node-000`.. running [`OLD_REVISION`], rolled to [`NEW_REVISION`] under
    /// `policy` (its `paused` is the initial value).
    pub fn new(specs: Vec<NodeSpec>, policy: Policy, faults: Faults, seed: u64) -> Self {
        let nodes = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| initial_node(i, spec))
            .collect();
        Self {
            nodes,
            desired: NEW_REVISION.to_owned(),
            daemonset_revision: NEW_REVISION.to_owned(),
            now: 0,
            paused: policy.paused,
            fault_pause: false,
            policy,
            faults,
            faults_on: true,
            rng: XorShift::new(seed),
            seq: 0,
            stats: Stats::default(),
        }
    }

    pub fn now(&self) -> i64 {
        self.now
    }

    pub fn desired(&self) -> &str {
        &self.desired
    }

    pub fn paused(&self) -> bool {
        self.paused || self.fault_pause
    }

    /// Flips `spec.rollout.paused` as a user would.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The policy the operator sees now (`paused` may have been flipped by a fault).
    pub fn policy(&self) -> Policy {
        Policy {
            paused: self.paused(),
            ..self.policy.clone()
        }
    }

    /// What the controller would observe.
    pub fn view(&self) -> GroupView<'_> {
        GroupView {
            desired_revision: &self.desired,
            nodes: self.nodes.iter().map(SimNode::view).collect(),
            now: self.now,
        }
    }

    pub fn unavailable(&self) -> u32 {
        count(self.nodes.iter().filter(|n| n.unavailable()))
    }

    pub fn in_progress(&self) -> u32 {
        count(self.nodes.iter().filter(|n| n.in_progress()))
    }

    /// One pass: observe, plan, execute (checked), advance one tick.
    pub fn step(&mut self) -> Result<Plan, Violation> {
        let plan = plan(&self.view(), &self.policy());
        self.execute(&plan)?;
        self.advance();
        Ok(plan)
    }

    /// Stops drawing faults; stuck pods finish terminating and the rollout is resumed.
    pub fn clear_faults(&mut self) {
        self.faults_on = false;
        self.fault_pause = false;
        for pod in self.nodes.iter_mut().flat_map(|n| n.afs.iter_mut()) {
            if pod.stuck {
                pod.stuck = false;
                pod.countdown = 1;
            }
        }
    }

    /// Executes the plan's actions in order (only a prefix if a restart fault hits),
    /// checking every invariant after each action.
    pub fn execute(&mut self, plan: &Plan) -> Result<(), Violation> {
        let mut len = plan.actions.len();
        if self.faults_on && self.rng.chance(self.faults.restart) {
            len = self.rng.below(len + 1);
            self.stats.cut_plans += 1;
        }
        for action in &plan.actions[..len] {
            self.apply(action)?;
            self.stats.actions += 1;
        }
        self.stats.peak_unavailable = self.stats.peak_unavailable.max(self.unavailable());
        Ok(())
    }

    fn apply(&mut self, action: &Action) -> Result<(), Violation> {
        let now = self.now;
        let unknown = || Violation::UnknownTarget {
            now,
            action: action.clone(),
        };
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == action.node())
            .ok_or_else(unknown)?;
        let (was_unavailable, was_in_progress) =
            (self.nodes[i].unavailable(), self.nodes[i].in_progress());
        let node = &mut self.nodes[i];
        match action {
            Action::SetState {
                state,
                reason,
                revision,
                ..
            } => {
                node.state = Some(*state);
                node.since = Some(now);
                node.target = Some(revision.clone());
                node.reason.clone_from(reason);
            }
            Action::Cordon { .. } => {
                if !node.unschedulable {
                    node.unschedulable = true;
                    node.cordoned_by_operator = true;
                }
            }
            Action::Uncordon { .. } => {
                if node.admin_cordoned {
                    return Err(Violation::UncordonedAdminNode {
                        now,
                        action: action.clone(),
                    });
                }
                node.unschedulable = false;
                node.cordoned_by_operator = false;
            }
            Action::Evict { namespace, pod, .. } => {
                let p = node
                    .afs
                    .iter_mut()
                    .find(|p| &p.namespace == namespace && &p.name == pod)
                    .ok_or_else(unknown)?;
                if p.non_interruptible {
                    return Err(Violation::EvictedNonInterruptible {
                        now,
                        action: action.clone(),
                    });
                }
                if !p.terminating {
                    if self.faults_on && self.rng.chance(self.faults.pdb_refusal) {
                        self.stats.refused_evictions += 1;
                    } else {
                        p.terminating = true;
                        p.countdown = node.spec.evict_ticks.max(1);
                        p.stuck = self.faults_on && self.rng.chance(self.faults.stuck_pod);
                        self.stats.evictions += 1;
                    }
                }
            }
            Action::DeletePod { pod, .. } => {
                let (pods, published) = (node.afs.len(), node.published());
                if pods > 0 || (node.spec.reports_published && published > 0) {
                    return Err(Violation::SwapWhileInUse {
                        now,
                        action: action.clone(),
                        pods,
                        published,
                    });
                }
                let ticks = node.spec.swap_ticks.max(1);
                let p = [&mut node.kmod, &mut node.csi]
                    .into_iter()
                    .flatten()
                    .find(|p| &p.name == pod)
                    .ok_or_else(unknown)?;
                if !p.terminating {
                    p.terminating = true;
                    p.ready = false;
                    p.countdown = ticks;
                    self.stats.pod_deletions += 1;
                }
            }
        }
        self.check(i, action, was_unavailable, was_in_progress)
    }

    /// The invariants that hold after every action.
    fn check(
        &mut self,
        i: usize,
        action: &Action,
        was_unavailable: bool,
        was_in_progress: bool,
    ) -> Result<(), Violation> {
        let now = self.now;
        if !was_in_progress && self.nodes[i].in_progress() {
            if self.paused() {
                return Err(Violation::StartedWhilePaused {
                    now,
                    action: action.clone(),
                });
            }
            let (in_progress, max) = (self.in_progress(), self.policy.max_parallel);
            if in_progress > max {
                return Err(Violation::ParallelExceeded {
                    now,
                    action: action.clone(),
                    in_progress,
                    max,
                });
            }
        }
        if !was_unavailable && self.nodes[i].unavailable() {
            let (unavailable, max) = (self.unavailable(), self.policy.max_unavailable);
            if unavailable > max {
                return Err(Violation::BudgetExceeded {
                    now,
                    action: action.clone(),
                    unavailable,
                    max,
                });
            }
            self.stats.peak_after_operator = self.stats.peak_after_operator.max(unavailable);
        }
        Ok(())
    }

    /// One tick of the world: faults, pods leaving, DaemonSets replacing deleted pods.
    pub fn advance(&mut self) {
        self.now += 1;
        if self.faults_on {
            self.inject_faults();
        }
        let lingering = if self.faults_on {
            self.faults.lingering_mount
        } else {
            0.0
        };
        for node in &mut self.nodes {
            if let Some(left) = node.down_for {
                node.down_for = left.checked_sub(1).filter(|l| *l > 0);
                node.ready = node.down_for.is_none();
            }
            if !node.ready {
                continue;
            }
            node.lingering = node.lingering.saturating_sub(1);
            let before = node.afs.len();
            for pod in &mut node.afs {
                advance_afs_pod(pod);
            }
            node.afs
                .retain(|p| !(p.terminating && !p.stuck && p.countdown == 0));
            if node.afs.len() < before && node.spec.reports_published && self.rng.chance(lingering)
            {
                node.lingering = self.rng.range(1, 3);
            }
            let validate_ticks = node.spec.validate_ticks.max(1);
            for (kind, slot) in [("kmod", &mut node.kmod), ("csi", &mut node.csi)] {
                if slot.as_mut().is_some_and(advance_daemon_pod) {
                    // Gone: the OnDelete DaemonSet creates the replacement at its revision.
                    self.seq += 1;
                    let revision = &self.daemonset_revision;
                    *slot = Some(daemon_pod(
                        kind,
                        &node.name,
                        self.seq,
                        revision,
                        false,
                        validate_ticks,
                    ));
                }
            }
        }
    }

    fn inject_faults(&mut self) {
        let f = self.faults.clone();
        if f.revision_change_at == Some(self.now) {
            NEXT_REVISION.clone_into(&mut self.desired);
            NEXT_REVISION.clone_into(&mut self.daemonset_revision);
        }
        // Pauses start at the fault rate and last 10 ticks on average.
        let flip = if self.fault_pause { 0.1 } else { f.pause };
        if self.rng.chance(flip) {
            self.fault_pause = !self.fault_pause;
        }
        for node in &mut self.nodes {
            if node.ready && self.rng.chance(f.not_ready) {
                node.ready = false;
                node.down_for = Some(self.rng.range(1, 8));
            }
        }
        let n = self.nodes.len();
        if n > 0 && self.rng.chance(f.stray_pod) {
            let i = self.rng.below(n);
            let non_interruptible = self.rng.chance(0.25);
            let runs_for = non_interruptible.then(|| self.rng.range(1, 5));
            self.seq += 1;
            let node = &mut self.nodes[i];
            if node.ready {
                node.afs.push(SimAfsPod {
                    namespace: "stray".to_owned(),
                    name: format!("stray-{}", self.seq),
                    non_interruptible,
                    runs_for,
                    terminating: false,
                    stuck: false,
                    countdown: 0,
                });
            }
        }
        if n > 0 && self.rng.chance(f.admin_cordon) {
            let node = &mut self.nodes[self.rng.below(n)];
            if !node.unschedulable {
                node.unschedulable = true;
                node.admin_cordoned = true;
            }
        }
    }
}

/// Node `i` before the rollout: pods at [`OLD_REVISION`], no upgrade state.
fn initial_node(i: usize, spec: NodeSpec) -> SimNode {
    let name = format!("node-{i:03}");
    let pod = |kind| {
        spec.has_pods
            .then(|| daemon_pod(kind, &name, 0, OLD_REVISION, true, 0))
    };
    let (kmod, csi) = (pod("kmod"), pod("csi"));
    let afs = spec
        .pods
        .iter()
        .enumerate()
        .map(|(j, p)| SimAfsPod {
            namespace: format!("ns{}", j % 3),
            name: format!("app-{i:03}-{j}"),
            non_interruptible: p.non_interruptible,
            runs_for: p.runs_for,
            terminating: false,
            stuck: false,
            countdown: 0,
        })
        .collect();
    SimNode {
        name,
        ready: spec.ready,
        down_for: None,
        unschedulable: spec.admin_cordoned,
        cordoned_by_operator: false,
        admin_cordoned: spec.admin_cordoned,
        state: None,
        since: None,
        target: None,
        reason: String::new(),
        kmod,
        csi,
        afs,
        lingering: 0,
        spec,
    }
}

/// A DaemonSet pod named after its kind, node and a sequence number.
fn daemon_pod(
    kind: &str,
    node: &str,
    seq: u64,
    revision: &str,
    ready: bool,
    countdown: u32,
) -> SimDsPod {
    SimDsPod {
        name: format!("{kind}-{node}-{seq}"),
        revision: revision.to_owned(),
        ready,
        terminating: false,
        countdown,
    }
}

/// One tick of a DaemonSet pod; true once a terminating pod is gone.
fn advance_daemon_pod(pod: &mut SimDsPod) -> bool {
    pod.countdown = pod.countdown.saturating_sub(1);
    if pod.terminating {
        return pod.countdown == 0;
    }
    pod.ready |= pod.countdown == 0;
    false
}

fn advance_afs_pod(pod: &mut SimAfsPod) {
    if pod.terminating {
        if !pod.stuck {
            pod.countdown = pod.countdown.saturating_sub(1);
        }
    } else if let Some(left) = pod.runs_for {
        // A non-interruptible job finishing by itself.
        pod.runs_for = Some(left.saturating_sub(1));
        if left <= 1 {
            pod.terminating = true;
            pod.countdown = 1;
        }
    }
}

fn count<T>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}
