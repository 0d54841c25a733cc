# (3) after unmounting everything, unload succeeds and the dependencies follow;
# `unload --wait` polls until the last user is gone.
CFG=/etc/kmod-manager/mappings.yaml
run_km /tmp/load.log load --config $CFG
check "load succeeds" [ $? -eq 0 ]
$BB mount -t afs none /afs -o dyn
$BB unshare -m --propagation private $BB sh -c "$BB mkdir -p /mnt/afsbind && $BB mount --bind /afs /mnt/afsbind && echo \$\$ > /tmp/ns.pid && exec $BB sleep 600" &
wait_for /tmp/ns.pid 10
NSPID=$(cat /tmp/ns.pid)
$BB umount /afs
# Unload with --wait in the background; the last user goes away 3 s later.
$KM unload --config $CFG --wait 60s --poll 200ms > /tmp/wait.log 2>&1 &
WPID=$!
$BB sleep 3
check "unload --wait is still waiting while the other namespace holds AFS" sh -c "kill -0 $WPID && grep -q 'waiting' /tmp/wait.log"
check "kafs is loaded while waiting" loaded kafs
kill $NSPID; wait $NSPID 2>/dev/null
wait $WPID
rc=$?
$BB sed 's/^/    | /' /tmp/wait.log
check "unload --wait succeeds once nothing uses the module" [ $rc -eq 0 ]
check "kafs is gone from /proc/modules" sh -c "! grep -q '^kafs ' /proc/modules"
check "the dependencies followed (none of the chain is loaded)" none_loaded
check "the unload used delete_module" contains /tmp/wait.log "delete_module"
run_km /tmp/again.log unload --config $CFG
check "unloading again is a no-op success" [ $? -eq 0 ]
check "it says not loaded" contains /tmp/again.log "not loaded"
# Timeout path.
run_km /tmp/load2.log load --config $CFG --param debug=5
check "a load with --param passes the parameter to the module (debug=5)" sh -c "[ \"\$(cat /sys/module/kafs/parameters/debug)\" = 5 ]"
$BB mount -t afs none /afs -o dyn
run_km /tmp/to.log unload --config $CFG --wait 1s --poll 200ms
check "unload --wait 1s gives up while /afs stays mounted" [ $? -ne 0 ]
check "the timeout message names the mount" sh -c "grep -q 'gave up waiting' /tmp/to.log && grep -q '/afs' /tmp/to.log"
$BB umount /afs
run_km /tmp/u.log unload --config $CFG
check "then a plain unload succeeds" [ $? -eq 0 ]
check "nothing of the chain is left" none_loaded
