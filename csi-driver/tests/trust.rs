//! The node plugin's trust boundary, against the real binary: it acts only inside
//! kubelet's CSI tree and only on mounts it made, its policy (not the volume
//! attributes) decides what a pod can reach, and no dead server stops the node.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use csi_proto::v1::volume_capability::AccessType;
use csi_proto::v1::{NodeGetVolumeStatsRequest, ProbeRequest};
use nix::mount::{MntFlags, MsFlags};
use tonic::Code;

fn mount_tmpfs(at: &Path) {
    fs::create_dir_all(at).expect("mount point");
    nix::mount::mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("tmpfs");
}

fn is_mount_point(path: &Path) -> bool {
    let wanted = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// The mount options of the topmost mount on `path`, as this process sees them.
fn mount_options(path: &Path) -> Option<String> {
    let wanted = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .rfind(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
        .and_then(|line| line.split(' ').nth(5).map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_acts_only_inside_kubelets_tree() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let mut node = driver.node();
    let elsewhere = fixture.dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).expect("a directory outside kubelet's tree");
    fs::write(elsewhere.join("precious"), "keep").expect("content");

    // An absolute path outside the tree: refused by its shape.
    let outside = elsewhere.join("mount");
    // A volume directory that is a symlink out of the tree.
    let linked_volume = fixture.volume_dir("linked");
    fs::create_dir_all(linked_volume.parent().expect("parent")).expect("csi dir");
    std::os::unix::fs::symlink(&elsewhere, &linked_volume).expect("symlink");
    // A pod directory that is a symlink to a tree laid out like kubelet's.
    let fake_pod = fixture.dir.path().join("fake-pod");
    fs::create_dir_all(fake_pod.join("volumes/kubernetes.io~csi/v")).expect("fake tree");
    let linked_pod = fixture.kubelet_dir().join("pods/linked-pod");
    std::os::unix::fs::symlink(&fake_pod, &linked_pod).expect("symlinked pod");
    // The target itself a symlink.
    let linked_target = fixture.target("linked-target");
    std::os::unix::fs::symlink(&elsewhere, &linked_target).expect("symlinked target");

    for target in [
        outside.clone(),
        linked_volume.join("mount"),
        linked_pod.join("volumes/kubernetes.io~csi/v/mount"),
        linked_target.clone(),
    ] {
        let status = node
            .node_publish_volume(publish(&target, volume_attrs(), false))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{target:?}: {status:?}"
        );
        assert!(status.message().starts_with("target_path"), "{status:?}");
        let status = node
            .node_unpublish_volume(unpublish(&target))
            .await
            .expect_err("refused");
        assert!(
            matches!(
                status.code(),
                Code::InvalidArgument | Code::FailedPrecondition
            ),
            "{target:?}: {status:?}"
        );
    }
    assert!(
        fixture.mounts_below().is_empty(),
        "nothing mounted anywhere"
    );
    assert!(!elsewhere.join("mount").exists(), "nothing created outside");
    assert!(!fake_pod.join("volumes/kubernetes.io~csi/v/mount").exists());
    assert_eq!(
        fs::read_to_string(elsewhere.join("precious")).expect("kept"),
        "keep"
    );
    assert!(linked_target.is_symlink(), "the symlink stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_removes_only_what_the_driver_mounted() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let mut node = driver.node();

    // A foreign mount outside kubelet's tree.
    let foreign = fixture.dir.path().join("foreign");
    mount_tmpfs(&foreign);
    let status = node
        .node_unpublish_volume(unpublish(&foreign))
        .await
        .expect_err("outside the tree");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(is_mount_point(&foreign), "left mounted");

    // Another filesystem at a kubelet target: not ours, named, left in place.
    let target = fixture.target("someone-elses");
    mount_tmpfs(&target);
    fs::write(target.join("data"), "theirs").expect("their data");
    let status = node
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect_err("not ours");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("tmpfs"), "names it: {status:?}");
    assert!(is_mount_point(&target), "left mounted");
    assert_eq!(
        fs::read_to_string(target.join("data")).expect("intact"),
        "theirs"
    );
    // Nor is it taken for a publish of ours.
    let status = node
        .node_publish_volume(publish(&target, volume_attrs(), false))
        .await
        .expect_err("occupied");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_keeps_a_directory_it_did_not_create() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let target = fixture.target("pre-existing");
    fs::create_dir(&target).expect("kubelet made it");
    let missing = attrs(&[
        ("mount-type", "volume"),
        ("cell-name", CELL),
        ("volume-name", "nosuchvol"),
    ]);
    let status = driver
        .node()
        .node_publish_volume(publish(&target, missing.clone(), false))
        .await
        .expect_err("no such volume");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(target.is_dir(), "the directory it found stays");

    // One it made itself goes with the failure.
    let fresh = fixture.target("fresh");
    driver
        .node()
        .node_publish_volume(publish(&fresh, missing, false))
        .await
        .expect_err("no such volume");
    assert!(!fresh.exists(), "its own directory is removed");
    let leftovers: Vec<_> = fs::read_dir(fixture.volume_dir("fresh"))
        .expect("volume dir")
        .collect();
    assert!(
        leftovers.is_empty(),
        "nothing left beside it: {leftovers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_afs_root_that_is_not_afs_is_never_bound() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    // The fixture's AFS root is a plain directory: afsd or the dynamic root is down.
    for cache_manager in ["openafs", "kafs"] {
        let driver = Driver::start(&fixture, cache_manager, "node").await;
        let mut node = driver.node();
        let mut requests = vec![publish(&fixture.target("root"), root_attrs(), false)];
        if cache_manager == "openafs" {
            requests.push(publish(&fixture.target("volume"), volume_attrs(), false));
        }
        for request in requests {
            let status = node
                .node_publish_volume(request)
                .await
                .expect_err("not AFS");
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(
                status
                    .message()
                    .contains(&fixture.afs_root().display().to_string())
                    && status.message().contains("not the AFS filesystem"),
                "names the AFS root: {status:?}"
            );
        }
        let status = driver
            .identity()
            .probe(ProbeRequest {})
            .await
            .expect_err("not ready");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            fixture.mounts_below().is_empty(),
            "{cache_manager}: nothing bound"
        );
        assert!(!fixture.target("root").exists(), "no directory left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_policy_decides_cells_roots_and_inline_volumes() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let closed = Driver::start_with(
        &fixture,
        &[
            "--cache-manager",
            "auristor",
            "--allowed-cells",
            "other.org",
        ],
    )
    .await;
    let mut node = closed.node();
    let target = fixture.target("policy");
    let mut inline = attrs(&[
        ("mount-type", "volume"),
        ("cell-name", "other.org"),
        ("volume-name", VOLUME),
    ]);
    inline.extend(attrs(&[
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("csi.storage.k8s.io/pod.name", "tenant"),
    ]));
    for (context, field) in [
        (volume_attrs(), "cell-name"),
        (root_attrs(), "mount-type"),
        (inline.clone(), "csi.storage.k8s.io/ephemeral"),
    ] {
        let status = node
            .node_publish_volume(publish(&target, context, false))
            .await
            .expect_err("refused by the policy");
        assert_eq!(status.code(), Code::PermissionDenied, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {status:?}");
        assert!(!target.exists() && fixture.mounts_below().is_empty());
    }
    drop(closed);

    // Opted in: the same inline volume of an allowed cell publishes.
    let open = Driver::start_with(
        &fixture,
        &[
            "--cache-manager",
            "auristor",
            "--allowed-cells",
            CELL,
            "--allow-ephemeral",
        ],
    )
    .await;
    let mut inline = volume_attrs();
    inline.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    open.node()
        .node_publish_volume(publish(&target, inline, false))
        .await
        .expect("allowed");
    open.node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_flags_are_applied() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let volume = fixture.afs_root().join(".@mount").join(CELL).join(VOLUME);
    let script = volume.join("run.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").expect("script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let driver = Driver::start(&fixture, "auristor", "node").await;
    let target = fixture.target("noexec");
    let mut request = publish(&target, volume_attrs(), false);
    if let Some(AccessType::Mount(mount)) = request
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        mount.mount_flags = vec!["noexec".into()];
    }
    driver
        .node()
        .node_publish_volume(request.clone())
        .await
        .expect("publish noexec");
    let options = mount_options(&target).expect("mounted");
    assert!(options.contains("noexec"), "{options}");
    let err = Command::new(target.join("run.sh"))
        .status()
        .expect_err("no execution from a noexec publish");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    driver
        .node()
        .node_publish_volume(request)
        .await
        .expect("the same publish again: OK");
    let status = driver
        .node()
        .node_publish_volume(publish(&target, volume_attrs(), false))
        .await
        .expect_err("without noexec it is another publish");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
}

/// kubelet's stats polling of a volume whose server is dead (here a FUSE mount whose
/// daemon never answers) must not stop the node: every later stats call of that
/// volume shares the one blocked check, and publish and Probe go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_on_a_dead_mount_never_stop_publish_or_probe() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    let hung = fixture.target("dead-server");
    fs::create_dir(&hung).expect("target");
    let fuse = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("/dev/fuse");
    let options = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0",
        std::os::fd::AsRawFd::as_raw_fd(&fuse)
    );
    nix::mount::mount(
        Some("dead-afs-server"),
        &hung,
        Some("fuse"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .expect("FUSE mount that never answers");

    let driver = Driver::start(&fixture, "auristor", "node").await;
    let pid = driver.child.id();
    let stats = NodeGetVolumeStatsRequest {
        volume_id: "vol-1".into(),
        volume_path: hung.display().to_string(),
        staging_target_path: String::new(),
    };
    // kubelet-like pressure: many stats calls of the dead volume at once, over
    // several connections.
    let mut calls = Vec::new();
    for connection in 0..4 {
        let channel = csi_proto::connect(&fixture.socket())
            .await
            .expect("connect");
        for _ in 0..150 {
            let mut node = csi_proto::v1::node_client::NodeClient::new(channel.clone());
            let request = stats.clone();
            calls.push(tokio::spawn(async move {
                node.node_get_volume_stats(request).await
            }));
        }
        let _ = connection;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Meanwhile the node works.
    let started = Instant::now();
    let target = fixture.target("alive");
    tokio::time::timeout(
        Duration::from_secs(5),
        driver
            .node()
            .node_publish_volume(publish(&target, volume_attrs(), false)),
    )
    .await
    .expect("publish answers while stats hang")
    .expect("publish works");
    tokio::time::timeout(
        Duration::from_secs(5),
        driver.identity().probe(ProbeRequest {}),
    )
    .await
    .expect("probe answers while stats hang")
    .expect("healthy");
    let threads: usize = fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("thread count");
    eprintln!(
        "publish + probe took {:?} with 600 stats calls pending; driver threads: {threads}",
        started.elapsed()
    );
    assert!(threads < 40, "a thread per pending stats call: {threads}");

    for call in calls {
        let answer = call
            .await
            .expect("task")
            .expect("stats answer")
            .into_inner();
        let condition = answer.volume_condition.expect("condition");
        assert!(condition.abnormal, "{condition:?}");
    }
    // The daemon goes away: the blocked check ends, the mount goes.
    drop(fuse);
    let _ = nix::mount::umount2(&hung, MntFlags::MNT_DETACH);
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
}

/// The driver in a mount namespace of its own, kubelet's directory shared with the
/// host's (Bidirectional) and the AFS root a peer of the host's (as the DaemonSet
/// mounts both): what the host sees at a target is what pods get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_roots_are_read_only_throughout_and_cut_from_later_host_mounts() {
    if !can_mount() {
        return;
    }
    let fixture = Fixture::new();
    for dir in [fixture.kubelet_dir(), fixture.afs_root()] {
        nix::mount::mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("self bind");
        nix::mount::mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("shared");
    }
    // A mount already under the AFS root (an automounted volume).
    let submount = fixture.afs_root().join(CELL).join("automounted");
    mount_tmpfs(&submount);

    let mut command = Command::new(env!("CARGO_BIN_EXE_csi-driver"));
    // SAFETY: unshare is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)
        });
    }
    let mut args = vec!["--cache-manager", "auristor", "--mode", "node"];
    args.extend(OPEN_POLICY);
    let driver = Driver::spawn(&fixture, &args, command).await;

    let target = fixture.target("root");
    driver
        .node()
        .node_publish_volume(publish(&target, root_attrs(), true))
        .await
        .expect("publish root read-only");
    // The host's copy, and its submount, carry the attributes.
    for path in [target.clone(), target.join(CELL).join("automounted")] {
        let options = mount_options(&path).unwrap_or_else(|| panic!("{path:?} reached the host"));
        for flag in ["ro", "nosuid", "nodev"] {
            assert!(
                options.split(',').any(|o| o == flag),
                "{path:?}: {options} lacks {flag}"
            );
        }
    }
    // A mount made later on the host under the AFS root stays out of the target.
    let later = fixture.afs_root().join(CELL).join("later");
    mount_tmpfs(&later);
    fs::write(later.join("setuid-tool"), "x").expect("host file");
    assert!(
        !is_mount_point(&target.join(CELL).join("later")),
        "a later host mount propagated into the published root"
    );
    assert!(!target.join(CELL).join("later/setuid-tool").exists());

    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
    assert!(!is_mount_point(&target), "the host's copy went with it");
    assert!(!target.exists());
}
