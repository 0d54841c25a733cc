//! The reconcile: observe a node group, build the desired objects (pure), apply only
//! what differs (server-side apply, one field manager), plan the rollout (pure),
//! execute it, write status. Deletion is node by node behind a finalizer.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, PersistentVolume, Pod, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode, StorageClass};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::crd::{NodeCounts, NodeUsage, SpecialResource, SpecialResourceStatus};
use crate::group::{self, NodeLabels};
use crate::labels::{
    CORDONED_BY_OPERATOR_ANNOTATION, FIELD_MANAGER, FINALIZER, MANAGED_BY_LABEL, RELEASE_LABEL,
    REVISION_LABEL, SR_LABEL, UPGRADE_REASON_ANNOTATION, UPGRADE_SINCE_ANNOTATION,
    UPGRADE_STATE_LABEL,
};
use crate::metrics::Metrics;
use crate::objects::{self, Desired, Inputs, OperatorAccount};
use crate::observe::{self, GroupIndex, Observed};
use crate::ownership::{self, DriverOwnership, Refusal};
use crate::rollout::{self, GroupView, Plan, Policy, UPGRADE_TARGET_ANNOTATION, UpgradeState};
use crate::status::{DEGRADED, PROGRESSING, READY, Verdict, merge_conditions};
use crate::{diff, nodes};

/// Requeue while something moves (rollout, deletion, waiting for pods).
const BUSY_REQUEUE: Duration = Duration::from_secs(5);
/// Requeue in steady state: watches bring changes sooner.
const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// How long a new RoleBinding may take to reach the API server's authorizer.
const RBAC_PROPAGATION: Duration = Duration::from_secs(10);
/// Requeue of an SR refused for a namespace or CSIDriver that is not its own: nothing
/// watches those, and an admin handing a namespace over should not wait long; but no
/// hot loop either.
const REFUSED_REQUEUE: Duration = Duration::from_secs(60);
/// `status.state` of an SR refused for a namespace or CSIDriver that is not its own.
pub const REFUSED_STATE: &str = "Refused";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Build(#[from] objects::BuildError),
    #[error("{0}")]
    Policy(#[from] rollout::PolicyError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("object {0} has no name")]
    Unnamed(&'static str),
    /// Deletion goes on: the finalizer stays until every module pod is gone.
    #[error("deletion waits: {0}")]
    CleanupWaiting(String),
}

impl Error {
    /// Not a failure: a deletion waiting for nodes to become free.
    pub fn is_waiting(&self) -> bool {
        match self {
            Self::CleanupWaiting(_) => true,
            Self::Finalizer(e) => matches!(
                e.as_ref(),
                kube::runtime::finalizer::Error::CleanupFailed(Self::CleanupWaiting(_))
            ),
            _ => false,
        }
    }

    /// A write lost an optimistic-concurrency race (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        let kube_error = match self {
            Self::Kube(e) => Some(e),
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(Self::Kube(e))
                | kube::runtime::finalizer::Error::CleanupFailed(Self::Kube(e)) => Some(e),
                _ => None,
            },
            _ => None,
        };
        matches!(kube_error, Some(kube::Error::Api(s)) if s.code == 409)
    }
}

/// Shared by every reconcile.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Every SpecialResource, for overlaps and shared driver pieces.
    pub srs: Store<SpecialResource>,
    /// The operator's own ServiceAccount: bound to its namespaced role in each SR
    /// namespace.
    pub account: OperatorAccount,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, srs: Store<SpecialResource>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Self {
            client,
            recorder,
            metrics,
            srs,
            account: OperatorAccount::default(),
        }
    }

    /// The same, for an operator running as `account`.
    pub fn with_account(self, account: OperatorAccount) -> Self {
        Self { account, ..self }
    }
}

/// Runs the controller until `shutdown` resolves, as the ServiceAccount deploy/
/// installs ([`OperatorAccount::default`]).
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_as(client, metrics, OperatorAccount::default(), shutdown).await;
}

