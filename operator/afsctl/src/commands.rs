//! `deploy`, `undeploy` and `status`: the admin's view of one node group.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use afs_operator::controller::observe_group;
use afs_operator::crd::SpecialResource;
use afs_operator::group;
use afs_operator::labels::{
    CREATED_BY_AFSCTL, CREATED_BY_ANNOTATION, NAMESPACE_OF_ANNOTATION, RELEASE_LABEL, SR_LABEL,
};
use afs_operator::nodes::release_patch;
use afs_operator::objects::KMOD_COMPONENT;
use afs_operator::ownership::{self, NamespaceOwnership};
use afs_operator::status::READY;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::cluster::{FIELD_MANAGER, Target};
use crate::progress::{self, NodeRow, Rollout};
use crate::validate::{InvalidSpecialResource, MapKeys};
use crate::{install, maps};

/// How often the waits look again.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("SpecialResource file {file}: {source}")]
    Invalid {
        file: PathBuf,
        source: InvalidSpecialResource,
    },
    #[error("cannot read {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("maps file {file}: {source}")]
    MapsFile {
        file: PathBuf,
        source: serde_norway::Error,
    },
    #[error(
        "SpecialResource file {file}: the maps given lack what the AFS client reads:\n  {}",
        .problems.join("\n  ")
    )]
    ClientFiles {
        file: PathBuf,
        problems: Vec<String>,
    },
    #[error(transparent)]
    Connect(#[from] crate::cluster::ConnectError),
    #[error(transparent)]
    Install(#[from] install::InstallError),
    #[error(transparent)]
    Maps(#[from] maps::MapsError),
    #[error("{action}: {source}")]
    Kube { action: String, source: kube::Error },
    #[error("{0}")]
    Refused(String),
    /// The namespace or CSIDriver the file names is not the SR's: nothing was done.
    #[error("SpecialResource {name} is refused, nothing was changed:\n  {}", .reasons.join("\n  "))]
    NotOwned { name: String, reasons: Vec<String> },
    /// The file changes what the API server keeps immutable.
    #[error(
        "SpecialResource {name} is deployed with another spec.namespace or spec.csi.driverName; undeploy it first (bin/redeploy): {source}"
    )]
    Immutable {
        name: String,
        source: InvalidSpecialResource,
    },
    #[error(
        "pods on the group's nodes use AFS volumes of driver {driver}:\n  {}\nstop them first, or pass --force: the SpecialResource is then removed node by node as they go, and no module is unloaded under them",
        .pods.join("\n  ")
    )]
    InUse { driver: String, pods: Vec<String> },
    #[error("timed out after {}s {what}:\n  {}", .after.as_secs(), .blockers.join("\n  "))]
    Timeout {
        what: String,
        after: Duration,
        blockers: Vec<String>,
    },
    #[error("SpecialResource {name} left objects behind:\n  {}", .leftovers.join("\n  "))]
    Leftovers {
        name: String,
        leftovers: Vec<String>,
    },
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CommandError {
    let action = action.into();
    move |source| CommandError::Kube { action, source }
}

/// Reads and admits the SR file.
pub fn load(file: &Path) -> Result<SpecialResource, CommandError> {
    let text = std::fs::read_to_string(file).map_err(|source| CommandError::Read {
        file: file.to_owned(),
        source,
    })?;
    crate::validate::special_resource(&text).map_err(|source| CommandError::Invalid {
        file: file.to_owned(),
        source,
    })
}

/// `afsctl validate`: the SR file admitted ([`load`]) and, when files of ConfigMaps
/// and Secrets are given (`maps`), the files its AFS client reads found in those it
/// mounts ([`crate::validate::client_files`]).
pub fn validate(file: &Path, maps: &[PathBuf]) -> Result<SpecialResource, CommandError> {
    let sr = load(file)?;
    if maps.is_empty() {
        return Ok(sr);
    }
    let mut known = Vec::new();
    for path in maps {
        let text = std::fs::read_to_string(path).map_err(|source| CommandError::Read {
            file: path.clone(),
            source,
        })?;
        known.extend(
            MapKeys::from_yaml(&text).map_err(|source| CommandError::MapsFile {
                file: path.clone(),
                source,
            })?,
        );
    }
    let problems = crate::validate::client_files(&sr, &known);
    if problems.is_empty() {
        Ok(sr)
    } else {
        Err(CommandError::ClientFiles {
            file: file.to_owned(),
            problems,
        })
    }
}

