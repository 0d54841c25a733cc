# The demo on the AFS node (bin/demo boots this): every step with its real output.
step "The node: Debian bookworm guest root, kernel $KVER"
show uname -a
step "Starting the AFS cell $CELL (ptserver, vlserver, fileserver, volserver; $ADDR on lo, no auth)"
check "cell up" cell_up
show sh -c "ip -4 addr show dev lo | grep inet; cat /etc/openafs/server/CellServDB /var/lib/openafs/local/NetInfo"
show pgrep -a -f /usr/lib/openafs/
show vos listvol $ADDR a -noauth -cell $CELL
step "kmod-manager loads kafs (verified against this kernel, then finit_module)"
check "kafs loaded" run_km /tmp/load.log load --config /kmt/etc/kafs.yaml
show grep -E '^(kafs|rxrpc|fscache|netfs) ' /proc/modules
echo "add $CELL $ADDR" > /proc/fs/afs/cells
check "AFS dynamic root mounted on /afs" mount -t afs none /afs -o dyn
show ls /afs
step "Starting csi-driver (node mode, kafs cache manager) on $SOCK"
check "csi-driver answers" csi_start kafs
show cat /tmp/csi-info.out
T1=$(target 7f3c-demo-pod pv-afs-test)
T2=$(target 9a1e-reader-pod pv-afs-test-ro)
VOL="--attr mount-type=volume --attr cell-name=$CELL --attr volume-name=$TESTVOL"
step "NodePublishVolume: $CELL:$TESTVOL for pod 7f3c-demo-pod (as kubelet would ask)"
show cat $(dirname $T1)/vol_data.json
check "published" publish $T1 pv-afs-test $VOL
show grep " $T1 " /proc/mounts
step "The pod writes a file; a second pod reads it through its own read-only publish"
echo "hello from pod 7f3c at $(date -u +%H:%M:%S) (written through $T1)" > $T1/hello.txt
check "read-only publish for pod 9a1e-reader-pod" publish $T2 pv-afs-test-ro $VOL --readonly
show cat $T2/hello.txt
check "read back through the second publish" grep -q "hello from pod 7f3c" $T2/hello.txt
echo "    \$ echo nope > $T2/nope.txt"
sh -c "echo nope > $T2/nope.txt" 2>&1 | sed 's/^/    | /'
check "the read-only publish refuses writes (EROFS)" writes_refused_erofs $T2/nope.txt
step "And through the AFS root itself: /afs/$CELL/$TESTVOL"
show ls -l /afs/$CELL/$TESTVOL
step "kmod-manager unload while pods use AFS: refused, and it says why"
umount /afs
run_km /tmp/u1.log unload --config /kmt/etc/kafs.yaml
check "unload refused while targets are published" [ $? -ne 0 ]
check "kafs still loaded" grep -q '^kafs ' /proc/modules
step "NodeUnpublishVolume for both pods"
check "unpublish 7f3c-demo-pod" unpublish $T1 pv-afs-test
check "unpublish 9a1e-reader-pod" unpublish $T2 pv-afs-test-ro
show sh -c "grep -c kubernetes.io~csi /proc/mounts || true"
step "kmod-manager unload now that nothing uses kafs"
check "kafs unloaded" run_km /tmp/u2.log unload --config /kmt/etc/kafs.yaml --wait 60s
show sh -c "grep -E '^(kafs|rxrpc) ' /proc/modules || echo 'kafs and rxrpc: not loaded'"
kill $CSI_PID 2>/dev/null
