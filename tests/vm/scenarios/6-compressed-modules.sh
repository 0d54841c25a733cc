# (extra) compressed modules, as RHEL (.ko.xz) and others ship them: verified from the
# decompressed image, loaded with init_module; a truncated .ko.xz is refused before loading.
CFG=/etc/kmod-manager/mappings.yaml
check "the compressed tree's modules.dep names .ko.xz and .ko.zst files" \
    sh -c "grep -q 'kafs.ko.xz:' /lib/modules-compressed/$KVER/modules.dep && grep -q 'dns_resolver.ko.zst' /lib/modules-compressed/$KVER/modules.dep"
run_km /tmp/bad.log load --config $CFG --module-dir /lib/modules-compressed-bad-root/$KVER
check "a truncated kafs.ko.xz is refused" [ $? -ne 0 ]
check "the refusal says it cannot be decompressed" contains /tmp/bad.log "cannot decompress xz module"
check "nothing of the chain was loaded" none_loaded
run_km /tmp/load.log load --config $CFG --module-dir /lib/modules-compressed/$KVER
check "load from the compressed tree succeeds" [ $? -eq 0 ]
check "every module of the chain is loaded" all_loaded
check "they were loaded from decompressed images (init_module)" contains /tmp/load.log "init_module (decompressed image)"
run_km /tmp/again.log load --config $CFG --module-dir /lib/modules-compressed/$KVER
check "a second load verifies kafs by build id through the compressed file" contains /tmp/again.log "present  kafs (build id $KAFS_BUILD_ID)"
run_km /tmp/plain.log load --config $CFG
check "the uncompressed tree is recognised as the same build" [ $? -eq 0 ]
run_km /tmp/u.log unload --config $CFG
check "unload succeeds" [ $? -eq 0 ]
check "nothing of the chain is left" none_loaded