fn selector(sr: &SpecialResource) -> String {
    group::selector_string(&sr.spec.node_selector)
}

#[derive(Debug, Clone)]
pub struct DeployOptions {
    pub file: PathBuf,
    pub create_maps: PathBuf,
    pub timeout: Duration,
    pub operator_image: Option<String>,
}

/// Idempotent: everything it creates is applied, so a second run after a failure
/// continues where the first stopped.
pub async fn deploy(
    client: &Client,
    target: &Target,
    options: &DeployOptions,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let sr = load(&options.file)?;
    let name = sr.name_any();
    let namespace = sr.spec.namespace.clone();
    let _ = writeln!(
        out,
        "SpecialResource {name} (namespace {namespace}, nodes {})",
        selector(&sr)
    );

    let existing = preflight(client, &sr).await?;

    let _ = writeln!(out, "[1/6] operator");
    install::ensure(client, options.operator_image.as_deref(), false, out).await?;

    let _ = writeln!(out, "[2/6] namespace {namespace}");
    // Created, not applied: the operator applies its own labels to it. Created marked
    // as the SR's and as afsctl's, so that undeploy deletes it and nothing else.
    let namespaces = Api::<Namespace>::all(client.clone());
    if let Some(ns) = &existing {
        let _ = match namespace_fate(&name, Some(ns)) {
            NamespaceFate::Keep(why) => writeln!(out, "  present; undeploy keeps it: {why}"),
            _ => writeln!(out, "  present (an earlier deploy created it)"),
        };
    } else {
        namespaces
            .create(
                &PostParams::default(),
                &created_namespace(&name, &namespace),
            )
            .await
            .map_err(kube_error(format!("creating namespace {namespace}")))?;
        let _ = writeln!(out, "  created");
    }

    let _ = writeln!(out, "[3/6] maps");
    maps::run(&options.create_maps, &sr, &options.file, target, out)?;

    let _ = writeln!(out, "[4/6] checking the maps the SpecialResource mounts");
    maps::check_referenced(client, &sr, &options.create_maps).await?;

    let _ = writeln!(out, "[5/6] applying SpecialResource {name}");
    let srs = Api::<SpecialResource>::all(client.clone());
    let mut applied =
        serde_json::to_value(&sr).map_err(|e| CommandError::Refused(e.to_string()))?;
    // Status belongs to the operator.
    if let Some(object) = applied.as_object_mut() {
        object.remove("status");
    }
    srs.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&applied),
    )
    .await
    .map_err(kube_error(format!("applying SpecialResource {name}")))?;

    let _ = writeln!(
        out,
        "[6/6] waiting up to {}s for every node to load the module and register the driver",
        options.timeout.as_secs()
    );
    follow(client, &name, options.timeout, true, out).await
}

/// What deploy checks before it changes anything: the file does not change what the
/// API server keeps immutable, and the namespace and CSIDriver it names are the SR's
/// or missing (the operator's own rule, [`ownership::refusals`]). Returns the namespace
/// when it exists.
async fn preflight(
    client: &Client,
    sr: &SpecialResource,
) -> Result<Option<Namespace>, CommandError> {
    let name = sr.name_any();
    let live = match Api::<SpecialResource>::all(client.clone()).get(&name).await {
        Ok(live) => Some(live),
        // Also what a cluster without the CRD answers (deploy installs it next).
        Err(kube::Error::Api(e)) if e.code == 404 => None,
        Err(e) => return Err(kube_error(format!("reading SpecialResource {name}"))(e)),
    };
    if let Some(live) = &live {
        crate::validate::update(sr, live).map_err(|source| CommandError::Immutable {
            name: name.clone(),
            source,
        })?;
    }
    let namespace = Api::<Namespace>::all(client.clone())
        .get_opt(&sr.spec.namespace)
        .await
        .map_err(kube_error(format!(
            "reading namespace {}",
            sr.spec.namespace
        )))?;
    let driver = Api::<CSIDriver>::all(client.clone())
        .get_opt(&sr.spec.csi.driver_name)
        .await
        .map_err(kube_error(format!(
            "reading CSIDriver {}",
            sr.spec.csi.driver_name
        )))?;
    let refusals = ownership::refusals(&name, &sr.spec, namespace.as_ref(), driver.as_ref());
    if !refusals.is_empty() {
        return Err(CommandError::NotOwned {
            name,
            reasons: refusals.into_iter().map(|r| r.message).collect(),
        });
    }
    Ok(namespace)
}

