//! A steady-state reconcile of an SR with nothing to change: how many write requests it
//! makes (the goal is zero) and how long it takes, against the in-memory API server of
//! the reconcile tests. `NODES` (default 100) sets the group size.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use afs_operator::controller::{Context, reconcile};
use afs_operator::crd::SpecialResource;
use afs_operator::metrics::Metrics;
use common::FakeApi;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::json;

const SRS: &str = "/apis/afs.csi.auristor.com/v1alpha1/specialresources";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let nodes: usize = std::env::var("NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let api = FakeApi::default();
    let mut writer = Writer::<SpecialResource>::default();
    let ctx = Arc::new(Context::new(
        api.client(),
        Arc::new(Metrics::default()),
        writer.as_reader(),
    ));
    api.put(SRS, json!({
        "apiVersion": "afs.csi.auristor.com/v1alpha1", "kind": "SpecialResource",
        "metadata": {"name": "bench", "generation": 1},
        "spec": {"namespace": "afs-bench", "nodeSelector": {"g": "1"},
            "kmod": {"module": "kafs", "version": "1.0.0", "kernelMappings": [{"regexp": ".*", "containerImage": "r/k:${KERNEL_FULL_VERSION}"}]},
            "csi": {"image": "r/csi", "version": "1.0.0", "allowedCells": ["example.com"]}}
    }));
    for i in 0..nodes {
        let name = format!("n{i}");
        api.put("/api/v1/nodes", json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"g": "1", "afs.csi.auristor.com/kmod-ready": "true"},
                "annotations": {"afs.csi.auristor.com/published-volumes": "0"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kernelVersion": "6.1.0-56-amd64",
                "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": "", "osImage": "", "containerRuntimeVersion": "",
                "kubeletVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}}));
        api.put("/apis/storage.k8s.io/v1/csinodes", json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
            "metadata": {"name": name}, "spec": {"drivers": [{"name": "auristorfs.csi.auristor.com", "nodeID": name}]}}));
    }
    let run = |writer: &mut Writer<SpecialResource>| {
        let sr: SpecialResource =
            serde_json::from_value(api.get(SRS, "", "bench").unwrap()).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(sr.clone()));
        reconcile(Arc::new(sr), ctx.clone())
    };
    // Converge: finalizer, objects, then the DaemonSet pods appear Ready on every node.
    run(&mut writer).await.unwrap();
    run(&mut writer).await.unwrap();
    for ds in api.list("/apis/apps/v1/daemonsets") {
        let labels = ds["spec"]["template"]["metadata"]["labels"].clone();
        for i in 0..nodes {
            let name = format!("{}-n{i}", ds["metadata"]["name"].as_str().unwrap());
            api.put("/api/v1/namespaces/afs-bench/pods", json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "afs-bench", "labels": labels},
                "spec": {"nodeName": format!("n{i}"), "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}));
        }
    }
    run(&mut writer).await.unwrap();
    run(&mut writer).await.unwrap();
    let status = &api.get(SRS, "", "bench").unwrap()["status"];
    assert_eq!(status["state"], "Ready", "{status}");

    api.take_writes();
    let rounds = 50;
    let started = Instant::now();
    for _ in 0..rounds {
        run(&mut writer).await.unwrap();
    }
    let elapsed = started.elapsed();
    let reads = api
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|(m, _)| m == http::Method::GET)
        .count();
    let writes = api.take_writes();
    println!(
        "steady-state reconcile, {nodes} nodes: {} write requests in {rounds} reconciles, {} reads each, {:.2} ms each (in-memory API server)",
        writes.len(),
        reads / rounds,
        elapsed.as_secs_f64() * 1000.0 / rounds as f64
    );
    assert!(writes.is_empty(), "steady state wrote: {writes:?}");
}
