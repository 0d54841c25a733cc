# kmt: node
# (13) AFS node, kAFS: the node plugin's trust boundary on the real kernel. The driver runs
# in a mount namespace of its own, kubelet's directory shared with the host's and /afs a
# peer of the host's, as the DaemonSet pod runs (Bidirectional, HostToContainer): a root
# publish is refused while /afs is not the AFS filesystem; a read-only root publish is
# read-only, nosuid and nodev on the host, its kAFS automounts too, and a mount made later
# on the host under /afs stays out of it; mount flags are applied (noexec) or refused
# (context= on a kernel without SELinux) leaving nothing; targets outside kubelet's tree
# and cells outside the allow-list are refused; unpublish leaves a foreign mount alone.
step "cell up"
check "the cell $CELL is up" cell_up
step "/afs not yet the dynamic root"
# gone DIR: nothing is mounted at or below DIR and it does not exist.
gone() { [ -z "$(mounts_under "$1")" ] && [ ! -e "$1" ]; }
mkdir -p /afs $KUBELET
# kubelet's directory shared (Bidirectional); /afs a shared mount point, so that what the
# AFS client mounts there later reaches the driver's namespace (HostToContainer).
check "kubelet's directory is a shared mount" sh -c "mount --bind $KUBELET $KUBELET && mount --make-shared $KUBELET"
check "/afs is a shared mount point" sh -c "mount --bind /afs /afs && mount --make-shared /afs"
check "csi-driver starts in its own mount namespace" csi_start kafs unshare -m --propagation unchanged
ROOT="--attr mount-type=root"
T=$(target pod-t1 pv-root)
check "a root publish while /afs is a plain directory is refused, naming it" \
    refused /tmp/notafs.out "/afs is not the AFS filesystem" publish --volume-id r --target $T $ROOT --readonly
show cat /tmp/notafs.out
check "nothing is mounted or left at the target" gone $T
step "/afs becomes the dynamic root: the stack brings the client up"
check "kmod-manager run: kafs loaded, the cells given, /afs mounted" stack_up kafs
show stat -f -c 'statfs type of /afs: %t' /afs
check "the dynamic root reports the kAFS magic 6b414653" sh -c "stat -f -c %t /afs | grep -qx 6b414653"
step "a read-only root publish"
check "publish the root read-only" publish $T r $ROOT --readonly
check "the test volume is reachable through the host's copy (automounted)" grep -q made-by-cell-init $T/$CELL/$TESTVOL/README
show mounts_under $T
check "every mount at and below the target is ro,nosuid,nodev" all_mounts_have $T ro nosuid nodev
check "writing through it fails with EROFS" writes_refused_erofs $T/$CELL/$TESTVOL/README
check "a directory on the host under /afs (writable volume)" mkdir -p /afs/$CELL/$TESTVOL/later
check "a mount made later on the host under /afs" mount -t tmpfs later /afs/$CELL/$TESTVOL/later
check "does not appear inside the published root" sh -c "! grep -q ' $T/$CELL/$TESTVOL/later ' /proc/mounts"
umount /afs/$CELL/$TESTVOL/later
check "unpublish" unpublish $T r
check "the host's copy and its automounts are gone" gone $T
step "mount flags"
VOL="--attr mount-type=volume --attr cell-name=$CELL --attr volume-name=$TESTVOL"
T2=$(target pod-t2 pv-vol)
check "publish $TESTVOL with noexec" publish $T2 v $VOL --mount-flag noexec
check "the host's copy is noexec,nosuid,nodev" all_mounts_have $T2 noexec nosuid nodev
check "unpublish" unpublish $T2 v
check "context= on a kernel without SELinux is refused by the kernel, named" \
    refused /tmp/ctx.out "context=" publish --volume-id v --target $T2 $VOL --mount-flag context=system_u:object_r:container_file_t:s0
show cat /tmp/ctx.out
check "and leaves nothing" gone $T2
check "an unsupported flag is refused before any mount" \
    refused /tmp/sync.out "mount_flags" publish --volume-id v --target $T2 $VOL --mount-flag sync
step "only kubelet's tree, only our mounts, only allowed cells"
check "a target outside kubelet's tree is refused" \
    refused /tmp/etc.out "target_path" publish --volume-id v --target /etc $VOL
check "/etc is untouched" sh -c "! grep -q ' /etc ' /proc/mounts"
T3=$(target pod-t3 pv-foreign)
mkdir -p $T3 && mount -t tmpfs foreign $T3
check "unpublish of a foreign mount at a target is refused, naming it" \
    refused /tmp/foreign.out "tmpfs" unpublish --volume-id v --target $T3
check "the foreign mount stays" is_mounted $T3
umount $T3
check "a cell outside --allowed-cells is refused" \
    refused /tmp/cell.out "cell-name" publish --volume-id v --target $T2 --attr mount-type=volume --attr cell-name=grand.central.org --attr volume-name=root.cell
check "no mount of the driver is left" sh -c "! grep -q kubernetes.io~csi /proc/mounts"
step "the kmod pod stops: the client goes, in every namespace"
check "kmod-manager exits 0" stack_down
check "/afs unmounted and kafs unloaded" afs_down
check "no kernel oops" no_oops