/// Runs the controller until `shutdown` resolves; `account` is the ServiceAccount the
/// client authenticates as (the subject of its RoleBinding in each SR namespace).
pub async fn run_as(
    client: Client,
    metrics: Arc<Metrics>,
    account: OperatorAccount,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let managed =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={}", objects::MANAGED_BY));
    let controller = Controller::new(
        Api::<SpecialResource>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let ctx = Arc::new(Context::new(client.clone(), metrics, store.clone()).with_account(account));
    controller
        // Not `.owns`: kube-runtime would key a cluster-scoped owner with the child's
        // namespace, a second key for the same SR, so two reconciles of one SR could
        // run at once.
        .watches(
            Api::<DaemonSet>::all(client.clone()),
            managed.clone(),
            |o| owning_srs(&o),
        )
        .watches(Api::<Deployment>::all(client.clone()), managed, |o| {
            owning_srs(&o)
        })
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |node| {
                store
                    .state()
                    .into_iter()
                    .filter(|sr| group::selects(&sr.spec.node_selector, node.labels()))
                    .map(|sr| ObjectRef::from_obj(sr.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// The SRs owning an object, keyed as the SR watch keys them (no namespace).
fn owning_srs(object: &impl Resource) -> Vec<ObjectRef<SpecialResource>> {
    object
        .owner_references()
        .iter()
        .filter(|o| {
            o.kind == "SpecialResource" && o.api_version == SpecialResource::api_version(&())
        })
        .map(|o| ObjectRef::new(&o.name))
        .collect()
}

fn error_policy(sr: Arc<SpecialResource>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_waiting() {
        info!(sr = %sr.name_any(), %error, "deleting");
    } else if error.is_conflict() {
        // Someone wrote between our read and our write: read again soon.
        info!(sr = %sr.name_any(), %error, "write conflict; retrying");
        return Action::requeue(Duration::from_millis(500));
    } else {
        warn!(sr = %sr.name_any(), %error, "reconcile error; retrying");
        ctx.metrics.reconcile_error();
    }
    Action::requeue(BUSY_REQUEUE)
}

#[instrument(skip_all, fields(sr = %sr.name_any()))]
pub async fn reconcile(sr: Arc<SpecialResource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let api = Api::<SpecialResource>::all(ctx.client.clone());
    finalizer(&api, FINALIZER, sr, |event| async {
        match event {
            Finalizer::Apply(sr) => apply(&sr, &ctx).await,
            Finalizer::Cleanup(sr) => cleanup(&sr, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Reads what one pass needs about the SR's node group (also used by `afsctl`).
pub async fn observe_group(sr: &SpecialResource, client: &Client) -> Result<Observed, kube::Error> {
    let selector = group::selector_string(&sr.spec.node_selector);
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let own_pods = Api::<Pod>::namespaced(client.clone(), &sr.spec.namespace)
        .list(&ListParams::default().labels(&format!("{SR_LABEL}={}", sr.name_any())))
        .await
        .or_else(not_found_is_empty)?
        .items;
    let driver = &sr.spec.csi.driver_name;
    let volumes = Api::<PersistentVolume>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let claims = observe::driver_claims(driver, &volumes);
    let names: BTreeSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let afs_pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| names.contains(n))
        })
        .filter(|p| observe::uses_driver(p, driver, &claims))
        .collect();
    let csi_nodes = Api::<CSINode>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok(Observed {
        nodes,
        own_pods,
        afs_pods,
        csi_nodes,
    })
}

fn not_found_is_empty<K: Clone>(e: kube::Error) -> Result<kube::core::ObjectList<K>, kube::Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(kube::core::ObjectList {
            types: Default::default(),
            metadata: Default::default(),
            items: Vec::new(),
        }),
        e => Err(e),
    }
}

fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

async fn apply(sr: &SpecialResource, ctx: &Context) -> Result<Action, Error> {
    let name = sr.name_any();
    let all = ctx.srs.state();
    let live = group::live_by_age(&all);
    let observed = observe_group(sr, &ctx.client).await?;
    let node_labels: Vec<NodeLabels<'_>> = observed
        .nodes
        .iter()
        .map(|n| NodeLabels {
            name: n.metadata.name.as_deref().unwrap_or_default(),
            labels: n.labels(),
        })
        .collect();
    let overlaps = group::overlaps(sr, &live, &node_labels);
    let shared: BTreeSet<&str> = overlaps
        .iter()
        .flat_map(|o| o.nodes.iter().map(String::as_str))
        .collect();
    let overlap_message = overlaps
        .iter()
        .map(|o| {
            format!(
                "shares nodes {} with SpecialResource {}",
                o.nodes.join(", "),
                o.other
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    if overlaps.iter().any(|o| o.other_is_older) {
        // Refused: an older SR already serves these nodes; we touch nothing.
        let status = SpecialResourceStatus {
            state: Some("Conflict".into()),
            group: Some(group::selector_string(&sr.spec.node_selector)),
            ..Default::default()
        };
        let verdicts = [
            Verdict::new(READY, false, "NodeGroupOverlap", overlap_message.clone()),
            Verdict::new(
                PROGRESSING,
                false,
                "NodeGroupOverlap",
                "refused: nothing is deployed",
            ),
            Verdict::new(DEGRADED, true, "NodeGroupOverlap", overlap_message),
        ];
        write_status(sr, ctx, status, &verdicts).await?;
        return Ok(Action::requeue(IDLE_REQUEUE));
    }

    // The trust boundary, before anything is applied: a namespace or CSIDriver that
    // exists and is not this SR's (another's namespace, another vendor's driver) is
    // refused, and nothing of the SR is deployed or labelled.
    let live_namespace = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&sr.spec.namespace)
        .await?;
    let live_driver = Api::<CSIDriver>::all(ctx.client.clone())
        .get_opt(&sr.spec.csi.driver_name)
        .await?;
    let refusals = ownership::refusals(
        &name,
        &sr.spec,
        live_namespace.as_ref(),
        live_driver.as_ref(),
    );
    if !refusals.is_empty() {
        return refuse(sr, ctx, &refusals).await;
    }

    let mut kernels: Vec<String> = observed
        .nodes
        .iter()
        .filter_map(|n| observe::node_kernel(n).map(str::to_owned))
        .collect();
    kernels.sort();
    kernels.dedup();
    let revision = objects::revision(&sr.spec);
    let peers = group::driver_peers(sr, &live);
    let runs_controller = peers.first().is_some_and(|p| p.name_any() == name);
    let desired = objects::build(&Inputs {
        sr,
        revision: &revision,
        kernels: &kernels,
        runs_controller,
        csi_driver_owners: &peers,
    })?;
    let running_revisions: BTreeSet<String> = observed
        .own_pods
        .iter()
        .filter_map(|p| p.labels().get(REVISION_LABEL).cloned())
        .collect();
    let live = Live {
        namespace_exists: live_namespace.is_some(),
        driver: live_driver.as_ref(),
    };
    apply_desired(sr, ctx, &desired, &running_revisions, &live).await?;
    for unmapped in &desired.unmapped {
        let known = sr.status.as_ref().is_some_and(|s| {
            s.kernels
                .iter()
                .any(|k| k.kernel == unmapped.kernel && k.image.is_none())
        });
        if !known {
            warn_event(ctx, sr, "KernelWithoutMapping", &unmapped.message).await;
        }
    }

    // Nodes: kernel label and readiness taint; shared nodes are left alone.
    let index = GroupIndex::new(sr, &observed);
    let mut views = Vec::new();
    let mut serving_nodes = 0;
    // `node: detail` of the nodes kmod-manager reports not ready, for the status.
    let mut kmod_not_ready = Vec::new();
    for node in observed
        .nodes
        .iter()
        .filter(|n| !shared.contains(n.name_any().as_str()))
    {
        let node_name = node.name_any();
        let view = index.view(node);
        let serving = observe::serves(&view, &revision);
        let kernel_label = observe::node_kernel(node).map(objects::kernel_label_value);
        serving_nodes += u32::from(serving);
        if let Some(detail) = observe::kmod_not_ready(node).filter(|_| !serving) {
            kmod_not_ready.push(format!("{node_name}: {detail}"));
        }
        if let Some(patch) = nodes::node_patch(node, kernel_label.as_deref(), !serving) {
            patch_node(ctx, &node_name, &patch).await?;
        }
        views.push(view);
    }

    let policy = Policy::from_spec(&sr.spec.rollout, views.len())?;
    let now = Timestamp::now();
    let view = GroupView {
        desired_revision: &revision,
        nodes: views,
        now: now.as_second(),
    };
    let plan = rollout::plan(&view, &policy);
    execute(sr, ctx, &plan, now).await?;

    let counts = node_counts(&plan, serving_nodes, desired.unmapped.len());
    let failed: Vec<&str> = view
        .nodes
        .iter()
        .filter(|n| n.state == Some(UpgradeState::UpgradeFailed))
        .map(|n| n.name.as_str())
        .collect();
    let in_use: Vec<NodeUsage> = view
        .nodes
        .iter()
        .filter(|n| n.state.is_some_and(UpgradeState::is_in_progress) && !n.afs_pods.is_empty())
        .map(|n| NodeUsage {
            node: n.name.clone(),
            pods: n
                .afs_pods
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect(),
        })
        .collect();
    let (verdicts, state) = verdicts(
        sr,
        &counts,
        &plan,
        &failed,
        &overlap_message,
        &desired,
        &kmod_not_ready,
    );
    let status = SpecialResourceStatus {
        group: Some(group::selector_string(&sr.spec.node_selector)),
        ready_nodes: Some(format!("{}/{}", counts.ready, counts.total)),
        state: Some(state.into()),
        revision: Some(revision.clone()),
        kernels: objects::kernel_statuses(&desired, &observed.nodes),
        nodes: counts.clone(),
        in_use,
        ..Default::default()
    };
    write_status(sr, ctx, status, &verdicts).await?;
    let settled = counts.ready == counts.total && plan.actions.is_empty();
    Ok(Action::requeue(if settled {
        IDLE_REQUEUE
    } else {
        BUSY_REQUEUE
    }))
}

/// Reports why the SR is refused (status, and a Warning event when the reason is new)
/// and applies nothing.
async fn refuse(
    sr: &SpecialResource,
    ctx: &Context,
    refusals: &[Refusal],
) -> Result<Action, Error> {
    let Some(first) = refusals.first() else {
        return Ok(Action::requeue(REFUSED_REQUEUE));
    };
    let message = refusals
        .iter()
        .map(|r| r.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let reported = sr.status.as_ref().is_some_and(|s| {
        s.state.as_deref() == Some(REFUSED_STATE)
            && s.conditions
                .iter()
                .any(|c| c.type_ == DEGRADED && c.message == message)
    });
    if !reported {
        for refusal in refusals {
            warn!(reason = refusal.reason, message = %refusal.message, "refused");
            warn_event(ctx, sr, refusal.reason, &refusal.message).await;
        }
    }
    let status = SpecialResourceStatus {
        state: Some(REFUSED_STATE.into()),
        group: Some(group::selector_string(&sr.spec.node_selector)),
        ..Default::default()
    };
    let verdicts = [
        Verdict::new(READY, false, first.reason, message.clone()),
        Verdict::new(
            PROGRESSING,
            false,
            first.reason,
            "refused: nothing is deployed",
        ),
        Verdict::new(DEGRADED, true, first.reason, message),
    ];
    write_status(sr, ctx, status, &verdicts).await?;
    Ok(Action::requeue(REFUSED_REQUEUE))
}

fn node_counts(plan: &Plan, serving: u32, unmapped: usize) -> NodeCounts {
    let s = &plan.summary;
    NodeCounts {
        total: s.total,
        ready: serving,
        upgrade_required: s.states.get(UpgradeState::UpgradeRequired),
        upgrading: s.in_progress,
        failed: s.states.get(UpgradeState::UpgradeFailed),
        unavailable: s.unavailable,
        unmapped: u32::try_from(unmapped).unwrap_or(u32::MAX),
    }
}

fn describe(summary: &rollout::Summary) -> String {
    let mut text = format!(
        "{} upgrading, {} waiting (maxUnavailable {}, maxParallel {})",
        summary.in_progress, summary.waiting, summary.max_unavailable, summary.max_parallel
    );
    if let Some(blocked) = summary.blocked {
        text.push_str(&format!(": {blocked}"));
    }
    text
}

/// At most this many nodes are named in the Ready condition's message.
const NAMED_NOT_READY: usize = 5;

/// The Ready condition's message while nodes are not ready: the count, then what
/// kmod-manager says on the first [`NAMED_NOT_READY`] nodes whose module or AFS client
/// is down (`node: detail`), e.g. `2/3 nodes ready; kmod-manager reports n2: afsd
/// exited (status 1)`.
fn not_ready_message(nodes: &str, kmod_not_ready: &[String]) -> String {
    if kmod_not_ready.is_empty() {
        return nodes.to_owned();
    }
    let mut text = format!(
        "{nodes}; kmod-manager reports {}",
        kmod_not_ready
            .iter()
            .take(NAMED_NOT_READY)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("; ")
    );
    if kmod_not_ready.len() > NAMED_NOT_READY {
        text.push_str(&format!(
            "; and {} more node(s)",
            kmod_not_ready.len() - NAMED_NOT_READY
        ));
    }
    text
}

/// Conditions and the printer-column state, from what this reconcile found (pure).
/// `kmod_not_ready`: `node: detail` of the nodes whose module or AFS client
/// kmod-manager reports down.
fn verdicts(
    sr: &SpecialResource,
    counts: &NodeCounts,
    plan: &Plan,
    failed: &[&str],
    overlap: &str,
    desired: &Desired,
    kmod_not_ready: &[String],
) -> ([Verdict; 3], &'static str) {
    let ready = counts.total > 0 && counts.ready == counts.total;
    // (reason, message); the first problem names the Degraded reason.
    let mut problems: Vec<(&'static str, String)> = desired
        .unmapped
        .iter()
        .map(|u| ("KernelWithoutMapping", u.message.clone()))
        .collect();
    if counts.failed > 0 {
        let message = format!(
            "{} node(s) failed their upgrade: {}",
            counts.failed,
            failed.join(", ")
        );
        problems.push(("UpgradeFailed", message));
    }
    if !overlap.is_empty() {
        problems.push(("NodeGroupOverlap", overlap.to_owned()));
    }
    if sr.spec.csi.allowed_cells.is_empty() {
        // Only an SR stored before the field existed: admission requires it.
        problems.push((
            "AllowedCellsMissing",
            "csi.allowedCells is empty (the SpecialResource predates it): the node plugin refuses every volume; list the cells its pods use".to_owned(),
        ));
    }
    let progressing = counts.upgrading + counts.upgrade_required > 0 || counts.ready < counts.total;
    let state = if !problems.is_empty() {
        "Degraded"
    } else if sr.spec.rollout.paused && progressing {
        "Paused"
    } else if ready {
        "Ready"
    } else {
        "Progressing"
    };
    let nodes = format!("{}/{} nodes ready", counts.ready, counts.total);
    (
        [
            if ready {
                Verdict::new(READY, true, "AllNodesReady", nodes.clone())
            } else if counts.total == 0 {
                Verdict::new(READY, false, "NoNodes", "no node matches nodeSelector")
            } else {
                Verdict::new(
                    READY,
                    false,
                    "NodesNotReady",
                    not_ready_message(&nodes, kmod_not_ready),
                )
            },
            if progressing {
                Verdict::new(PROGRESSING, true, "RollingOut", describe(&plan.summary))
            } else {
                Verdict::new(PROGRESSING, false, "UpToDate", nodes)
            },
            match problems.first() {
                None => Verdict::new(DEGRADED, false, "AsExpected", ""),
                Some((reason, _)) => {
                    let messages: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
                    Verdict::new(DEGRADED, true, reason, messages.join("; "))
                }
            },
        ],
        state,
    )
}

async fn write_status(
    sr: &SpecialResource,
    ctx: &Context,
    mut status: SpecialResourceStatus,
    verdicts: &[Verdict],
) -> Result<(), Error> {
    let current = sr.status.clone().unwrap_or_default();
    status.observed_generation = sr.metadata.generation;
    status.conditions = merge_conditions(
        &current.conditions,
        verdicts,
        sr.metadata.generation,
        Timestamp::now(),
    );
    if status == current {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": SpecialResource::api_version(&()),
        "kind": SpecialResource::kind(&()),
        "status": status,
    });
    ctx.metrics.write();
    Api::<SpecialResource>::all(ctx.client.clone())
        .patch_status(
            &sr.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

async fn warn_event(ctx: &Context, sr: &SpecialResource, reason: &str, note: &str) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.metrics.write();
    if let Err(e) = ctx.recorder.publish(&event, &sr.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish event");
    }
}

async fn patch_node(ctx: &Context, node: &str, patch: &serde_json::Value) -> Result<(), Error> {
    ctx.metrics.write();
    Api::<Node>::all(ctx.client.clone())
        .patch(
            node,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(patch),
        )
        .await?;
    Ok(())
}

fn name_of<K: Resource>(object: &K) -> Result<String, Error> {
    object
        .meta()
        .name
        .clone()
        .ok_or(Error::Unnamed(std::any::type_name::<K>()))
}

/// Server-side apply of `desired` unless the live object already carries all of it;
/// whether it wrote.
async fn ensure<K>(ctx: &Context, api: &Api<K>, desired: &K) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let live = api.get_opt(&name_of(desired)?).await?;
    apply_changed(ctx, api, desired, live.as_ref()).await
}

/// Server-side apply of `desired` unless `live` (the object as just read) already
/// carries all of it; whether it wrote.
async fn apply_changed<K>(
    ctx: &Context,
    api: &Api<K>,
    desired: &K,
    live: Option<&K>,
) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = name_of(desired)?;
    if let Some(live) = live {
        let want = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
        let have = serde_json::to_value(live).map_err(kube::Error::SerdeError)?;
        if diff::is_subset(&want, &have) {
            return Ok(false);
        }
    }
    ctx.metrics.write();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    Ok(true)
}

/// Gives the operator its rights in the SR namespace `namespace`: a RoleBinding of
/// [`objects::OPERATOR_NAMESPACE_ROLE`] to its own ServiceAccount. Every other write
/// there is authorized by it (the cluster-wide ClusterRole holds no namespaced write
/// but this binding, by name), so it comes right after the namespace, before anything
/// else. A new binding reaches the API server's authorizer through a watch, a moment
/// later: wait for it (bounded) with a namespaced read it grants.
#[instrument(skip(ctx))]
async fn bind_operator(ctx: &Context, namespace: &str) -> Result<(), Error> {
    let binding = objects::operator_role_binding(namespace, &ctx.account);
    let bindings = Api::<RoleBinding>::namespaced(ctx.client.clone(), namespace);
    if !ensure(ctx, &bindings, &binding).await? {
        return Ok(());
    }
    info!(account = %ctx.account.name, "bound the operator's namespaced role");
    let probe = Api::<ServiceAccount>::namespaced(ctx.client.clone(), namespace);
    let deadline = Instant::now() + RBAC_PROPAGATION;
    loop {
        match probe.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 403 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes the operator's RoleBinding from the SR's namespace once no other live SR
/// uses that namespace: no namespaced right outlives the SRs there. (Another SR of the
/// namespace being deleted at the same time then leaves its objects there to the
/// garbage collector: see [`delete_objects`].)
async fn unbind_operator(
    ctx: &Context,
    sr: &SpecialResource,
    live: &[&SpecialResource],
) -> Result<(), Error> {
    let namespace = sr.spec.namespace.as_str();
    if live
        .iter()
        .any(|o| o.name_any() != sr.name_any() && o.spec.namespace == namespace)
    {
        return Ok(());
    }
    ctx.metrics.write();
    match Api::<RoleBinding>::namespaced(ctx.client.clone(), namespace)
        .delete(objects::OPERATOR_BINDING, &DeleteParams::background())
        .await
    {
        Ok(_) => {
            info!(%namespace, "removed the operator's namespaced role binding");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates an object found missing. Unlike a (forced) apply, it fails with a conflict
/// rather than take over an object someone else created since: the next reconcile
/// then finds it and decides whose it is.
async fn create<K>(ctx: &Context, api: &Api<K>, desired: &K) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    ctx.metrics.write();
    info!(kind = %std::any::type_name::<K>(), name = %name_of(desired)?, "creating");
    api.create(&PostParams::default(), desired).await?;
    Ok(())
}

/// The shared CSIDriver, `live` as read before the ownership check (so it is ours or
/// missing). Its `volumeLifecycleModes` is immutable: when the wanted modes change
/// (an SR of the driver starts or stops allowing inline volumes) the object is
/// replaced. Kubelet reads the CSIDriver when it mounts; published volumes are not
/// affected, and a mount in the moment between the two requests is retried.
async fn ensure_csi_driver(
    ctx: &Context,
    api: &Api<CSIDriver>,
    desired: &CSIDriver,
    live: Option<&CSIDriver>,
) -> Result<(), Error> {
    let Some(live) = live else {
        return create(ctx, api, desired).await;
    };
    let modes = |d: &CSIDriver| {
        d.spec
            .volume_lifecycle_modes
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| vec![objects::PERSISTENT_MODE.to_owned()])
    };
    if modes(live) == modes(desired) {
        return apply_changed(ctx, api, desired, Some(live))
            .await
            .map(|_| ());
    }
    let name = name_of(desired)?;
    info!(%name, from = ?modes(live), to = ?modes(desired), "replacing the CSIDriver: its lifecycle modes are immutable");
    ctx.metrics.write();
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    create(ctx, api, desired).await
}

/// Deletes our objects of a kind (by SR label) that are no longer desired.
async fn prune<K>(ctx: &Context, api: &Api<K>, sr: &str, keep: &[&K]) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let keep: BTreeSet<String> = keep.iter().map(|k| k.name_any()).collect();
    let listed = api
        .list_metadata(&ListParams::default().labels(&format!("{SR_LABEL}={sr}")))
        .await
        .or_else(not_found_is_empty)?;
    for stale in listed
        .items
        .iter()
        .filter(|o| !keep.contains(&o.name_any()))
    {
        ctx.metrics.write();
        info!(kind = %std::any::type_name::<K>(), name = %stale.name_any(), "deleting object no longer desired");
        match api
            .delete(&stale.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What the ownership check read: the namespace and the CSIDriver, each ours or
/// missing.
#[derive(Debug, Clone, Copy)]
struct Live<'a> {
    namespace_exists: bool,
    driver: Option<&'a CSIDriver>,
}

async fn apply_desired(
    sr: &SpecialResource,
    ctx: &Context,
    d: &Desired,
    running_revisions: &BTreeSet<String>,
    live: &Live<'_>,
) -> Result<(), Error> {
    let c = &ctx.client;
    let ns = sr.spec.namespace.as_str();
    let name = sr.name_any();
    let namespaces = Api::<Namespace>::all(c.clone());
    if live.namespace_exists {
        // Marked as this SR's (checked by the caller): labelled privileged.
        ensure(ctx, &namespaces, &d.namespace).await?;
    } else {
        create(ctx, &namespaces, &d.namespace).await?;
    }
    // First in the namespace: every write below needs it.
    bind_operator(ctx, ns).await?;
    let sa = Api::<ServiceAccount>::namespaced(c.clone(), ns);
    for o in &d.service_accounts {
        ensure(ctx, &sa, o).await?;
    }
    let cm = Api::<ConfigMap>::namespaced(c.clone(), ns);
    for o in &d.config_maps {
        ensure(ctx, &cm, o).await?;
    }
    // A revision's config stays while a pod of that revision may restart and read it.
    let listed = cm
        .list_metadata(&ListParams::default().labels(&format!("{SR_LABEL}={name}")))
        .await?;
    let keep: Vec<&ConfigMap> = d.config_maps.iter().collect();
    let stale = listed.items.iter().filter(|o| {
        !keep.iter().any(|k| k.name_any() == o.name_any())
            && !o
                .labels()
                .get(REVISION_LABEL)
                .is_some_and(|r| running_revisions.contains(r))
    });
    for o in stale {
        ctx.metrics.write();
        cm.delete(&o.name_any(), &DeleteParams::background())
            .await?;
    }
    let bindings = Api::<ClusterRoleBinding>::all(c.clone());
    for o in &d.cluster_role_bindings {
        ensure(ctx, &bindings, o).await?;
    }
    prune(
        ctx,
        &bindings,
        &name,
        &d.cluster_role_bindings.iter().collect::<Vec<_>>(),
    )
    .await?;
    let bindings = Api::<RoleBinding>::namespaced(c.clone(), ns);
    for o in &d.role_bindings {
        ensure(ctx, &bindings, o).await?;
    }
    prune(
        ctx,
        &bindings,
        &name,
        &d.role_bindings.iter().collect::<Vec<_>>(),
    )
    .await?;
    ensure_csi_driver(
        ctx,
        &Api::<CSIDriver>::all(c.clone()),
        &d.csi_driver,
        live.driver,
    )
    .await?;
    let daemon_sets = Api::<DaemonSet>::namespaced(c.clone(), ns);
    for o in d.kmod_daemon_sets.iter().chain([&d.csi_node_daemon_set]) {
        ensure(ctx, &daemon_sets, o).await?;
    }
    let keep: Vec<&DaemonSet> = d
        .kmod_daemon_sets
        .iter()
        .chain([&d.csi_node_daemon_set])
        .collect();
    prune(ctx, &daemon_sets, &name, &keep).await?;
    let deployments = Api::<Deployment>::namespaced(c.clone(), ns);
    if let Some(o) = &d.csi_controller {
        ensure(ctx, &deployments, o).await?;
    }
    prune(
        ctx,
        &deployments,
        &name,
        &d.csi_controller.iter().collect::<Vec<_>>(),
    )
    .await?;
    let classes = Api::<StorageClass>::all(c.clone());
    if let Some(o) = &d.storage_class {
        ensure(ctx, &classes, o).await?;
    }
    prune(
        ctx,
        &classes,
        &name,
        &d.storage_class.iter().collect::<Vec<_>>(),
    )
    .await?;
    Ok(())
}

/// Executes a plan in order; the planner made every prefix safe, so an error stops here
/// and the next reconcile starts from what was recorded.
async fn execute(
    sr: &SpecialResource,
    ctx: &Context,
    plan: &Plan,
    now: Timestamp,
) -> Result<(), Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &sr.spec.namespace);
    for action in &plan.actions {
        info!(?action, "rollout");
        match action {
            rollout::Action::SetState {
                node,
                state,
                reason,
                revision,
            } => {
                let patch = json!({"metadata": {
                    "labels": {UPGRADE_STATE_LABEL: state.as_label()},
                    "annotations": {
                        UPGRADE_SINCE_ANNOTATION: now.to_string(),
                        UPGRADE_REASON_ANNOTATION: reason,
                        UPGRADE_TARGET_ANNOTATION: revision,
                    },
                }});
                patch_node(ctx, node, &patch).await?;
            }
            rollout::Action::Cordon { node } => {
                // Read again and write with its resourceVersion: if an admin cordoned
                // the node meanwhile, it stays theirs (never marked as ours).
                let live = Api::<Node>::all(ctx.client.clone()).get(node).await?;
                if observe::unschedulable(&live) {
                    continue;
                }
                let patch = json!({
                    "metadata": {
                        "resourceVersion": live.metadata.resource_version,
                        "annotations": {CORDONED_BY_OPERATOR_ANNOTATION: "true"},
                    },
                    "spec": {"unschedulable": true},
                });
                patch_node(ctx, node, &patch).await?;
            }
            rollout::Action::Uncordon { node } => {
                let patch = json!({
                    "metadata": {"annotations": {CORDONED_BY_OPERATOR_ANNOTATION: null}},
                    "spec": {"unschedulable": null},
                });
                patch_node(ctx, node, &patch).await?;
            }
            rollout::Action::Evict { namespace, pod, .. } => {
                let params = EvictParams {
                    delete_options: sr.spec.rollout.eviction.grace_period_seconds.map(|g| {
                        DeleteParams {
                            grace_period_seconds: Some(g),
                            ..Default::default()
                        }
                    }),
                    ..Default::default()
                };
                ctx.metrics.write();
                match Api::<Pod>::namespaced(ctx.client.clone(), namespace)
                    .evict(pod, &params)
                    .await
                {
                    Ok(_) => {}
                    // A PodDisruptionBudget says not now: the phase timeout decides.
                    Err(kube::Error::Api(e)) if e.code == 429 || e.code == 404 => {
                        info!(%namespace, %pod, code = e.code, message = %e.message, "eviction not done");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            rollout::Action::DeletePod { pod, .. } => {
                ctx.metrics.write();
                match pods.delete(pod, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// Deletion: release nodes one by one as soon as nothing on them uses AFS volumes of
/// the driver; report the rest; remove our objects once no module pod is left.
async fn cleanup(sr: &SpecialResource, ctx: &Context) -> Result<Action, Error> {
    let name = sr.name_any();
    let observed = observe_group(sr, &ctx.client).await?;
    let index = GroupIndex::new(sr, &observed);
    let all = ctx.srs.state();
    let live = group::live_by_age(&all);
    // A node that another live SR also selects is not ours to release.
    let taken_by_other = |node: &Node| {
        live.iter()
            .any(|o| o.name_any() != name && group::selects(&o.spec.node_selector, node.labels()))
    };
    let mut in_use = Vec::new();
    for node in &observed.nodes {
        let node_name = node.name_any();
        if taken_by_other(node) {
            continue;
        }
        let pods: Vec<String> = index
            .users(&node_name)
            .iter()
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        let published = observe::published_volumes(node).unwrap_or(0);
        if !pods.is_empty() || published > 0 {
            in_use.push(NodeUsage {
                node: node_name,
                pods,
            });
            continue;
        }
        // Only a node still running our pods needs releasing. A late pass (the SR
        // already gone) then finds none and labels nothing it could not clean up.
        let has_our_pods = index.runs_own_pods(&node_name);
        if has_our_pods && node.labels().get(RELEASE_LABEL) != Some(&name) {
            patch_node(
                ctx,
                &node_name,
                &json!({"metadata": {"labels": {RELEASE_LABEL: name}}}),
            )
            .await?;
        }
    }
    let module_pods: Vec<&Pod> = observed
        .own_pods
        .iter()
        .filter(|p| observe::component(p) == Some(objects::KMOD_COMPONENT))
        // A pod never scheduled loaded nothing; it goes with its DaemonSet.
        .filter(|p| pod_node(p).is_some())
        .collect();
    if !module_pods.is_empty() {
        let waiting: Vec<&str> = module_pods.iter().filter_map(|p| pod_node(p)).collect();
        let message = if in_use.is_empty() {
            format!("unloading the module on {}", waiting.join(", "))
        } else {
            in_use
                .iter()
                .map(|u| {
                    format!(
                        "{}: {}",
                        u.node,
                        if u.pods.is_empty() {
                            "volumes still published".to_owned()
                        } else {
                            u.pods.join(", ")
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let status = SpecialResourceStatus {
            state: Some("Deleting".into()),
            group: Some(group::selector_string(&sr.spec.node_selector)),
            in_use,
            ..sr.status.clone().unwrap_or_default()
        };
        let verdicts = [
            Verdict::new(READY, false, "Deleting", message.clone()),
            Verdict::new(
                PROGRESSING,
                true,
                "Deleting",
                format!("{} module pod(s) left", module_pods.len()),
            ),
            Verdict::new(DEGRADED, false, "Deleting", message.clone()),
        ];
        write_status(sr, ctx, status, &verdicts).await?;
        return Err(Error::CleanupWaiting(message));
    }
    delete_objects(sr, ctx, &live).await?;
    release_namespace(sr, ctx).await?;
    let node_api = Api::<Node>::all(ctx.client.clone());
    for observed_node in &observed.nodes {
        // Read again: the release label may have been set during this pass.
        let Some(node) = node_api.get_opt(&observed_node.name_any()).await? else {
            continue;
        };
        if taken_by_other(&node) {
            continue;
        }
        if let Some(patch) = nodes::release_patch(&node) {
            patch_node(ctx, &node.name_any(), &patch).await?;
        }
    }
    info!("every module unloaded and every object removed");
    Ok(Action::await_change())
}

async fn delete_objects(
    sr: &SpecialResource,
    ctx: &Context,
    live: &[&SpecialResource],
) -> Result<(), Error> {
    let c = &ctx.client;
    let ns = sr.spec.namespace.as_str();
    let name = sr.name_any();
    // The operator's rights in the namespace come from its binding there, made when
    // the SR was applied. Without it (an SR refused for overlap never made one; another
    // SR of the namespace deleted at the same time removed it; a pass on an SR already
    // gone, whose cleanup removed it) it is not made again: the SR's objects there are
    // owned by the SR, and the garbage collector deletes them with it.
    let in_namespace = Api::<RoleBinding>::namespaced(c.clone(), ns)
        .get_opt(objects::OPERATOR_BINDING)
        .await?
        .is_some();
    if !in_namespace {
        info!(namespace = %ns, "no binding of the operator in the namespace: its objects go with the SR");
    }
    if in_namespace {
        prune::<DaemonSet>(ctx, &Api::namespaced(c.clone(), ns), &name, &[]).await?;
        prune::<Deployment>(ctx, &Api::namespaced(c.clone(), ns), &name, &[]).await?;
    }
    prune::<StorageClass>(ctx, &Api::all(c.clone()), &name, &[]).await?;
    prune::<ClusterRoleBinding>(ctx, &Api::all(c.clone()), &name, &[]).await?;
    if in_namespace {
        prune::<RoleBinding>(ctx, &Api::namespaced(c.clone(), ns), &name, &[]).await?;
        prune::<ConfigMap>(ctx, &Api::namespaced(c.clone(), ns), &name, &[]).await?;
        prune::<ServiceAccount>(ctx, &Api::namespaced(c.clone(), ns), &name, &[]).await?;
        // Last: it authorized the deletions above.
        unbind_operator(ctx, sr, live).await?;
    }
    // The CSIDriver is shared: it goes with the last SR of its driver name.
    let driver = &sr.spec.csi.driver_name;
    if !live
        .iter()
        .any(|o| o.name_any() != name && &o.spec.csi.driver_name == driver)
    {
        // Never another vendor's: only a CSIDriver SpecialResources own or made.
        let api = Api::<CSIDriver>::all(c.clone());
        let live = api.get_opt(driver).await?;
        if ownership::csi_driver_ownership(live.as_ref()) == DriverOwnership::Ours {
            ctx.metrics.write();
            api.delete(driver, &DeleteParams::background()).await?;
        }
    }
    Ok(())
}

/// Takes back what the operator added to the SR's namespace (the privileged Pod
/// Security level): the namespace stays, with the user's maps, at the cluster's
/// default level. A namespace that is not the SR's, or is being deleted, is left alone.
async fn release_namespace(sr: &SpecialResource, ctx: &Context) -> Result<(), Error> {
    let api = Api::<Namespace>::all(ctx.client.clone());
    let Some(namespace) = api.get_opt(&sr.spec.namespace).await? else {
        return Ok(());
    };
    let Some(patch) = ownership::namespace_release_patch(&sr.name_any(), &namespace) else {
        return Ok(());
    };
    ctx.metrics.write();
    info!(namespace = %sr.spec.namespace, "removing the operator's labels from the namespace");
    api.patch(
        &sr.spec.namespace,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_message_names_what_kmod_manager_reports_on_the_first_nodes() {
        assert_eq!(not_ready_message("2/3 nodes ready", &[]), "2/3 nodes ready");
        assert_eq!(
            not_ready_message(
                "2/3 nodes ready",
                &["n2: afsd exited (status 1)".to_owned()]
            ),
            "2/3 nodes ready; kmod-manager reports n2: afsd exited (status 1)"
        );
        let many: Vec<String> = (1..=7).map(|i| format!("n{i}: loading yfs")).collect();
        let message = not_ready_message("0/7 nodes ready", &many);
        assert!(
            message.contains("n5: loading yfs; and 2 more node(s)"),
            "{message}"
        );
        assert!(!message.contains("n6"), "{message}");
    }

    #[test]
    fn an_owned_object_maps_to_its_cluster_scoped_sr() {
        let daemon_set: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "kmod", "namespace": "afs-g1", "ownerReferences": [
                {"apiVersion": "afs.csi.auristor.com/v1alpha1", "kind": "SpecialResource", "name": "g1", "uid": "u1"},
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "other", "uid": "u2"},
            ]},
        }))
        .expect("daemon set");
        let keys = owning_srs(&daemon_set);
        assert_eq!(keys, vec![ObjectRef::<SpecialResource>::new("g1")]);
        assert_eq!(keys[0].namespace, None, "the same key as the SR watch");
    }
}
