# (2) with the AFS dynamic root mounted, unload is refused and names the mount; a bind of
# it inside another mount namespace also blocks unload after the first mount is gone; a
# mounted CSI target of our driver blocks it too.
CFG=/etc/kmod-manager/mappings.yaml
run_km /tmp/load.log load --config $CFG
check "load succeeds" [ $? -eq 0 ]
$BB mount -t afs none /afs -o dyn
check "the AFS dynamic root is mounted" sh -c "grep -q ' /afs afs ' /proc/mounts"
run_km /tmp/u1.log unload --config $CFG
check "unload is refused while /afs is mounted" [ $? -ne 0 ]
check "the refusal names the mount point /afs" contains /tmp/u1.log "afs mount /afs"
check "the refusal names the refcount" contains /tmp/u1.log "refcount is"
check "the refusal names pid 1 (the mount's namespace holder)" sh -c "grep -q 'used by pids 1' /tmp/u1.log"
check "kafs is still loaded" loaded kafs
check "delete_module was never called" sh -c "! grep -q delete_module /tmp/u1.log"

# Another mount namespace with a bind of the AFS root, held by a sleeping process.
$BB unshare -m --propagation private $BB sh -c "$BB mkdir -p /mnt/afsbind && $BB mount --bind /afs /mnt/afsbind && echo \$\$ > /tmp/ns.pid && exec $BB sleep 600" &
wait_for /tmp/ns.pid 10
NSPID=$(cat /tmp/ns.pid)
check "a process holds a second mount namespace" sh -c "[ \"\$(readlink /proc/$NSPID/ns/mnt)\" != \"\$(readlink /proc/1/ns/mnt)\" ]"
$BB umount /afs
check "/afs is unmounted in the first namespace" sh -c "! grep -q ' afs ' /proc/mounts"
run_km /tmp/u2.log unload --config $CFG
check "unload is still refused (bind in the other namespace)" [ $? -ne 0 ]
check "the refusal names the bind mount /mnt/afsbind" contains /tmp/u2.log "/mnt/afsbind"
check "the refusal names the holder pid $NSPID" contains /tmp/u2.log "pids $NSPID"
run_km /tmp/dry.log unload --config $CFG --dry-run --output json
check "--dry-run --output json reports the refusal" sh -c "grep -q '\"decision\": \"refused\"' /tmp/dry.log"
check "kafs is still loaded" loaded kafs
kill $NSPID; wait $NSPID 2>/dev/null

# A published CSI target of our driver (bind-mounted tmpfs stands in for the volume).
T=/var/lib/kubelet/pods/0000-pod-uid/volumes/kubernetes.io~csi/pv-afs
$BB mkdir -p $T/mount
echo '{"driverName":"auristorfs.csi.auristor.com","volumeHandle":"vol1"}' > $T/vol_data.json
$BB mount -t tmpfs tmpfs $T/mount
O=/var/lib/kubelet/pods/1111-pod-uid/volumes/kubernetes.io~csi/pv-other
$BB mkdir -p $O/mount
echo '{"driverName":"other.csi.example.com"}' > $O/vol_data.json
$BB mount -t tmpfs tmpfs $O/mount
run_km /tmp/u3.log unload --config $CFG
check "unload is refused while a CSI target of our driver is mounted" [ $? -ne 0 ]
check "the refusal names the CSI target and its pod" sh -c "grep -q 'CSI target $T/mount of pod 0000-pod-uid' /tmp/u3.log"
check "the other driver's target is not named" sh -c "! grep -q pv-other /tmp/u3.log"
$BB umount $T/mount
run_km /tmp/u4.log unload --config $CFG --csi-driver-name other.csi.example.com --dry-run
check "with --csi-driver-name the other driver's target counts" contains /tmp/u4.log "1111-pod-uid"
$BB umount $O/mount
check "kafs is still loaded at the end" loaded kafs
