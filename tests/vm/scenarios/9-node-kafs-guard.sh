# kmt: node
# (9) AFS node, kAFS: with volumes published, kmod-manager refuses to unload kafs and names
# the targets (also once the node's own /afs is gone); after unpublish, unload succeeds.
step "cell up"
check "the cell $CELL is up" cell_up
step "kafs loaded by kmod-manager, AFS root mounted"
check "kmod-manager loads kafs; /afs is the dynamic root" kafs_client_up
check "csi-driver (node, kafs) answers" csi_start kafs
T1=$(target pod-guard-1 pv-vol) T2=$(target pod-guard-2 pv-root)
check "publish $TESTVOL on pod-guard-1" publish $T1 vol-g --attr mount-type=volume --attr cell-name=$CELL --attr volume-name=$TESTVOL
check "publish the AFS root on pod-guard-2" publish $T2 root-g --attr mount-type=root
step "unload while in use"
run_km /tmp/u1.log unload --config /kmt/etc/kafs.yaml
check "unload is refused" [ $? -ne 0 ]
check "the refusal names CSI target $T1 of pod pod-guard-1" contains /tmp/u1.log "CSI target $T1 of pod pod-guard-1"
check "the refusal names CSI target $T2 of pod pod-guard-2" contains /tmp/u1.log "CSI target $T2 of pod pod-guard-2"
check "the refusal names /afs" contains /tmp/u1.log "afs mount /afs "
umount /afs
run_km /tmp/u2.log unload --config /kmt/etc/kafs.yaml
check "with /afs unmounted, unload is still refused" [ $? -ne 0 ]
check "the refusal names both targets" sh -c "grep -q 'CSI target $T1 of pod pod-guard-1' /tmp/u2.log && grep -q 'CSI target $T2 of pod pod-guard-2' /tmp/u2.log"
check "kafs is still loaded and the volume still readable" sh -c "grep -q '^kafs ' /proc/modules && ls $T1 >/dev/null"
step "unpublish, then unload"
check "unpublish pod-guard-1" unpublish $T1 vol-g
check "unpublish pod-guard-2" unpublish $T2 root-g
run_km /tmp/u3.log unload --config /kmt/etc/kafs.yaml --wait 60s
check "unload succeeds once nothing uses kafs" [ $? -eq 0 ]
check "kafs is unloaded" sh -c "! grep -q '^kafs ' /proc/modules"
check "no kernel oops" no_oops
