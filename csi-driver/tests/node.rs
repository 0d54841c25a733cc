//! Node service against the real binary: real socket, real mounts.

mod common;

use std::fs;
use std::io::ErrorKind;

use common::*;
use csi_proto::v1::volume_capability::{AccessType, BlockVolume, access_mode::Mode};
use csi_proto::v1::{NodeGetCapabilitiesRequest, NodeGetInfoRequest, NodeGetVolumeStatsRequest};
use tonic::Code;

/// A volume and the root, published over a stand-in AFS root. (The AFS roots of
/// openafs and kafs must be the AFS filesystem, which this host cannot mount: the VM
/// scenarios publish those for real.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_read_unpublish_volume_and_root() {
    if !can_mount() {
        return;
    }
    let cases = [
        ("auristor", volume_attrs(), "hello.txt".to_owned()),
        (
            "auristor",
            root_attrs(),
            format!("{CELL}/{VOLUME}/hello.txt"),
        ),
    ];
    for (cache_manager, context, file) in cases {
        let fixture = Fixture::new();
        let driver = Driver::start(&fixture, cache_manager, "node").await;
        let target = fixture.target("pod-a");
        driver
            .node()
            .node_publish_volume(publish(&target, context.clone(), false))
            .await
            .unwrap_or_else(|s| panic!("{cache_manager}: publish: {s}"));
        assert_eq!(
            fs::read_to_string(target.join(&file)).expect("read through target"),
            CONTENT,
            "{cache_manager} {context:?}"
        );
        // Writes go through to the volume.
        fs::write(target.join("written.txt"), "w").expect("write through rw target");
        assert_eq!(fixture.mounts_below().len(), 1, "{cache_manager}");

        driver
            .node()
            .node_unpublish_volume(unpublish(&target))
            .await
            .expect("unpublish");
        assert!(!target.exists(), "target directory removed");
        assert!(fixture.mounts_below().is_empty(), "no mount left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_idempotent_and_conflicts_are_refused() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let target = fixture.target("pod-a");
    let mut node = driver.node();
    for _ in 0..3 {
        node.node_publish_volume(publish(&target, volume_attrs(), false))
            .await
            .expect("same arguments: OK");
    }
    assert_eq!(fixture.mounts_below().len(), 1, "one mount, however often");

    let read_only = node
        .node_publish_volume(publish(&target, volume_attrs(), true))
        .await
        .expect_err("read-only over read-write");
    assert_eq!(read_only.code(), Code::AlreadyExists, "{read_only:?}");
    let other = node
        .node_publish_volume(publish(&target, root_attrs(), false))
        .await
        .expect_err("another source");
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
    assert_eq!(fixture.mounts_below().len(), 1, "conflicts change nothing");

    node.node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
    node.node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish again: OK");
    let never = fixture.target("never-published");
    node.node_unpublish_volume(unpublish(&never))
        .await
        .expect("unpublish of a missing target: OK");
    fs::create_dir(&never).expect("kubelet's own directory");
    node.node_unpublish_volume(unpublish(&never))
        .await
        .expect("unpublish of an unmounted target: OK");
    assert!(
        never.is_dir(),
        "a directory the driver did not create is never removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_publish_refuses_writes() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let mut node = driver.node();

    let by_flag = fixture.target("flag");
    node.node_publish_volume(publish(&by_flag, volume_attrs(), true))
        .await
        .expect("publish ro");
    let mut by_attribute_context = volume_attrs();
    by_attribute_context.insert("read-only".into(), "true".into());
    let by_attribute = fixture.target("attribute");
    node.node_publish_volume(publish(&by_attribute, by_attribute_context, false))
        .await
        .expect("publish read-only attribute");
    let by_mode = fixture.target("mode");
    let mut request = publish(&by_mode, root_attrs(), false);
    request.volume_capability = Some(mount_capability(Mode::MultiNodeReaderOnly));
    node.node_publish_volume(request)
        .await
        .expect("publish reader-only mode");

    for (target, file) in [
        (&by_flag, "hello.txt".to_owned()),
        (&by_attribute, "hello.txt".to_owned()),
        (&by_mode, format!("{CELL}/{VOLUME}/hello.txt")),
    ] {
        assert_eq!(
            fs::read_to_string(target.join(&file)).expect("readable"),
            CONTENT
        );
        let err = fs::write(target.join("new.txt"), "x").expect_err("write must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{target:?}: {err}");
        let err = fs::write(target.join(&file), "x").expect_err("overwrite must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{target:?}: {err}");
    }
    // The volume itself stays writable for others.
    fs::write(
        fixture
            .afs_root()
            .join(format!(".@mount/{CELL}/{VOLUME}/other.txt")),
        "x",
    )
    .expect("source still writable");

    for target in [&by_flag, &by_attribute, &by_mode] {
        node.node_unpublish_volume(unpublish(target))
            .await
            .expect("unpublish");
    }
    assert!(fixture.mounts_below().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_leaves_nothing() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let mut node = driver.node();
    let target = fixture.target("bad");
    let with = |pairs: &[(&str, &str)]| publish(&target, attrs(pairs), false);
    let volume = |name: &str| {
        publish(
            &target,
            attrs(&[
                ("mount-type", "volume"),
                ("cell-name", CELL),
                ("volume-name", name),
            ]),
            false,
        )
    };
    let cell = |name: &str| {
        publish(
            &target,
            attrs(&[
                ("mount-type", "volume"),
                ("cell-name", name),
                ("volume-name", VOLUME),
            ]),
            false,
        )
    };

    let mut no_id = publish(&target, volume_attrs(), false);
    no_id.volume_id.clear();
    let mut no_target = publish(&target, volume_attrs(), false);
    no_target.target_path.clear();
    let mut relative = publish(&target, volume_attrs(), false);
    relative.target_path = "pods/bad/mount".into();
    let mut dotdot = publish(&target, volume_attrs(), false);
    dotdot.target_path = format!("{}/../escape", target.display());
    let mut outside = publish(&target, volume_attrs(), false);
    outside.target_path = fixture.dir.path().join("etc").display().to_string();
    let mut bad_flag = publish(&target, volume_attrs(), false);
    if let Some(AccessType::Mount(mount)) = bad_flag
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        mount.mount_flags = vec!["sync".into()];
    }
    let mut bind_context = publish(&target, volume_attrs(), false);
    if let Some(AccessType::Mount(mount)) = bind_context
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        mount.mount_flags = vec!["context=system_u:object_r:container_file_t:s0".into()];
    }
    let mut no_capability = publish(&target, volume_attrs(), false);
    no_capability.volume_capability = None;
    let mut block = publish(&target, volume_attrs(), false);
    if let Some(capability) = block.volume_capability.as_mut() {
        capability.access_type = Some(AccessType::Block(BlockVolume::default()));
    }

    let cases = vec![
        (no_id, "volume_id"),
        (no_target, "target_path"),
        (relative, "target_path"),
        (dotdot, "target_path"),
        (outside, "target_path"),
        (bad_flag, "volume_capability.mount.mount_flags"),
        (bind_context, "volume_capability.mount.mount_flags"),
        (no_capability, "volume_capability"),
        (block, "volume_capability"),
        (with(&[]), "mount-type"),
        (with(&[("mount-type", "subtree")]), "mount-type"),
        (
            with(&[("mount-type", "volume"), ("volume-name", VOLUME)]),
            "cell-name",
        ),
        (
            with(&[("mount-type", "volume"), ("cell-name", CELL)]),
            "volume-name",
        ),
        (
            with(&[("mount-type", "root"), ("read-only", "maybe")]),
            "read-only",
        ),
        (volume("abcdefghijklmnopqrstuvw"), "volume-name"),
        (volume("../../etc"), "volume-name"),
        (volume("a/b"), "volume-name"),
        (volume(".."), "volume-name"),
        (volume("a\0b"), "volume-name"),
        (cell("../etc"), "cell-name"),
        (cell("a/b"), "cell-name"),
        (cell("a..b"), "cell-name"),
        (cell("ce\0ll"), "cell-name"),
    ];
    for (request, field) in cases {
        let status = node
            .node_publish_volume(request)
            .await
            .expect_err("bad input must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "message names {field}: {:?}",
            status.message()
        );
        assert!(!target.exists(), "{field}: no directory left behind");
        assert!(
            fixture.mounts_below().is_empty(),
            "{field}: nothing mounted"
        );
    }

    let mut missing_id = unpublish(&target);
    missing_id.volume_id.clear();
    let status = node
        .node_unpublish_volume(missing_id)
        .await
        .expect_err("no id");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = node
        .node_unpublish_volume(unpublish(std::path::Path::new("relative/t")))
        .await
        .expect_err("relative");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_volume_is_not_found_and_leaves_nothing() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let target = fixture.target("missing");
    let request = publish(
        &target,
        attrs(&[
            ("mount-type", "volume"),
            ("cell-name", CELL),
            ("volume-name", "nosuchvol"),
        ]),
        false,
    );
    let status = driver
        .node()
        .node_publish_volume(request)
        .await
        .expect_err("no such volume");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(!target.exists(), "no directory left behind");
    assert!(fixture.mounts_below().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafs_volume_mount_without_the_module_is_a_precondition() {
    if !can_mount() {
        return;
    }
    // This host kernel has no afs filesystem; the VM tests cover the real one.
    if fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\tafs\n")) {
        eprintln!("SKIPPED: this kernel has an afs filesystem");
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "kafs", "node").await;
    let target = fixture.target("kafs");
    let status = driver
        .node()
        .node_publish_volume(publish(&target, volume_attrs(), false))
        .await
        .expect_err("no afs filesystem");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("kAFS"), "{status:?}");
    assert!(!target.exists(), "no directory left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_targets_in_parallel() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let targets: Vec<_> = (0..48)
        .map(|i| fixture.target(&format!("pod-{i}")))
        .collect();
    let publishes = targets.iter().enumerate().map(|(i, target)| {
        let mut node = driver.node();
        let context = if i % 2 == 0 {
            volume_attrs()
        } else {
            root_attrs()
        };
        let request = publish(target, context, i % 3 == 0);
        async move { node.node_publish_volume(request).await }
    });
    for result in futures_join_all(publishes).await {
        result.expect("every target publishes");
    }
    assert_eq!(fixture.mounts_below().len(), targets.len());
    for (i, target) in targets.iter().enumerate() {
        let file = if i % 2 == 0 {
            "hello.txt".to_owned()
        } else {
            format!("{CELL}/{VOLUME}/hello.txt")
        };
        assert_eq!(
            fs::read_to_string(target.join(file)).expect("read"),
            CONTENT
        );
    }
    let unpublishes = targets.iter().map(|target| {
        let mut node = driver.node();
        let request = unpublish(target);
        async move { node.node_unpublish_volume(request).await }
    });
    for result in futures_join_all(unpublishes).await {
        result.expect("every target unpublishes");
    }
    assert!(fixture.mounts_below().is_empty());
    assert!(targets.iter().all(|t| !t.exists()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_operations_on_one_target_are_serialised() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let target = fixture.target("contended");
    let mut aborted = 0;
    for round in 0..20 {
        let racers = (0..16).map(|i| {
            let mut node = driver.node();
            let (p, u) = (publish(&target, volume_attrs(), false), unpublish(&target));
            async move {
                if (i + round) % 2 == 0 {
                    node.node_publish_volume(p).await.map(|_| ())
                } else {
                    node.node_unpublish_volume(u).await.map(|_| ())
                }
            }
        });
        for result in futures_join_all(racers).await {
            if let Err(status) = result {
                assert_eq!(
                    status.code(),
                    Code::Aborted,
                    "only ABORTED may fail: {status:?}"
                );
                aborted += 1;
            }
        }
        let mounts = fixture.mounts_below().len();
        assert!(
            mounts <= 1,
            "round {round}: never stacked ({mounts} mounts)"
        );
        assert_eq!(mounts == 1, target.exists(), "mount and directory agree");
    }
    // Timing decides how many overlap; the guard must have refused some.
    eprintln!("{aborted} of 320 racing operations were ABORTED");
    assert!(aborted > 0, "no operation ever overlapped another");
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("final unpublish");
    assert!(fixture.mounts_below().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_inline_volume_with_pod_info() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let target = fixture.target("inline");
    let mut context = volume_attrs();
    context.extend(attrs(&[
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("csi.storage.k8s.io/pod.uid", "0b5c0b8a-1"),
        ("csi.storage.k8s.io/serviceAccount.name", "default"),
    ]));
    let mut request = publish(&target, context, false);
    request.volume_id = "csi-2b7a5e0d0f".into();
    driver
        .node()
        .node_publish_volume(request)
        .await
        .expect("inline publish");
    assert_eq!(
        fs::read_to_string(target.join("hello.txt")).expect("read"),
        CONTENT
    );
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("inline unpublish");
    assert!(!target.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_stats_and_condition() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    // A volume of its own, so that removing it affects no other test data.
    let doomed = fixture.afs_root().join(".@mount").join(CELL).join("doomed");
    fs::create_dir(&doomed).expect("doomed volume");
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let mut node = driver.node();
    let target = fixture.target("stats");
    let context = attrs(&[
        ("mount-type", "volume"),
        ("cell-name", CELL),
        ("volume-name", "doomed"),
    ]);
    node.node_publish_volume(publish(&target, context, false))
        .await
        .expect("publish");
    let stats = |path: String| NodeGetVolumeStatsRequest {
        volume_id: "vol-1".into(),
        volume_path: path,
        staging_target_path: String::new(),
    };
    let healthy = node
        .node_get_volume_stats(stats(target.display().to_string()))
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(healthy.usage.len(), 2, "bytes and inodes");
    assert!(healthy.usage[0].total > 0);
    assert!(!healthy.volume_condition.expect("condition").abnormal);

    fs::remove_dir(&doomed).expect("source goes away");
    let gone = node
        .node_get_volume_stats(stats(target.display().to_string()))
        .await
        .expect("stats of a broken volume still answer")
        .into_inner();
    let condition = gone.volume_condition.expect("condition");
    assert!(condition.abnormal, "{condition:?}");

    for path in [
        "some/path".to_owned(),
        fixture.target("never").display().to_string(),
    ] {
        let status = node
            .node_get_volume_stats(stats(path))
            .await
            .expect_err("not published");
        assert_eq!(status.code(), Code::NotFound);
    }
    node.node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_info_and_capabilities() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let info = driver
        .node()
        .node_get_info(NodeGetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.node_id, "test-node");
    let capabilities = driver
        .node()
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner();
    assert_eq!(capabilities.capabilities.len(), 2, "stats and condition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_parent_must_exist() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let orphan = fixture.volume_dir("no-parent").join("mount");
    let status = driver
        .node()
        .node_publish_volume(publish(&orphan, volume_attrs(), false))
        .await
        .expect_err("parent missing");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        fs::metadata(fixture.volume_dir("no-parent"))
            .map_err(|e| e.kind())
            .expect_err("nothing created"),
        ErrorKind::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_with_submounts_is_unmounted_whole_and_never_detached_while_in_use() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    // A submount inside the AFS root, as automounted volumes are under kAFS.
    let automounted = fixture.afs_root().join(CELL).join("automounted");
    fs::create_dir(&automounted).expect("mount point");
    nix::mount::mount(
        Some("tmpfs"),
        &automounted,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("tmpfs submount");
    fs::write(automounted.join("inner.txt"), "inner").expect("file in submount");

    let driver = Driver::start(&fixture, "auristor", "node").await;
    let target = fixture.target("root");
    driver
        .node()
        .node_publish_volume(publish(&target, root_attrs(), false))
        .await
        .expect("publish root");
    let inner = target.join(CELL).join("automounted");
    assert_eq!(
        fs::read_to_string(inner.join("inner.txt")).expect("submount visible"),
        "inner"
    );
    // A plain unmount is refused while the submount hangs below the target.
    assert_eq!(
        nix::mount::umount2(&target, nix::mount::MntFlags::empty()),
        Err(nix::errno::Errno::EBUSY)
    );

    // A process working in the submount: the mount stays, whole, and the caller
    // hears why (a detached mount would still be used, unseen by everyone).
    let mut holder = std::process::Command::new("sleep")
        .arg("600")
        .current_dir(&inner)
        .spawn()
        .expect("a process in the volume");
    let status = driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect_err("busy");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("busy"), "{status:?}");
    assert_eq!(
        fs::read_to_string(inner.join("inner.txt")).expect("still mounted, not detached"),
        "inner"
    );
    let _ = holder.kill();
    let _ = holder.wait();

    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish once nothing uses it");
    assert!(!target.exists());
    let left: Vec<_> = fixture
        .mounts_below()
        .into_iter()
        .filter(|point| point.contains("/pods/"))
        .collect();
    assert!(left.is_empty(), "nothing left under the target: {left:?}");
    assert_eq!(
        fs::read_to_string(automounted.join("inner.txt")).expect("original submount intact"),
        "inner"
    );
}
