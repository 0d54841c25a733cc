//! The trust boundary of one SpecialResource (pure): what it may touch besides the
//! objects it creates and owns. A namespace is the SR's only when it carries the SR's
//! [`NAMESPACE_OF_ANNOTATION`]; a CSIDriver belongs to SpecialResources only when one
//! owns it (owner reference) or the operator made it (managed-by label). Anything else
//! is someone else's: the SR is refused, and the object is never labelled, patched,
//! owner-referenced or deleted. So naming `default`, a tenant's namespace or another
//! vendor's driver in a spec widens nothing.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};

use crate::crd::{API_GROUP, SpecialResource, SpecialResourceSpec};
use crate::labels::{MANAGED_BY_LABEL, NAMESPACE_OF_ANNOTATION};
use crate::objects::{MANAGED_BY, POD_SECURITY_ENFORCE_LABEL, POD_SECURITY_LEVEL};

/// Degraded reason: `spec.namespace` exists and is not the SR's.
pub const NAMESPACE_NOT_OWNED: &str = "NamespaceNotOwned";
/// Degraded reason: a CSIDriver named `spec.csi.driverName` exists and no
/// SpecialResource owns it.
pub const CSI_DRIVER_NOT_OWNED: &str = "CSIDriverNotOwned";

/// Whose `spec.namespace` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceOwnership {
    /// It does not exist: the operator creates it, marked as the SR's.
    Missing,
    /// It carries the SR's mark.
    Ours,
    /// It exists without the SR's mark; `marked_for` is the SR another mark names.
    NotOurs { marked_for: Option<String> },
}

pub fn namespace_ownership(sr: &str, live: Option<&Namespace>) -> NamespaceOwnership {
    let Some(namespace) = live else {
        return NamespaceOwnership::Missing;
    };
    match namespace.annotations().get(NAMESPACE_OF_ANNOTATION) {
        Some(owner) if owner == sr => NamespaceOwnership::Ours,
        other => NamespaceOwnership::NotOurs {
            marked_for: other.cloned(),
        },
    }
}

/// Whose the CSIDriver named `spec.csi.driverName` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverOwnership {
    /// It does not exist: the operator creates it, owned by the SRs of the name.
    Missing,
    /// A SpecialResource owns it, or the operator made it.
    Ours,
    /// Another driver's: refused, left alone.
    NotOurs,
}

pub fn csi_driver_ownership(live: Option<&CSIDriver>) -> DriverOwnership {
    let Some(driver) = live else {
        return DriverOwnership::Missing;
    };
    let kind = SpecialResource::kind(&());
    let owned = driver.owner_references().iter().any(|o| {
        o.kind == kind && o.api_version.split_once('/').map(|(g, _)| g) == Some(API_GROUP)
    });
    let made = driver.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
    if owned || made {
        DriverOwnership::Ours
    } else {
        DriverOwnership::NotOurs
    }
}

/// Why an SR may not be deployed: a Degraded reason and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// Everything that stops the SR `sr` from being deployed, given the live namespace and
/// CSIDriver its spec names (`None`: absent). Empty: go ahead.
pub fn refusals(
    sr: &str,
    spec: &SpecialResourceSpec,
    namespace: Option<&Namespace>,
    driver: Option<&CSIDriver>,
) -> Vec<Refusal> {
    let mut out = Vec::new();
    let ns = &spec.namespace;
    if let NamespaceOwnership::NotOurs { marked_for } = namespace_ownership(sr, namespace) {
        let whose = match marked_for {
            Some(other) => {
                format!("it belongs to SpecialResource {other} ({NAMESPACE_OF_ANNOTATION}={other})")
            }
            None => format!(
                "it was not created for this SpecialResource (no annotation {NAMESPACE_OF_ANNOTATION}={sr}); if it is meant for it, hand it over with `kubectl annotate namespace {ns} {NAMESPACE_OF_ANNOTATION}={sr}`"
            ),
        };
        out.push(Refusal {
            reason: NAMESPACE_NOT_OWNED,
            message: format!(
                "namespace {ns} already exists and is not this SpecialResource's: {whose}; otherwise recreate the SpecialResource with a namespace that does not exist yet (the operator creates it). Nothing is deployed and the namespace is left as it is"
            ),
        });
    }
    let name = &spec.csi.driver_name;
    if csi_driver_ownership(driver) == DriverOwnership::NotOurs {
        out.push(Refusal {
            reason: CSI_DRIVER_NOT_OWNED,
            message: format!(
                "CSIDriver {name} already exists and is not managed by SpecialResources (no SpecialResource owner reference, no {MANAGED_BY_LABEL}={MANAGED_BY} label): another driver uses this name; recreate the SpecialResource with a csi.driverName no other driver uses. Nothing is deployed and the CSIDriver is left as it is"
            ),
        });
    }
    out
}

