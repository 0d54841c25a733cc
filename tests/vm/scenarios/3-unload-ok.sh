# (3) after unmounting everything, unload succeeds and the dependencies kmod-manager
# loaded follow; a dependency loaded BEFORE kmod-manager (here `modprobe rxrpc`, as
# another AFS client or the node's own setup would) stays loaded and is reported as
# left; `unload --wait` polls until the last user is gone.
CFG=/etc/kmod-manager/mappings.yaml
$MODPROBE rxrpc
check "rxrpc (with udp_tunnel, ip6_udp_tunnel) is loaded before kmod-manager runs" \
    sh -c "grep -q '^rxrpc ' /proc/modules && grep -q '^udp_tunnel ' /proc/modules && grep -q '^ip6_udp_tunnel ' /proc/modules"
run_km /tmp/load.log load --config $CFG
check "load succeeds" [ $? -eq 0 ]
check "the load found rxrpc present (verified, not inserted again)" contains /tmp/load.log "present  rxrpc"
check "kmod-manager recorded what it inserted in its state dir" \
    sh -c "grep -q '\"kafs\"' /run/kmod-manager/inserted-modules.json && ! grep -q '\"rxrpc\"' /run/kmod-manager/inserted-modules.json"
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
check "the dependencies kmod-manager loaded followed" not_loaded dns_resolver fscache netfs
check "rxrpc, loaded before kmod-manager, is still loaded" loaded rxrpc
check "and so are udp_tunnel and ip6_udp_tunnel, which modprobe loaded for it" \
    sh -c "grep -q '^udp_tunnel ' /proc/modules && grep -q '^ip6_udp_tunnel ' /proc/modules"
check "the unload reports them as left" \
    sh -c "grep 'left (not loaded by kmod-manager)' /tmp/wait.log | grep -q rxrpc"
check "the unload logged why rxrpc was left" \
    sh -c "grep 'left loaded: not ours to unload' /tmp/wait.log | grep -q 'module=rxrpc'"
check "the unload used delete_module" contains /tmp/wait.log "delete_module"
check "kmod-manager never called delete_module on rxrpc" \
    sh -c "! grep 'delete_module' /tmp/wait.log | grep -q rxrpc"
$MODPROBE -r rxrpc
check "the node's own modprobe -r removes rxrpc and its dependencies" none_loaded
run_km /tmp/again.log unload --config $CFG
check "unloading again is a no-op success" [ $? -eq 0 ]
check "it says not loaded" contains /tmp/again.log "not loaded"
# Timeout path; dns_resolver loaded before kmod-manager this time (the JSON report).
$MODPROBE dns_resolver
run_km /tmp/load2.log load --config $CFG --param debug=5
check "a load with --param passes the parameter to the module (debug=5)" sh -c "[ \"\$(cat /sys/module/kafs/parameters/debug)\" = 5 ]"
$BB mount -t afs none /afs -o dyn
run_km /tmp/to.log unload --config $CFG --wait 1s --poll 200ms
check "unload --wait 1s gives up while /afs stays mounted" [ $? -ne 0 ]
check "the timeout message names the mount" sh -c "grep -q 'gave up waiting' /tmp/to.log && grep -q '/afs' /tmp/to.log"
$BB umount /afs
run_km /tmp/u.json unload --config $CFG --output json
check "then a plain unload succeeds" [ $? -eq 0 ]
check "the JSON report lists dns_resolver as left" sh -c "grep -A2 '\"left\"' /tmp/u.json | grep -q dns_resolver"
check "dns_resolver is still loaded, the rest of the chain is gone" \
    sh -c "grep -q '^dns_resolver ' /proc/modules && ! grep -qE '^(kafs|rxrpc|netfs|fscache) ' /proc/modules"
$MODPROBE -r dns_resolver
check "nothing of the chain is left" none_loaded
