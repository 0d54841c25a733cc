//! Node groups across SpecialResources (pure): membership, overlaps, and which SR runs
//! the shared pieces of a CSI driver.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::crd::SpecialResource;

/// A node's identity as far as group membership goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLabels<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The node carries every label of the selector.
/// The selector as a label selector string, `k=v,...` (list calls, status, messages).
pub fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// SRs still alive (not being deleted), oldest first: creation time, then name.
pub fn live_by_age(all: &[std::sync::Arc<SpecialResource>]) -> Vec<&SpecialResource> {
    let mut live: Vec<&SpecialResource> = all
        .iter()
        .map(|sr| sr.as_ref())
        .filter(|sr| sr.metadata.deletion_timestamp.is_none())
        .collect();
    live.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.name_any(),
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                b.name_any(),
            ))
    });
    live
}

/// Another SR whose group shares nodes with ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub other: String,
    /// The other SR is older: ours is refused outright.
    pub other_is_older: bool,
    pub nodes: Vec<String>,
}

/// Every live SR whose selector also takes one of `nodes` (our group's nodes).
/// `live` is oldest first (see [`live_by_age`]).
pub fn overlaps(
    ours: &SpecialResource,
    live: &[&SpecialResource],
    nodes: &[NodeLabels<'_>],
) -> Vec<Overlap> {
    let our_name = ours.name_any();
    let our_rank = live.iter().position(|sr| sr.name_any() == our_name);
    live.iter()
        .enumerate()
        .filter(|(_, other)| other.name_any() != our_name)
        .filter_map(|(rank, other)| {
            let shared: Vec<String> = nodes
                .iter()
                .filter(|n| selects(&other.spec.node_selector, n.labels))
                .map(|n| n.name.to_owned())
                .collect();
            (!shared.is_empty()).then(|| Overlap {
                other: other.name_any(),
                other_is_older: our_rank.is_none_or(|ours| rank < ours),
                nodes: shared,
            })
        })
        .collect()
}

/// SRs sharing our CSI driver name (ours included when live), oldest first. The first
/// runs the driver's single controller; all of them own the shared CSIDriver.
pub fn driver_peers<'a>(
    ours: &SpecialResource,
    live: &[&'a SpecialResource],
) -> Vec<&'a SpecialResource> {
    live.iter()
        .copied()
        .filter(|sr| sr.spec.csi.driver_name == ours.spec.csi.driver_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use crate::crd::SpecialResourceSpec;

    fn sr(name: &str, created: i64, group: &str, driver: &str) -> Arc<SpecialResource> {
        let spec: SpecialResourceSpec = serde_json::from_value(serde_json::json!({
            "namespace": name,
            "nodeSelector": {"group": group},
            "kmod": {"module": "kafs", "version": "1.0.0", "kernelMappings": [{"regexp": ".*", "containerImage": "r/k:${KERNEL_FULL_VERSION}"}]},
            "csi": {"image": "r/csi", "version": "1.0.0", "driverName": driver, "allowedCells": ["example.com"]},
        }))
        .expect("spec");
        let mut sr = SpecialResource::new(name, spec);
        sr.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("time")));
        Arc::new(sr)
    }

    fn labels(group: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("group".to_owned(), group.to_owned())])
    }

    #[test]
    fn overlap_names_the_other_sr_the_shared_nodes_and_who_is_older() {
        let all = [
            sr("b", 20, "g1", "d"),
            sr("a", 10, "g1", "d"),
            sr("c", 30, "g2", "d"),
        ];
        let live = live_by_age(&all);
        assert_eq!(
            live.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let (l1, l2) = (labels("g1"), labels("g2"));
        let nodes = [
            NodeLabels {
                name: "n1",
                labels: &l1,
            },
            NodeLabels {
                name: "n2",
                labels: &l2,
            },
        ];
        let b = overlaps(&all[0], &live, &nodes[..1]);
        assert_eq!(
            b,
            [Overlap {
                other: "a".into(),
                other_is_older: true,
                nodes: vec!["n1".into()]
            }]
        );
        let a = overlaps(&all[1], &live, &nodes[..1]);
        assert_eq!(
            a,
            [Overlap {
                other: "b".into(),
                other_is_older: false,
                nodes: vec!["n1".into()]
            }]
        );
        assert!(overlaps(&all[2], &live, &nodes[1..]).is_empty());
    }

    #[test]
    fn the_oldest_sr_of_a_driver_runs_its_controller() {
        let all = [
            sr("b", 20, "g1", "d"),
            sr("a", 10, "g2", "other"),
            sr("c", 5, "g3", "d"),
        ];
        let live = live_by_age(&all);
        let peers = driver_peers(&all[0], &live);
        assert_eq!(
            peers.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
            ["c", "b"]
        );
    }
}
