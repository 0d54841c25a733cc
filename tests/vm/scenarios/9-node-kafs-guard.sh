# kmt: node
# (9) AFS node, kAFS: the unload guard and the client's teardown. With volumes published,
# `kmod-manager unload` (as run inside the kmod pod) is refused naming the targets and
# /afs, and the daemon's SIGTERM stops NOTHING: the client (/afs) and kafs stay. A new
# daemon adopts the running client. After unpublish, SIGTERM takes /afs down, then kafs.
step "cell up"
check "the cell $CELL is up" cell_up
step "the client through the stack"
check "kmod-manager run: kafs loaded, /afs up" stack_up kafs
check "/afs is the kAFS dynamic root listing $CELL" afs_root_is 6b414653
check "csi-driver (node, kafs) answers" csi_start kafs
T1=$(target pod-guard-1 pv-vol) T2=$(target pod-guard-2 pv-root)
check "publish $TESTVOL on pod-guard-1" publish $T1 vol-g --attr mount-type=volume --attr cell-name=$CELL --attr volume-name=$TESTVOL
check "publish the AFS root on pod-guard-2" publish $T2 root-g --attr mount-type=root
step "unload while in use"
run_km /tmp/u1.log unload --config /tmp/km-kafs.yaml
check "unload from inside the kmod pod is refused" [ $? -ne 0 ]
check "the refusal names CSI target $T1 of pod pod-guard-1" contains /tmp/u1.log "CSI target $T1 of pod pod-guard-1"
check "the refusal names CSI target $T2 of pod pod-guard-2" contains /tmp/u1.log "CSI target $T2 of pod pod-guard-2"
check "the refusal names /afs" contains /tmp/u1.log "afs mount /afs "
check "SIGTERM while in use: kmod-manager exits 0" stack_down
check "it logged why it kept the module" contains /tmp/km.log "keeping it loaded"
check "nothing was stopped: /afs still the dynamic root, kafs loaded" client_kept kafs 6b414653
check "the volume still reads" ls $T1/README
step "a new daemon adopts the running client"
: > /tmp/km.log
check "it becomes ready" stack_up kafs
check "it adopted the mounted AFS root" contains /tmp/km.log "adopting the running client"
step "unpublish, then SIGTERM"
check "unpublish pod-guard-1" unpublish $T1 vol-g
check "unpublish pod-guard-2" unpublish $T2 root-g
check "SIGTERM when unused: kmod-manager exits 0" stack_down
check "it unmounted the AFS root first" contains /tmp/km.log "AFS root unmounted"
check "/afs unmounted and kafs unloaded" afs_down
check "no kernel oops" no_oops
