//! Identity, controller, process lifecycle: restart safety, signals, socket
//! hygiene and metrics, against the real binary.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use csi_proto::v1::plugin_capability::service::Type as ServiceType;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::*;
use tonic::Code;

fn advertises_controller(response: &GetPluginCapabilitiesResponse) -> bool {
    response.capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(plugin_capability::Type::Service(s))
            if s.r#type == ServiceType::ControllerService as i32)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_reports_version_capabilities_and_health() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let all = Driver::start(&fixture, "auristor", "all").await;
    let info = all
        .identity()
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.name, "auristorfs.csi.auristor.com");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = all
        .identity()
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner();
    assert!(advertises_controller(&caps));
    let probe = all
        .identity()
        .probe(ProbeRequest {})
        .await
        .expect("healthy");
    assert_eq!(probe.into_inner().ready, Some(true));
    drop(all);

    let node_only = Driver::start(&fixture, "auristor", "node").await;
    let caps = node_only
        .identity()
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner();
    assert!(!advertises_controller(&caps));
    let status = node_only
        .controller()
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .expect_err("controller not served in node mode");
    assert_eq!(status.code(), Code::Unimplemented);

    fs::rename(fixture.afs_root(), fixture.dir.path().join("afs-away")).expect("hide root");
    let status = node_only
        .identity()
        .probe(ProbeRequest {})
        .await
        .expect_err("AFS root gone");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