/// The namespace deploy creates: marked as the SR's (so the operator deploys into it)
/// and as made by afsctl (so undeploy deletes it).
fn created_namespace(sr: &str, namespace: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.to_owned()),
            annotations: Some(BTreeMap::from([
                (NAMESPACE_OF_ANNOTATION.to_owned(), sr.to_owned()),
                (
                    CREATED_BY_ANNOTATION.to_owned(),
                    CREATED_BY_AFSCTL.to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// What undeploy does with the SR's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamespaceFate {
    /// Already gone.
    Absent,
    /// `afsctl deploy` created it for this SR: it goes.
    Delete,
    /// It existed before deploy (or belongs to another SR): it stays, for this reason.
    Keep(String),
}

/// Undeploy deletes only a namespace that deploy created for this SR (pure).
fn namespace_fate(sr: &str, namespace: Option<&Namespace>) -> NamespaceFate {
    let Some(ns) = namespace else {
        return NamespaceFate::Absent;
    };
    let created_by = ns
        .annotations()
        .get(CREATED_BY_ANNOTATION)
        .map(String::as_str);
    match (ownership::namespace_ownership(sr, Some(ns)), created_by) {
        (NamespaceOwnership::Ours, Some(CREATED_BY_AFSCTL)) => NamespaceFate::Delete,
        (
            NamespaceOwnership::NotOurs {
                marked_for: Some(other),
            },
            _,
        ) => NamespaceFate::Keep(format!(
            "it belongs to SpecialResource {other} ({NAMESPACE_OF_ANNOTATION}={other})"
        )),
        _ => NamespaceFate::Keep(format!(
            "it existed before afsctl deploy (no {CREATED_BY_ANNOTATION}={CREATED_BY_AFSCTL} annotation)"
        )),
    }
}

/// Prints node rows and the summary whenever they change until the rollout is done
/// (or once, without `watch`).
pub async fn follow(
    client: &Client,
    name: &str,
    timeout: Duration,
    watch: bool,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let srs = Api::<SpecialResource>::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut last_summary = String::new();
    loop {
        let sr = srs
            .get_opt(name)
            .await
            .map_err(kube_error(format!("reading SpecialResource {name}")))?
            .ok_or_else(|| {
                CommandError::Refused(format!(
                    "SpecialResource {name} not found: deploy it first (bin/deploy)"
                ))
            })?;
        let observed = observe_group(&sr, client)
            .await
            .map_err(kube_error(format!("reading the nodes of {name}")))?;
        let rows = progress::node_rows(&sr, &observed);
        for row in &rows {
            let line = row.to_string();
            if shown.get(&row.node) != Some(&line) {
                let _ = writeln!(out, "  {line}");
                shown.insert(row.node.clone(), line);
            }
        }
        match progress::rollout(&sr) {
            Rollout::Done { ready, total } => {
                if total == 0 {
                    let _ = writeln!(
                        out,
                        "warning: no node carries the labels {}; label the group's nodes (kubectl label node <node> {})",
                        selector(&sr),
                        selector(&sr)
                    );
                }
                let _ = writeln!(out, "{}", progress::done_line(name, ready, total));
                return Ok(());
            }
            Rollout::Refused { message } => return Err(CommandError::Refused(message)),
            Rollout::Waiting { summary } => {
                if summary != last_summary {
                    let _ = writeln!(out, "{summary}");
                    last_summary = summary;
                }
                if !watch {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(CommandError::Timeout {
                        what: format!("waiting for SpecialResource {name} to be Ready"),
                        after: timeout,
                        blockers: timeout_blockers(client, &last_summary, &rows).await,
                    });
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn timeout_blockers(client: &Client, summary: &str, rows: &[NodeRow]) -> Vec<String> {
    let mut blockers = vec![summary.to_owned()];
    blockers.extend(
        rows.iter()
            .filter(|r| !r.serving)
            .map(|r| format!("{}: {}", r.node, r.blockers.join("; "))),
    );
    if let Some(problem) = install::operator_problem(client).await {
        blockers.push(problem);
    }
    blockers
}

#[derive(Debug, Clone)]
pub struct UndeployOptions {
    pub file: PathBuf,
    pub delete_maps: PathBuf,
    pub force: bool,
    pub timeout: Duration,
}

pub async fn undeploy(
    client: &Client,
    target: &Target,
    options: &UndeployOptions,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let sr = load(&options.file)?;
    let name = sr.name_any();
    let namespace = sr.spec.namespace.clone();
    let driver = sr.spec.csi.driver_name.clone();
    let srs = Api::<SpecialResource>::all(client.clone());
    let live = srs
        .get_opt(&name)
        .await
        .map_err(kube_error(format!("reading SpecialResource {name}")))?;

    let _ = writeln!(out, "[1/6] AFS users on the nodes {}", selector(&sr));
    match &live {
        None => {
            let _ = writeln!(
                out,
                "  SpecialResource {name} is not deployed; removing what is left of it"
            );
        }
        Some(live) => {
            let observed = observe_group(live, client)
                .await
                .map_err(kube_error(format!("reading the nodes of {name}")))?;
            let pods: Vec<String> = observed.afs_pods.iter().map(pod_on_node).collect();
            if pods.is_empty() {
                let _ = writeln!(out, "  none");
            } else if options.force {
                let _ = writeln!(
                    out,
                    "  --force: continuing; these nodes are released as their pods go:\n    {}",
                    pods.join("\n    ")
                );
            } else {
                return Err(CommandError::InUse { driver, pods });
            }
        }
    }

    let _ = writeln!(out, "[2/6] deleting SpecialResource {name}");
    if live.is_some() {
        match srs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_error(format!("deleting SpecialResource {name}"))(e)),
        }
    }

    let _ = writeln!(
        out,
        "[3/6] waiting up to {}s for the modules to be unloaded node by node",
        options.timeout.as_secs()
    );
    wait_unloaded(client, &sr, options.timeout, out).await?;

    let _ = writeln!(out, "[4/6] maps");
    maps::run(&options.delete_maps, &sr, &options.file, target, out)?;

    let _ = writeln!(out, "[5/6] namespace {namespace}");
    let live_namespace = Api::<Namespace>::all(client.clone())
        .get_opt(&namespace)
        .await
        .map_err(kube_error(format!("reading namespace {namespace}")))?;
    let kept = match namespace_fate(&name, live_namespace.as_ref()) {
        NamespaceFate::Absent => {
            let _ = writeln!(out, "  already gone");
            false
        }
        NamespaceFate::Delete => {
            let _ = writeln!(out, "  deleting (afsctl deploy created it)");
            delete_namespace(client, &namespace, options.timeout).await?;
            false
        }
        NamespaceFate::Keep(why) => {
            let _ = writeln!(out, "  kept: {why}");
            true
        }
    };

    let _ = writeln!(out, "[6/6] verifying");
    let leftovers = leftovers(client, &sr, kept).await?;
    if !leftovers.is_empty() {
        return Err(CommandError::Leftovers { name, leftovers });
    }
    let namespace_note = if kept {
        format!("namespace {namespace} kept, without the operator's labels")
    } else {
        format!("no namespace {namespace}")
    };
    let _ = writeln!(
        out,
        "nothing of SpecialResource {name} remains: no module pod, no object, no node label or taint, {namespace_note}"
    );
    Ok(())
}

fn pod_on_node(pod: &Pod) -> String {
    format!(
        "{}/{} on {}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("?")
    )
}

/// Until the SR is gone (its finalizer goes once no module pod is left) and no module
/// pod of it remains.
async fn wait_unloaded(
    client: &Client,
    sr: &SpecialResource,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let name = sr.name_any();
    let srs = Api::<SpecialResource>::all(client.clone());
    let pods = Api::<Pod>::namespaced(client.clone(), &sr.spec.namespace);
    let modules = ListParams::default().labels(&format!(
        "{SR_LABEL}={name},app.kubernetes.io/component={KMOD_COMPONENT}"
    ));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let live = srs
            .get_opt(&name)
            .await
            .map_err(kube_error(format!("reading SpecialResource {name}")))?;
        let module_pods: Vec<String> = pods
            .list(&modules)
            .await
            .map_err(kube_error("listing module pods"))?
            .items
            .iter()
            .map(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_else(|| p.name_any())
            })
            .collect();
        let waiting = match &live {
            Some(live) => live
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "waiting for the operator".to_owned()),
            None if module_pods.is_empty() => {
                let _ = writeln!(out, "  every module of {name} is unloaded");
                return Ok(());
            }
            None => format!("module pods left on {}", module_pods.join(", ")),
        };
        if waiting != last {
            let _ = writeln!(out, "  {waiting}");
            last = waiting;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CommandError::Timeout {
                what: format!("waiting for the modules of {name} to be unloaded"),
                after: timeout,
                blockers: vec![
                    last,
                    format!(
                        "SpecialResource {name} stays Deleting; the operator finishes once nothing uses AFS; run undeploy again to follow it"
                    ),
                ],
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn delete_namespace(
    client: &Client,
    namespace: &str,
    timeout: Duration,
) -> Result<(), CommandError> {
    let api = Api::<Namespace>::all(client.clone());
    match api.delete(namespace, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(kube_error(format!("deleting namespace {namespace}"))(e)),
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let Some(ns) = api
            .get_opt(namespace)
            .await
            .map_err(kube_error(format!("reading namespace {namespace}")))?
        else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline {
            let conditions = ns
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.status == "True")
                .map(|c| format!("{}: {}", c.type_, c.message.unwrap_or_default()))
                .collect();
            return Err(CommandError::Timeout {
                what: format!("waiting for namespace {namespace} to be deleted"),
                after: timeout,
                blockers: conditions,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Everything of the SR still in the cluster, each named so the admin can act on it.
/// A `kept` namespace (one deploy did not create) is no leftover, but the operator's
/// labels on it are.
async fn leftovers(
    client: &Client,
    sr: &SpecialResource,
    kept: bool,
) -> Result<Vec<String>, CommandError> {
    let name = sr.name_any();
    let mut left = Vec::new();
    let read = |what: &str| kube_error(format!("verifying: reading {what}"));
    let others: Vec<SpecialResource> = Api::<SpecialResource>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(read("SpecialResources"))?
        .items
        .into_iter()
        .filter(|o| o.name_any() != name)
        .collect();
    if Api::<SpecialResource>::all(client.clone())
        .get_opt(&name)
        .await
        .map_err(read("SpecialResources"))?
        .is_some()
    {
        left.push(format!("SpecialResource {name}"));
    }
    let namespace = Api::<Namespace>::all(client.clone())
        .get_opt(&sr.spec.namespace)
        .await
        .map_err(read("namespaces"))?;
    match namespace {
        Some(_) if !kept => left.push(format!("Namespace {}", sr.spec.namespace)),
        Some(ns) => {
            if let Some(patch) = ownership::namespace_release_patch(&name, &ns) {
                left.push(format!(
                    "Namespace {} still carries {}",
                    sr.spec.namespace,
                    describe_patch(&patch)
                ));
            }
        }
        None => {}
    }
    let ours = ListParams::default().labels(&format!("{SR_LABEL}={name}"));
    for role in Api::<ClusterRole>::all(client.clone())
        .list(&ours)
        .await
        .map_err(read("ClusterRoles"))?
    {
        left.push(format!("ClusterRole {}", role.name_any()));
    }
    for binding in Api::<ClusterRoleBinding>::all(client.clone())
        .list(&ours)
        .await
        .map_err(read("ClusterRoleBindings"))?
    {
        left.push(format!("ClusterRoleBinding {}", binding.name_any()));
    }
    for class in Api::<StorageClass>::all(client.clone())
        .list(&ours)
        .await
        .map_err(read("StorageClasses"))?
    {
        left.push(format!("StorageClass {}", class.name_any()));
    }
    let driver = &sr.spec.csi.driver_name;
    let driver_shared = others.iter().any(|o| &o.spec.csi.driver_name == driver);
    if !driver_shared
        && Api::<CSIDriver>::all(client.clone())
            .get_opt(driver)
            .await
            .map_err(read("CSIDrivers"))?
            .is_some_and(|d| {
                ownership::csi_driver_ownership(Some(&d)) == ownership::DriverOwnership::Ours
            })
    {
        left.push(format!("CSIDriver {driver}"));
    }
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(read("nodes"))?;
    for node in &nodes {
        let selected = group::selects(&sr.spec.node_selector, node.labels());
        let released_by_us = node.labels().get(RELEASE_LABEL) == Some(&name);
        let taken = others
            .iter()
            .any(|o| group::selects(&o.spec.node_selector, node.labels()));
        if (selected || released_by_us)
            && !taken
            && let Some(patch) = release_patch(node)
        {
            left.push(format!(
                "node {} still carries {}",
                node.name_any(),
                describe_patch(&patch)
            ));
        }
    }
    Ok(left)
}

/// The keys a release patch would remove, for the leftover report.
fn describe_patch(patch: &serde_json::Value) -> String {
    let mut keys: Vec<String> = Vec::new();
    for field in ["labels", "annotations"] {
        if let Some(map) = patch["metadata"][field].as_object() {
            keys.extend(
                map.keys()
                    .map(|k| format!("{} {k}", &field[..field.len() - 1])),
            );
        }
    }
    if patch["spec"].get("taints").is_some() {
        keys.push("a readiness taint".to_owned());
    }
    if patch["spec"].get("unschedulable").is_some() {
        keys.push("the operator's cordon".to_owned());
    }
    keys.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(annotations: &[(&str, &str)]) -> Namespace {
        let mut ns = created_namespace("g1", "afs-g1");
        ns.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        ns
    }

    #[test]
    fn deploy_creates_the_namespace_marked_for_the_sr_and_by_afsctl() {
        let ns = created_namespace("g1", "afs-g1");
        assert_eq!(ns.metadata.name.as_deref(), Some("afs-g1"));
        assert_eq!(
            ownership::namespace_ownership("g1", Some(&ns)),
            NamespaceOwnership::Ours,
            "the operator deploys into it"
        );
        assert_eq!(namespace_fate("g1", Some(&ns)), NamespaceFate::Delete);
    }

    #[test]
    fn undeploy_deletes_only_a_namespace_deploy_created_for_this_sr() {
        assert_eq!(namespace_fate("g1", None), NamespaceFate::Absent);
        let kept = [
            // Existed before, handed over by the admin, or made by the operator.
            namespace(&[(NAMESPACE_OF_ANNOTATION, "g1")]),
            namespace(&[]),
            // Made by afsctl for another SR.
            namespace(&[
                (NAMESPACE_OF_ANNOTATION, "g2"),
                (CREATED_BY_ANNOTATION, CREATED_BY_AFSCTL),
            ]),
            // Someone else's record.
            namespace(&[
                (NAMESPACE_OF_ANNOTATION, "g1"),
                (CREATED_BY_ANNOTATION, "helm"),
            ]),
        ];
        for ns in &kept {
            assert!(
                matches!(namespace_fate("g1", Some(ns)), NamespaceFate::Keep(_)),
                "{:?}",
                ns.metadata.annotations
            );
        }
        let NamespaceFate::Keep(why) = namespace_fate("g1", Some(&kept[0])) else {
            unreachable!()
        };
        assert!(why.contains("existed before afsctl deploy"), "{why}");
        let NamespaceFate::Keep(why) = namespace_fate("g1", Some(&kept[2])) else {
            unreachable!()
        };
        assert!(why.contains("belongs to SpecialResource g2"), "{why}");
    }
}
