# kmt: node
# (7) AFS node, kAFS: kmod-manager loads kafs; the CSI driver (node mode, kafs) publishes
# the test volume (mount-type volume); a file written through the target is read back
# through a second publish of the same volume and through the AFS root; a read-only
# publish refuses writes (EROFS).
step "cell up"
check "the cell $CELL is up (ptserver, vlserver, fileserver, volserver on $ADDR)" cell_up
step "kafs loaded by kmod-manager, AFS root mounted"
check "the stack brings the client up: kmod-manager run loads kafs, gives it the cells, mounts the dynamic root" stack_up kafs
check "/afs is the kAFS dynamic root listing $CELL" afs_root_is 6b414653
check "csi-driver (node, kafs) answers on $SOCK" csi_start kafs
VOL="--attr mount-type=volume --attr cell-name=$CELL --attr volume-name=$TESTVOL"
T1=$(target pod-a pv-a) T2=$(target pod-b pv-b) T3=$(target pod-c pv-c)
step "publish $TESTVOL"
check "publish on pod-a's target" publish $T1 vol-a $VOL
check "the target is an afs mount of %$CELL:$TESTVOL" grep -q "^%$CELL:$TESTVOL $T1 afs rw," /proc/mounts
STAMP="written through a CSI target at $(date +%s.%N)"
check "a file written through the target" sh -c "echo '$STAMP' > $T1/hello.txt"
check "publish the same volume on pod-b's target" publish $T2 vol-b $VOL
check "the file reads back through the second target" grep -qxF "$STAMP" $T2/hello.txt
check "the file reads back through the AFS root /afs/$CELL/$TESTVOL" grep -qxF "$STAMP" /afs/$CELL/$TESTVOL/hello.txt
check "read-only publish on pod-c's target" publish $T3 vol-c $VOL --readonly
show grep " $T3 " /proc/mounts
check "the read-only target is a read-only afs mount of $CELL:$TESTVOL" grep -qE "^[#%]$CELL:$TESTVOL $T3 afs ro," /proc/mounts
check "a repeated read-only publish answers OK (idempotent)" publish $T3 vol-c $VOL --readonly
check "the file reads through the read-only target" grep -qxF "$STAMP" $T3/hello.txt
check "writing through the read-only target fails with EROFS" writes_refused_erofs $T3/hello.txt
check "the file is unchanged" grep -qxF "$STAMP" $T1/hello.txt
for t in $T1 $T2 $T3; do
    check "unpublish $t" unpublish $t vol
    check "$t is unmounted and gone" sh -c "! grep -q ' $t ' /proc/mounts && [ ! -e $t ]"
done
step "the pod stops (SIGTERM): client down, then the module"
check "kmod-manager exits 0" stack_down
check "/afs unmounted and kafs unloaded" afs_down
check "no kernel oops" no_oops
