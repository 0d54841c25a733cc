# (5) the daemon: ready file + /healthz /readyz /metrics; SIGTERM with AFS mounted keeps
# the module and exits 0; SIGTERM with nothing mounted unloads what the daemon (or its
# earlier run) loaded and exits 0; a dependency loaded before the daemon is left.
CFG=/etc/kmod-manager/mappings.yaml
IMG=registry.example/kafs-test-1:$KVER
$KM run --config $CFG --image $IMG --ready-file /run/kmod/ready --listen 127.0.0.1:9808 > /tmp/run1.log 2>&1 &
RPID=$!
wait_for /run/kmod/ready 30
check "the daemon writes its ready file" [ -e /run/kmod/ready ]
check "kafs is loaded" loaded kafs
check "/healthz answers ok" sh -c "wget -q -O - http://127.0.0.1:9808/healthz | grep -q ok"
check "/readyz answers ready" sh -c "wget -q -O - http://127.0.0.1:9808/readyz | grep -q ready"
wget -q -O /tmp/metrics.txt http://127.0.0.1:9808/metrics
check "/metrics reports the module loaded" contains /tmp/metrics.txt 'kmod_manager_module_loaded{module="kafs"} 1'
check "/metrics reports ready" contains /tmp/metrics.txt 'kmod_manager_ready 1'
$BB mount -t afs none /afs -o dyn
stop_daemon $RPID /tmp/run1.log
rc=$?
check "SIGTERM with /afs mounted: the daemon exits 0" [ $rc -eq 0 ]
check "the module is kept" loaded kafs
check "the daemon logged why it kept the module" sh -c "grep -q 'keeping it loaded' /tmp/run1.log && grep -q '/afs' /tmp/run1.log"
check "the ready file is removed" [ ! -e /run/kmod/ready ]
check "the daemon recorded what it inserted in its state dir" \
    sh -c "grep -q '\"kafs\"' /run/kmod-manager/inserted-modules.json && grep -q '\"rxrpc\"' /run/kmod-manager/inserted-modules.json"
$BB umount /afs
# Second daemon: the module is already loaded (same build): adopt it, then unload on SIGTERM.
$KM run --config $CFG --image $IMG --ready-file /run/kmod/ready --listen 127.0.0.1:9808 > /tmp/run2.log 2>&1 &
RPID=$!
wait_for /run/kmod/ready 30
check "a restarted daemon adopts the loaded module and becomes ready" sh -c "[ -e /run/kmod/ready ] && grep -q 'already loaded' /tmp/run2.log"
stop_daemon $RPID /tmp/run2.log
rc=$?
check "SIGTERM with nothing mounted: the daemon exits 0" [ $rc -eq 0 ]
check "the module and its dependencies are unloaded" none_loaded
# A SIGTERM that arrives during the start (while loading) is not lost: the daemon finishes
# the start, then runs the normal shutdown path (nothing uses the module: it unloads).
$KM run --config $CFG --image $IMG --ready-file /run/kmod/ready --listen 127.0.0.1:9808 > /tmp/run3.log 2>&1 &
RPID=$!
$BB usleep 150000
check "the signal is sent while the module chain is still loading" sh -c "! grep -q 'module loaded and live' /tmp/run3.log"
stop_daemon $RPID /tmp/run3.log
rc=$?
check "SIGTERM during the start: the daemon exits 0" [ $rc -eq 0 ]
check "SIGTERM during the start: the shutdown path ran after the load" sh -c "grep -q 'module loaded and live' /tmp/run3.log && grep -q 'shutting down' /tmp/run3.log"
check "SIGTERM during the start: no ready file is left behind" [ ! -e /run/kmod/ready ]
check "SIGTERM during the start: the unused module was unloaded" none_loaded
# A dependency loaded before the daemon started is not the daemon's: SIGTERM leaves it.
$MODPROBE dns_resolver
$KM run --config $CFG --image $IMG --ready-file /run/kmod/ready --listen 127.0.0.1:9808 > /tmp/run4.log 2>&1 &
RPID=$!
wait_for /run/kmod/ready 30
check "with dns_resolver loaded before it, the daemon becomes ready" [ -e /run/kmod/ready ]
stop_daemon $RPID /tmp/run4.log
rc=$?
check "SIGTERM when idle: the daemon exits 0" [ $rc -eq 0 ]
check "what the daemon loaded is unloaded" not_loaded kafs rxrpc netfs fscache
check "dns_resolver, loaded before the daemon, is left loaded" loaded dns_resolver
check "the daemon logged dns_resolver as left" \
    sh -c "grep 'left loaded: not ours to unload' /tmp/run4.log | grep -q dns_resolver"
$MODPROBE -r dns_resolver
check "nothing of the chain is left" none_loaded
