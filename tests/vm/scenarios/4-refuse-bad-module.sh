# (4) a module built for another kernel, a truncated and a garbled .ko are refused
# BEFORE any finit_module: nothing of the chain gets loaded, the kernel logs nothing; a
# module reached through a symbolic link is refused too.
CFG=/etc/kmod-manager/mappings.yaml
$BB dmesg -c > /dev/null
# The broken trees link their dependencies to the good files: a module is never opened
# through a symbolic link, so the first dependency is refused, naming its path.
run_km /tmp/linked.log load --config $CFG --module-dir /lib/modules-badmagic/$KVER
check "a module reached through a symbolic link is refused" [ $? -ne 0 ]
check "the refusal names the link" contains /tmp/linked.log "/lib/modules-badmagic/$KVER/kernel/.* is a symbolic link: refused"
check "nothing was loaded through the link" none_loaded
check "kmod-manager never called finit_module for it" check_no_finit /tmp/linked.log
for kind in badmagic truncated garbled; do materialize_tree /lib/modules-$kind/$KVER; done
for kind in badmagic truncated garbled; do
    run_km /tmp/$kind.log load --config $CFG --module-dir /lib/modules-$kind/$KVER
    check "$kind: load is refused" [ $? -ne 0 ]
    check "$kind: no module of the chain was loaded (dependencies come first)" none_loaded
    check "$kind: kmod-manager never called finit_module" check_no_finit /tmp/$kind.log
done
check "badmagic: the error names the other kernel and the running one" \
    sh -c "grep -q 'is for kernel \"$FAKE_KVER\"' /tmp/badmagic.log && grep -q \"running kernel is \\\"$KVER\\\"\" /tmp/badmagic.log"
check "truncated: the error says corrupt" contains /tmp/truncated.log "is corrupt"
check "garbled: the error says corrupt" contains /tmp/garbled.log "is corrupt"
check "the kernel logged no module load attempt" sh -c "! dmesg | grep -qiE 'kafs|rxrpc|version magic|module verification|disagrees'"
# Control: the kernel itself rejects the bad-vermagic file when forced to try.
$BB insmod /lib/modules-badmagic/$KVER/kernel/fs/afs/kafs.ko > /tmp/insmod.log 2>&1
check "control: the kernel also refuses it (insmod fails)" [ $? -ne 0 ]
# The daemon refuses an image that is not the one mapped for this kernel, and loads nothing.
run_km /tmp/img.log run --config $CFG --image registry.example/kafs-test-1:6.1.0-1-amd64 --ready-file /run/r --listen 127.0.0.1:9809
check "run refuses a wrong image for this kernel" [ $? -ne 0 ]
check "the error names the mapped image" contains /tmp/img.log "registry.example/kafs-test-1:$KVER"
check "nothing was loaded" none_loaded
run_km /tmp/ok.log load --config $CFG
check "the good tree still loads afterwards" [ $? -eq 0 ]