fn create_request(name: &str, parameters: HashMap<String, String>) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        parameters,
        volume_capabilities: vec![mount_capability(Mode::MultiNodeMultiWriter)],
        ..CreateVolumeRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_provisions_by_echoing_parameters() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "all").await;
    let mut controller = driver.controller();
    let mut parameters = volume_attrs();
    parameters.insert("csi.storage.k8s.io/pvc/name".into(), "data".into());
    let volume = controller
        .create_volume(create_request("pvc-1", parameters.clone()))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(
        volume.volume_context, parameters,
        "parameters reach the node"
    );
    let again = controller
        .create_volume(create_request("pvc-1", parameters.clone()))
        .await
        .expect("create again")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(
        again.volume_id, volume.volume_id,
        "same name + parameters, same volume"
    );
    let status = controller
        .create_volume(create_request("pvc-1", root_attrs()))
        .await
        .expect_err("same name, other parameters");
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = controller
        .create_volume(create_request(
            "pvc-2",
            attrs(&[("mount-type", "volume"), ("cell-name", CELL)]),
        ))
        .await
        .expect_err("missing volume-name");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("volume-name"), "{status:?}");

    // The provisioned volume publishes like a static one.
    let target = fixture.target("provisioned");
    let mut request = publish(&target, volume.volume_context.clone(), false);
    request.volume_id = volume.volume_id.clone();
    driver
        .node()
        .node_publish_volume(request)
        .await
        .expect("publish");
    assert_eq!(
        fs::read_to_string(target.join("hello.txt")).expect("read"),
        CONTENT
    );
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");

    let validate = |volume_id: String| ValidateVolumeCapabilitiesRequest {
        volume_id,
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        ..ValidateVolumeCapabilitiesRequest::default()
    };
    let confirmed = controller
        .validate_volume_capabilities(validate(volume.volume_id.clone()))
        .await
        .expect("validate")
        .into_inner();
    assert!(confirmed.confirmed.is_some());
    let status = controller
        .validate_volume_capabilities(validate("not-ours".into()))
        .await
        .expect_err("unknown volume");
    assert_eq!(status.code(), Code::NotFound);

    for _ in 0..2 {
        controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: volume.volume_id.clone(),
                secrets: HashMap::new(),
            })
            .await
            .expect("delete is idempotent");
    }
    assert!(
        fixture
            .afs_root()
            .join(".@mount")
            .join(CELL)
            .join(VOLUME)
            .join("hello.txt")
            .exists(),
        "deleting never touches AFS data"
    );
    // After a delete the name is free for other parameters.
    controller
        .create_volume(create_request("pvc-1", root_attrs()))
        .await
        .expect("name reusable after delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_survive_kill_and_retries_after_restart_converge() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let mut driver = Driver::start(&fixture, "auristor", "node").await;

    // A published volume survives the driver's death.
    let survivor = fixture.target("survivor");
    driver
        .node()
        .node_publish_volume(publish(&survivor, volume_attrs(), true))
        .await
        .expect("publish");

    // Churn on many targets, then kill -9 in the middle of it.
    let targets: Vec<_> = (0..12)
        .map(|i| fixture.target(&format!("churn-{i}")))
        .collect();
    let churn: Vec<_> = targets
        .iter()
        .map(|target| {
            let mut node = driver.node();
            let (p, u) = (publish(target, root_attrs(), false), unpublish(target));
            tokio::spawn(async move {
                loop {
                    let _ = node.node_publish_volume(p.clone()).await;
                    let _ = node.node_unpublish_volume(u.clone()).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    driver.kill9();
    for task in churn {
        task.abort();
    }
    assert_eq!(
        fs::read_to_string(survivor.join("hello.txt")).expect("mount survived kill -9"),
        CONTENT
    );

    // The stale socket is replaced; every retry is decided from mountinfo.
    let restarted = Driver::start(&fixture, "auristor", "node").await;
    let mut node = restarted.node();
    node.node_publish_volume(publish(&survivor, volume_attrs(), true))
        .await
        .expect("retry of a publish that completed: OK");
    let status = node
        .node_publish_volume(publish(&survivor, volume_attrs(), false))
        .await
        .expect_err("conflict still detected after restart");
    assert_eq!(status.code(), Code::AlreadyExists);
    for target in &targets {
        node.node_publish_volume(publish(target, root_attrs(), false))
            .await
            .expect("publish retry converges");
        node.node_publish_volume(publish(target, root_attrs(), false))
            .await
            .expect("and is idempotent");
    }
    assert_eq!(fixture.mounts_below().len(), targets.len() + 1);
    for target in targets.iter().chain([&survivor]) {
        node.node_unpublish_volume(unpublish(target))
            .await
            .expect("unpublish retry");
        assert!(!target.exists(), "{target:?} removed");
    }
    assert!(fixture.mounts_below().is_empty(), "no leaked mount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_private_and_sigterm_exits_cleanly() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let mut driver = Driver::start(&fixture, "auristor", "all").await;
    let mode = fs::metadata(fixture.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let status = driver.terminate();
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
    assert!(!fixture.socket().exists(), "socket removed on exit");

    let mut group = Driver::start_with(&fixture, &["--socket-group-access"]).await;
    let mode = fs::metadata(fixture.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    assert!(group.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_socket_another_driver_serves() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let _first = Driver::start(&fixture, "auristor", "all").await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_csi-driver"))
        .arg("--endpoint")
        .arg(format!("unix://{}", fixture.socket().display()))
        .output()
        .expect("run second driver");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another process is serving"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rpcs_by_method_and_code() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let address = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics-address", address.as_str()];
    args.extend(OPEN_POLICY);
    let driver = Driver::start_with(&fixture, &args).await;
    let target = fixture.target("metrics");
    driver
        .node()
        .node_publish_volume(publish(&target, volume_attrs(), false))
        .await
        .expect("publish");
    let _ = driver
        .node()
        .node_publish_volume(publish(&target, attrs(&[]), false))
        .await
        .expect_err("bad");
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");

    // A client calling made-up methods cannot grow the label set.
    let mut grpc = tonic::client::Grpc::new(driver.channel.clone());
    for i in 0..400 {
        grpc.ready().await.expect("ready");
        let path = format!("/csi.v1.Node/NoSuchMethod{i:04}")
            .parse()
            .expect("path");
        let status = grpc
            .unary(
                tonic::Request::new(ProbeRequest {}),
                path,
                tonic_prost::ProstCodec::<ProbeRequest, ProbeResponse>::default(),
            )
            .await
            .expect_err("unknown method");
        assert_eq!(status.code(), Code::Unimplemented);
    }

    let body = scrape(&address);
    assert!(
        body.contains(r#"csi_rpc_requests_total{method="other",code="Unimplemented"} 400"#),
        "{body}"
    );
    assert!(!body.contains("NoSuchMethod"), "{body}");
    eprintln!("/metrics after 400 unknown methods: {} bytes", body.len());
    assert!(body.len() < 16 * 1024, "{} bytes", body.len());
    for expected in [
        r#"csi_rpc_requests_total{method="NodePublishVolume",code="Ok"} 1"#,
        r#"csi_rpc_requests_total{method="NodePublishVolume",code="InvalidArgument"} 1"#,
        r#"csi_rpc_duration_seconds_count{method="NodeUnpublishVolume"} 1"#,
    ] {
        assert!(body.contains(expected), "{expected} in:\n{body}");
    }
}

fn scrape(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    body
}
