# (1) select + load kafs and its dependencies; /proc/modules shows them; load is idempotent.
CFG=/etc/kmod-manager/mappings.yaml
check "nothing of the chain is loaded at boot" none_loaded
check "select prints the image of the first matching mapping" \
    sh -c "[ \"\$($KM select --config $CFG 2>/dev/null)\" = \"registry.example/kafs-test-1:$KVER\" ]"
check "select --kernel of a RHEL kernel renders the kABI tag" \
    sh -c "[ \"\$($KM select --config $CFG --kernel 4.18.0-305.49.1.el8_4.x86_64 2>/dev/null)\" = registry.example/auristor-kmod-test-1:4.18.0-305.el8.x86_64 ]"
run_km /tmp/nomatch.log select --config $CFG --kernel 5.4.0-1-generic
check "select with no matching mapping fails" [ $? -ne 0 ]
check "the no-match error names the kernel and the mappings tried" \
    sh -c "grep -q '5.4.0-1-generic' /tmp/nomatch.log && grep -q 'literal' /tmp/nomatch.log && grep -q 'regexp' /tmp/nomatch.log"
run_km /tmp/load.log load --config $CFG
check "kmod-manager load succeeds" [ $? -eq 0 ]
for m in $CHAIN; do check "/proc/modules shows $m" loaded "$m"; done
check "kafs is live in sysfs" sh -c "[ \"\$(cat /sys/module/kafs/initstate)\" = live ]"
check "afs filesystem type is registered" contains /proc/filesystems afs
run_km /tmp/load2.log load --config $CFG
check "a second load is idempotent (exit 0)" [ $? -eq 0 ]
check "the second load reports kafs as already present" contains /tmp/load2.log "present  kafs"
check "the second load called finit_module for nothing" check_no_finit /tmp/load2.log
check "the second load verified kafs by its build id" contains /tmp/load2.log "present  kafs (build id $KAFS_BUILD_ID)"
materialize_tree /lib/modules-rebuilt/$KVER
run_km /tmp/rebuilt.log load --config $CFG --module-dir /lib/modules-rebuilt/$KVER
check "loading a different build of the loaded kafs is refused" [ $? -ne 0 ]
check "the refusal names both builds" sh -c "grep -q 'already loaded as build id $KAFS_BUILD_ID' /tmp/rebuilt.log && grep -q 'is build id $REBUILT_BUILD_ID' /tmp/rebuilt.log"
run_km /tmp/status.json status --config $CFG --output json
check "status --output json reports kafs loaded" sh -c "grep -q '\"state\": \"loaded\"' /tmp/status.json"
run_km /tmp/status.txt status --config $CFG
check "status table lists kafs and its dependency rxrpc" sh -c "grep -q '^kafs ' /tmp/status.txt && grep -q '^rxrpc ' /tmp/status.txt"
