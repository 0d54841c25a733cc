//! `afsctl deploy`, `status` and `undeploy` against a real API server, with the
//! examples' own maps scripts and real `kubectl`. Opt-in: set `AFS_E2E_KUBECONFIG` to
//! the kubeconfig of a disposable bare control plane (kube-apiserver +
//! kube-controller-manager with the daemonset, garbage-collector and namespace
//! controllers; no kubelet, no scheduler). The operator runs in-process and the test
//! plays the kubelet. Without the variable the test skips with a message.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

#[path = "../../tests/common/kubelet.rs"]
mod kubelet;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use afs_operator::crd::SpecialResource;
use afs_operator::metrics::Metrics;
use afsctl::cluster::Target;
use afsctl::commands::{self, CommandError, DeployOptions, UndeployOptions};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::storage::v1::CSINode;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kubelet::Kubelet;
use serde_json::{Value, json};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The example group-1 SpecialResource, renamed onto this run's nodes.
fn special_resource(id: &str) -> Value {
    let text = std::fs::read_to_string(examples().join("specialresources/group-1.yaml")).unwrap();
    let mut sr: Value = serde_norway::from_str(&text).unwrap();
    sr["metadata"]["name"] = json!(format!("afsctl-{id}"));
    sr["spec"]["namespace"] = json!(format!("afsctl-{id}"));
    sr["spec"]["nodeSelector"] = json!({"afsctl-e2e": id});
    sr["spec"]["kmod"]["kernelMappings"] = json!([{"regexp": "^6\\.1\\..*$",
        "containerImage": "registry.example.com/auristor-kmod-${MODULE_VERSION}:${KERNEL_FULL_VERSION}"}]);
    sr
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test]
async fn deploy_status_and_undeploy_on_a_bare_control_plane() {
    let Some((client, kubeconfig)) = kubelet::e2e_client().await else {
        return;
    };
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let id = format!("{:x}", std::process::id() ^ clock.subsec_nanos());
    let nodes: Vec<String> = (1..=2).map(|i| format!("afsctl-{id}-n{i}")).collect();
    for node in &nodes {
        kubelet::create_node(
            &client,
            node,
            json!({"afsctl-e2e": id, "kubernetes.io/hostname": node}),
        )
        .await;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(afs_operator::controller::run(
        client.clone(),
        Arc::new(Metrics::default()),
        async {
            let _ = stopped.await;
        },
    ));
    let kubelet = Kubelet {
        client: client.clone(),
        node_selector: format!("afsctl-e2e={id}"),
    };
    let kubelet = tokio::spawn(async move {
        loop {
            kubelet.pass().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let result = tokio::spawn(scenario(
        client.clone(),
        kubeconfig.into(),
        id.clone(),
        dir.path().to_owned(),
    ))
    .await;
    kubelet.abort();
    let _ = stop.send(());
    let _ = operator.await;
    for node in &nodes {
        let _ = Api::<Node>::all(client.clone())
            .delete(node, &DeleteParams::default())
            .await;
        let _ = Api::<CSINode>::all(client.clone())
            .delete(node, &DeleteParams::default())
            .await;
    }
    for namespace in [format!("afsctl-{id}"), format!("afsctl-{id}-apps")] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&namespace, &DeleteParams::default())
            .await;
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn scenario(client: Client, kubeconfig: PathBuf, id: String, dir: PathBuf) {
    let target = Target {
        kubeconfig: Some(kubeconfig),
        context: None,
    };
    let name = format!("afsctl-{id}");
    let file = dir.join("sr.yaml");
    std::fs::write(
        &file,
        serde_norway::to_string(&special_resource(&id)).unwrap(),
    )
    .unwrap();
    let create_maps = examples().join("maps/create-maps.sh");
    let delete_maps = examples().join("maps/delete-maps.sh");
    let deploy = |create_maps: PathBuf| DeployOptions {
        file: file.clone(),
        create_maps,
        timeout: Duration::from_secs(90),
        operator_image: None,
    };

    // A maps script that forgets the maps: deploy stops before the SR, naming them.
    let forgetful = dir.join("forgetful.sh");
    std::fs::write(&forgetful, "#!/bin/sh\necho 'creating nothing'\n").unwrap();
    std::fs::set_permissions(
        &forgetful,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut out = Vec::new();
    let error = commands::deploy(&client, &target, &deploy(forgetful), &mut out)
        .await
        .expect_err("missing maps refused");
    let message = error.to_string();
    for missing in [
        "ConfigMap etc-yfs",
        "ConfigMap usr-share-yfs",
        "Secret etc-yfs-keytabs",
    ] {
        assert!(message.contains(missing), "{missing} in {message}");
    }
    let srs = Api::<SpecialResource>::all(client.clone());
    assert!(srs.get_opt(&name).await.unwrap().is_none(), "no SR applied");

    // Deploy for real: installs what is missing and follows both nodes to Ready.
    let mut out = Vec::new();
    let result = commands::deploy(&client, &target, &deploy(create_maps.clone()), &mut out).await;
    eprintln!("{}", text(&out));
    result.expect("deployed");
    let printed = text(&out);
    assert!(
        printed.contains(&format!(
            "SpecialResource \"{name}\" successfully rolled out (2 of 2 nodes ready)"
        )),
        "{printed}"
    );
    assert!(printed.contains("CustomResourceDefinition specialresources.afs.csi.auristor.com"));
    assert!(printed.contains("Deployment afs-operator"), "{printed}");
    assert!(
        printed.contains("module loaded, CSI registered, ready"),
        "{printed}"
    );

    // Again: idempotent, nothing to wait for.
    let mut out = Vec::new();
    commands::deploy(&client, &target, &deploy(create_maps.clone()), &mut out)
        .await
        .expect("second deploy");
    assert!(
        text(&out).contains("Deployment afs-operator: present"),
        "{}",
        text(&out)
    );

    let mut out = Vec::new();
    commands::follow(&client, &name, Duration::from_secs(5), false, &mut out)
        .await
        .expect("status");
    assert!(
        text(&out).contains("successfully rolled out"),
        "{}",
        text(&out)
    );

    // A pod using AFS on the group's nodes: undeploy refuses, naming it.
    let apps = format!("{name}-apps");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": apps}})).unwrap(),
        )
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &apps);
    kubelet::create_afs_pod(&pods, "reader", &format!("{name}-n1"), json!({})).await;
    let undeploy = |force| UndeployOptions {
        file: file.clone(),
        delete_maps: delete_maps.clone(),
        force,
        timeout: Duration::from_secs(90),
    };
    let mut out = Vec::new();
    let error = commands::undeploy(&client, &target, &undeploy(false), &mut out)
        .await
        .expect_err("refused while in use");
    assert!(
        matches!(&error, CommandError::InUse { pods, .. } if pods == &[format!("{apps}/reader on {name}-n1")]),
        "{error}"
    );
    assert!(srs.get_opt(&name).await.unwrap().is_some(), "SR kept");

    // The pod ends: undeploy removes everything and says so.
    pods.delete(
        "reader",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let result = commands::undeploy(&client, &target, &undeploy(false), &mut out).await;
    eprintln!("{}", text(&out));
    result.expect("undeployed");
    assert!(
        text(&out).contains(&format!("nothing of SpecialResource {name} remains")),
        "{}",
        text(&out)
    );
    assert!(srs.get_opt(&name).await.unwrap().is_none());
    let namespaces = Api::<Namespace>::all(client.clone());
    assert!(
        namespaces.get_opt(&name).await.unwrap().is_none(),
        "deploy created the namespace: undeploy deletes it"
    );

    // Issue 12, cases 11 and 12: a namespace that exists before deploy. Unmarked,
    // deploy refuses it before changing anything.
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"team": "tenant-a"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let error = commands::deploy(&client, &target, &deploy(create_maps.clone()), &mut out)
        .await
        .expect_err("an unmarked namespace is refused");
    assert!(
        error.to_string().contains(&format!(
            "namespace {name} already exists and is not this SpecialResource's"
        )),
        "{error}"
    );
    assert!(srs.get_opt(&name).await.unwrap().is_none(), "no SR applied");
    let untouched = namespaces.get(&name).await.unwrap();
    assert!(
        !untouched
            .labels()
            .contains_key("pod-security.kubernetes.io/enforce"),
        "not labelled"
    );

    // Handed over by the admin: deploy uses it, undeploy keeps it (without the
    // operator's privileged label) and verifies the rest is gone.
    namespaces
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                afs_operator::labels::NAMESPACE_OF_ANNOTATION: name}}})),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let result = commands::deploy(&client, &target, &deploy(create_maps.clone()), &mut out).await;
    eprintln!("{}", text(&out));
    result.expect("deployed into the handed-over namespace");
    let mut out = Vec::new();
    let result = commands::undeploy(&client, &target, &undeploy(false), &mut out).await;
    eprintln!("{}", text(&out));
    result.expect("undeployed");
    let printed = text(&out);
    assert!(
        printed.contains("kept: it existed before afsctl deploy")
            && printed.contains(&format!("namespace {name} kept")),
        "{printed}"
    );
    let kept = namespaces
        .get_opt(&name)
        .await
        .unwrap()
        .expect("the pre-existing namespace stays");
    assert_eq!(
        kept.labels().get("team").map(String::as_str),
        Some("tenant-a")
    );
    assert!(
        !kept
            .labels()
            .contains_key("pod-security.kubernetes.io/enforce"),
        "the operator took its privileged label back: {:?}",
        kept.labels()
    );
}
