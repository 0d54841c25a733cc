# kmt: node
# (8) AFS node, kAFS: mount-type root published; the test volume is reachable under the
# target (the dynamic root, the cell, the mount point of the test volume), first from a
# pod's own network namespace: kAFS crosses a mount point in the caller's.
step "cell up"
check "the cell $CELL is up" cell_up
step "kafs loaded by kmod-manager, AFS root mounted"
check "the stack brings the client up: kmod-manager run loads kafs, gives it the cells, mounts the dynamic root" stack_up kafs
check "/afs is the kAFS dynamic root listing $CELL" afs_root_is 6b414653
check "csi-driver (node, kafs) answers" csi_start kafs
check "a pod's network namespace is pinned (ip netns add) and reaches the cell" pod_netns pod1
check "kmod-manager gave it the cells (within 5 s of the pin)" sh -c \
    "for i in \$(seq 50); do ip netns exec pod1 grep -q ' $CELL\$' /proc/net/afs/cells && exit 0; sleep 0.1; done; exit 1"
show ip netns exec pod1 cat /proc/net/afs/cells
T=$(target pod-r pv-root)
check "publish mount-type=root" publish $T root-1 --attr mount-type=root
check "the target is a bind of the dynamic root" grep -q " $T afs " /proc/mounts
# Before anything of the node's namespace crosses the cell: the pod's step is the first.
check "from the pod's network namespace, the test volume is reachable under the target" \
    ip netns exec pod1 grep -q made-by-cell-init $T/$CELL/$TESTVOL/README
check "the cell is listed under the target" sh -c "ls $T | grep -qx $CELL"
check "the test volume is reachable under the target: $T/$CELL/$TESTVOL/README" grep -q made-by-cell-init $T/$CELL/$TESTVOL/README
show ls -la $T/$CELL/$TESTVOL
check "a file written under the root target reads back through /afs" sh -c "echo via-root > $T/$CELL/$TESTVOL/root.txt && grep -qx via-root /afs/$CELL/$TESTVOL/root.txt"
check "unpublish" unpublish $T root-1
check "the target and its submounts are gone" sh -c "! grep -q ' $T' /proc/mounts && [ ! -e $T ]"
step "the pod stops (SIGTERM): client down, then the module"
check "kmod-manager exits 0" stack_down
check "/afs unmounted and kafs unloaded (the pod's namespace, with its cells, still there)" afs_down
check "the pod's network namespace goes" ip netns del pod1
check "no kernel oops" no_oops
