# kmt: node
# (11) AFS node, kAFS: the CSI driver is killed (kill -9) while volumes are published; the
# mounts survive and keep serving; the restarted driver answers a repeated publish with OK
# and unpublishes.
step "cell up"
check "the cell $CELL is up" cell_up
check "the stack brings the client up: kmod-manager run loads kafs, gives it the cells, mounts the dynamic root" stack_up kafs
check "/afs is the kAFS dynamic root listing $CELL" afs_root_is 6b414653
check "csi-driver (node, kafs) answers" csi_start kafs
VOL="--attr mount-type=volume --attr cell-name=$CELL --attr volume-name=$TESTVOL"
T1=$(target pod-k1 pv-k1) T2=$(target pod-k2 pv-root)
check "publish $TESTVOL on pod-k1" publish $T1 vol-k $VOL
check "publish the root on pod-k2" publish $T2 root-k --attr mount-type=root
check "a file written through the volume target" sh -c "echo before-kill > $T1/restart.txt"
step "kill -9 the driver"
OLD=$CSI_PID
kill -9 $OLD; wait $OLD 2>/dev/null
check "the driver is gone" sh -c "! kill -0 $OLD 2>/dev/null"
check "both mounts survive" sh -c "grep -q ' $T1 afs ' /proc/mounts && grep -q ' $T2 afs ' /proc/mounts"
check "the volume target still serves" sh -c "grep -qx before-kill $T1/restart.txt && echo after-kill >> $T1/restart.txt"
step "restart the driver"
check "csi-driver restarted (stale socket handled)" csi_start kafs
check "a repeated publish of pod-k1 answers OK" publish $T1 vol-k $VOL
check "a repeated publish read-only on pod-k1 answers ALREADY_EXISTS" sh -c "! csi-bench --endpoint $EP publish --volume-id vol-k --target $T1 $VOL --readonly >/tmp/ae.out 2>&1 && grep -qi 'already' /tmp/ae.out"
check "unpublish pod-k1 after the restart" unpublish $T1 vol-k
check "unpublish pod-k2 after the restart" unpublish $T2 root-k
check "both targets are unmounted and gone" sh -c "! grep -q kubernetes.io~csi /proc/mounts && [ ! -e $T1 ] && [ ! -e $T2 ]"
check "the data written before and after the kill is in AFS" sh -c "grep -qx before-kill /afs/$CELL/$TESTVOL/restart.txt && grep -qx after-kill /afs/$CELL/$TESTVOL/restart.txt"
step "the pod stops (SIGTERM): client down, then the module"
check "kmod-manager exits 0" stack_down
check "/afs unmounted and kafs unloaded" afs_down
check "no kernel oops" no_oops