/// The merge patch that takes back what the operator added to the SR's namespace (the
/// privileged Pod Security level and the managed-by label) once the SR is gone, or
/// `None` when there is nothing to take back: the namespace is not the SR's, is being
/// deleted anyway, or carries neither label as the operator set it.
///
/// The [`NAMESPACE_OF_ANNOTATION`] mark stays: it grants nothing by itself (the
/// privileged level, the grant, goes), and it records that the namespace was made for
/// this SR, which `afsctl undeploy` (running after the SR is gone) needs to tell its own
/// namespace from one that existed before, and which lets a re-created SR of the same
/// name use the namespace again.
pub fn namespace_release_patch(sr: &str, namespace: &Namespace) -> Option<Value> {
    if namespace_ownership(sr, Some(namespace)) != NamespaceOwnership::Ours
        || namespace.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let labels = namespace.labels();
    let mut remove = Map::new();
    for (key, ours) in [
        (POD_SECURITY_ENFORCE_LABEL, POD_SECURITY_LEVEL),
        (MANAGED_BY_LABEL, MANAGED_BY),
    ] {
        if labels.get(key).map(String::as_str) == Some(ours) {
            remove.insert(key.to_owned(), Value::Null);
        }
    }
    (!remove.is_empty()).then(|| json!({"metadata": {"labels": remove}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(value: Value) -> Namespace {
        let mut object = json!({"metadata": {"name": "afs-g1"}});
        json_patch::merge(&mut object, &value);
        serde_json::from_value(object).expect("namespace")
    }

    fn driver(value: Value) -> CSIDriver {
        let mut object = json!({"metadata": {"name": "auristorfs.csi.auristor.com"}, "spec": {}});
        json_patch::merge(&mut object, &value);
        serde_json::from_value(object).expect("csi driver")
    }

    fn spec() -> SpecialResourceSpec {
        serde_json::from_value(json!({
            "namespace": "afs-g1",
            "nodeSelector": {"g": "1"},
            "kmod": {"module": "kafs", "version": "1.0.0", "kernelMappings": [{"regexp": ".*", "containerImage": "r/k:${KERNEL_FULL_VERSION}"}]},
            "csi": {"image": "r/csi", "version": "1.0.0", "allowedCells": ["example.com"]},
        }))
        .expect("spec")
    }

    #[test]
    fn a_namespace_is_the_srs_only_with_its_mark() {
        assert_eq!(namespace_ownership("g1", None), NamespaceOwnership::Missing);
        let marked =
            namespace(json!({"metadata": {"annotations": {NAMESPACE_OF_ANNOTATION: "g1"}}}));
        assert_eq!(
            namespace_ownership("g1", Some(&marked)),
            NamespaceOwnership::Ours
        );
        assert_eq!(
            namespace_ownership("g2", Some(&marked)),
            NamespaceOwnership::NotOurs {
                marked_for: Some("g1".into())
            }
        );
        // The operator's own labels on it (put there by an older operator on any
        // namespace) are no proof of whose it is.
        let labelled = namespace(json!({"metadata": {"labels": {
            MANAGED_BY_LABEL: MANAGED_BY, POD_SECURITY_ENFORCE_LABEL: "privileged"}}}));
        assert_eq!(
            namespace_ownership("g1", Some(&labelled)),
            NamespaceOwnership::NotOurs { marked_for: None }
        );
    }

    #[test]
    fn a_csi_driver_is_ours_only_when_special_resources_own_or_made_it() {
        assert_eq!(csi_driver_ownership(None), DriverOwnership::Missing);
        let owned = driver(json!({"metadata": {"ownerReferences": [
            {"apiVersion": "afs.csi.auristor.com/v1alpha1", "kind": "SpecialResource", "name": "g1", "uid": "u1"}]}}));
        assert_eq!(csi_driver_ownership(Some(&owned)), DriverOwnership::Ours);
        let made = driver(json!({"metadata": {"labels": {MANAGED_BY_LABEL: MANAGED_BY}}}));
        assert_eq!(csi_driver_ownership(Some(&made)), DriverOwnership::Ours);
        for foreign in [
            json!({}),
            json!({"metadata": {"labels": {MANAGED_BY_LABEL: "helm"}}}),
            // Same kind, another API group: not a SpecialResource of ours.
            json!({"metadata": {"ownerReferences": [
                {"apiVersion": "sro.openshift.io/v1beta1", "kind": "SpecialResource", "name": "g1", "uid": "u1"}]}}),
            json!({"metadata": {"ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vendor", "uid": "u2"}]}}),
        ] {
            assert_eq!(
                csi_driver_ownership(Some(&driver(foreign.clone()))),
                DriverOwnership::NotOurs,
                "{foreign}"
            );
        }
    }

    #[test]
    fn refusals_name_the_object_the_mark_and_the_fix() {
        let spec = spec();
        assert_eq!(refusals("g1", &spec, None, None), []);
        let marked =
            namespace(json!({"metadata": {"annotations": {NAMESPACE_OF_ANNOTATION: "g1"}}}));
        let ours = driver(json!({"metadata": {"labels": {MANAGED_BY_LABEL: MANAGED_BY}}}));
        assert_eq!(refusals("g1", &spec, Some(&marked), Some(&ours)), []);

        let bare = namespace(json!({}));
        let foreign = driver(json!({}));
        let found = refusals("g1", &spec, Some(&bare), Some(&foreign));
        let reasons: Vec<&str> = found.iter().map(|r| r.reason).collect();
        assert_eq!(reasons, [NAMESPACE_NOT_OWNED, CSI_DRIVER_NOT_OWNED]);
        let ns = &found[0].message;
        for needle in [
            "namespace afs-g1",
            "kubectl annotate namespace afs-g1 afs.csi.auristor.com/namespace-of=g1",
            "Nothing is deployed",
        ] {
            assert!(ns.contains(needle), "{needle:?} in {ns}");
        }
        assert!(
            found[1]
                .message
                .contains("CSIDriver auristorfs.csi.auristor.com"),
            "{}",
            found[1].message
        );
        let other = refusals("g2", &spec, Some(&marked), None);
        assert!(
            other[0].message.contains("belongs to SpecialResource g1"),
            "{other:?}"
        );
    }

    #[test]
    fn releasing_a_namespace_takes_back_only_what_the_operator_added() {
        let ours = namespace(json!({"metadata": {
            "annotations": {NAMESPACE_OF_ANNOTATION: "g1"},
            "labels": {POD_SECURITY_ENFORCE_LABEL: "privileged", MANAGED_BY_LABEL: MANAGED_BY, "team": "afs"}}}));
        assert_eq!(
            namespace_release_patch("g1", &ours),
            Some(json!({"metadata": {"labels": {
                POD_SECURITY_ENFORCE_LABEL: null, MANAGED_BY_LABEL: null}}}))
        );
        assert_eq!(namespace_release_patch("g2", &ours), None, "not g2's");
        let mut deleting = ours.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(
            namespace_release_patch("g1", &deleting),
            None,
            "going anyway"
        );
        let admins = namespace(json!({"metadata": {
            "annotations": {NAMESPACE_OF_ANNOTATION: "g1"},
            "labels": {POD_SECURITY_ENFORCE_LABEL: "baseline"}}}));
        assert_eq!(
            namespace_release_patch("g1", &admins),
            None,
            "not our value"
        );
    }
}
