# kmt: node
# (12) the kmod driver container AS BUILT (images/build: buildah, unpacked from its OCI
# layout), run the way a container runtime runs the operator's DaemonSet pod: its own
# root (chroot into the image), the command and environment of the image config plus the
# pod's env, the host's /proc (hostPID) with /proc/fs read-only, the pod's capabilities
# only, a read-only /sys, /dev, no /tmp (the image has
# none and its root is read-only, as in the pod), an emptyDir at
# /run/kmod-manager, the ConfigMap at /etc/kmod-manager, the kubelet dir read-only, and
# the client's map: the cell's CellServDB and ThisCell alone at /etc/afs-map, read-only. No
# host /lib/modules and no host afsd: the image brings its module tree and afsd. The node
# becomes an AFS client through the container alone, with kAFS and with openafs.ko + afsd.
R=/image
step "cell up"
check "the cell $CELL is up" cell_up

# container_config kafs|openafs: the operator's kmod-manager config (objects::kmod_config)
# as its ConfigMap holds it: module, kernel mappings, client.
container_config() {
    printf 'moduleVersion: "image-test"\nmodule:\n  name: %s\n  filesystemTypes: [afs]\n' "$1"
    printf 'kernelMappings:\n  - regexp: %s\n    containerImage: %s\n' "'6\.1\..*'" 'localhost/afs/auristor-kmod-${MODULE_VERSION}:${KERNEL_FULL_VERSION}'
    km_config "$1" /usr/sbin/afsd | sed -n '/^client:/,$p'
}
# start_container LOG: runs the container in the background, PID in CPID: the runtime's
# exec of the image's Entrypoint + Cmd with the image's Env and the pod's.
start_container() {
    $BB env -i $($BB cat /etc/kmt/image.env) \
        KMOD_CONFIG=/etc/kmod-manager/config.yaml KMOD_MODULE_VERSION=image-test \
        KMOD_IMAGE=localhost/afs/auristor-kmod-image-test:$KVER \
        KMOD_READY_FILE=/run/kmod-manager/ready KMOD_REPORT_NODE=false KMOD_FS_TYPES=afs \
        KMOD_CSI_DRIVER_NAME=auristorfs.csi.auristor.com KMOD_KUBELET_DIR=/var/lib/kubelet \
        KMOD_LISTEN=127.0.0.1:9808 RUST_LOG=info NO_COLOR=1 \
        /usr/bin/setpriv --no-new-privs --bounding-set=-all,$CAPS $BB chroot $R $ARGV >"$1" 2>&1 &
    CPID=$!
}
# container_up LOG: started and /readyz ready (module AND client) within 120 s.
container_up() { : > /tmp/km.log; start_container /tmp/km.log; readyz_within 120; }
container_down() { stop_daemon $CPID /tmp/km.log; }

container_checks() {
check "the image's tree is for this kernel" [ -f $R/lib/modules/$KVER/modules.dep ]
check "the image carries kafs" sh -c "ls $R/lib/modules/$KVER/kernel/fs/afs/ | grep -q '^kafs\.ko'"
check "the image carries the DKMS-built openafs.ko" [ -f $R/lib/modules/$KVER/extra/openafs.ko ]
check "the image carries afsd" [ -x $R/usr/sbin/afsd ]
check_not "the image has no modprobe" sh -c "ls $R/sbin/modprobe $R/usr/sbin/modprobe $R/bin/kmod $R/usr/bin/kmod 2>/dev/null | grep -q ."
check "the image runs as root (USER 0:0: loading needs CAP_SYS_MODULE)" sh -c "grep -qx '0:0' /etc/kmt/image.user"

mkdir -p $R/proc $R/sys $R/dev $R/run/kmod-manager $R/etc/kmod-manager $R/etc/afs-map $R/var/lib/kubelet /var/lib/kubelet /tmp/kmod-config /mnt/pod
mount --bind /proc $R/proc
# As runc's OCI defaults: /proc/fs read-only in the container.
mount --bind $R/proc/fs $R/proc/fs && mount -o remount,bind,ro $R/proc/fs
# The operator's capabilities for the kmod container (objects/kmod.rs), nothing more
# (setpriv: the bounding set, no_new_privs as allowPrivilegeEscalation: false).
CAPS=+sys_module,+sys_ptrace,+sys_admin,+sys_chroot
mount --bind /sys $R/sys && mount -o remount,bind,ro $R/sys
mount --bind /dev $R/dev
mount -t tmpfs tmpfs $R/run/kmod-manager
mount --bind /tmp/kmod-config $R/etc/kmod-manager && mount -o remount,bind,ro $R/etc/kmod-manager
mount --bind /etc/afs-map $R/etc/afs-map && mount -o remount,bind,ro $R/etc/afs-map
mount --bind /var/lib/kubelet $R/var/lib/kubelet && mount -o remount,bind,ro $R/var/lib/kubelet
ARGV=$($BB cat /etc/kmt/image.argv | $BB tr '\n' ' ')
check "the image's command is kmod-manager run" [ "$ARGV" = "/usr/local/bin/kmod-manager run " ]

step "kAFS through the container"
container_config kafs > /tmp/kmod-config/config.yaml
check "the container becomes ready: kafs loaded from the image, the cells given, /afs mounted" container_up
check "/afs is the kAFS dynamic root listing $CELL" afs_root_is 6b414653
check "the container runs with the pod's four capabilities only" grep -q "^CapEff:.*00000000002d0000" /proc/$CPID/status
check "the test volume reads through /afs" grep -q made-by-cell-init /afs/$CELL/$TESTVOL/README
check "a pod binds the volume (an AFS mount of its own)" mount --bind /afs/$CELL/$TESTVOL /mnt/pod
container_down
check "SIGTERM while the pod uses AFS: the container exits 0" [ $? -eq 0 ]
check "nothing was stopped: /afs still the dynamic root, kafs loaded" client_kept kafs 6b414653
check "the container logged why, naming the pod's mount" sh -c "grep -q 'keeping it loaded' /tmp/km.log && grep -q '/mnt/pod' /tmp/km.log"
umount /mnt/pod
check "a new container adopts the running client and becomes ready" container_up
check "it adopted the mounted AFS root" contains /tmp/km.log "adopting the running client"
check "the record of what the first container inserted is in the emptyDir" \
    sh -c "grep -q '\"kafs\"' $R/run/kmod-manager/inserted-modules.json"
container_down
check "SIGTERM when idle: the container exits 0" [ $? -eq 0 ]
check "/afs unmounted" afs_down
check "kafs and the chain the container inserted unloaded" not_loaded kafs rxrpc dns_resolver ip6_udp_tunnel udp_tunnel
# 9p needs netfs and fscache, so the node's boot loaded them before any container ran:
# they were never the container's to remove.
boot_modules_kept() { loaded netfs && loaded fscache; }
check "netfs and fscache (the node's, loaded at boot for 9p) kept" boot_modules_kept
check "the container said why it kept them" contains /tmp/km.log 'left=\["fscache", "netfs"\]'

step "openafs.ko and the image's afsd through the container"
container_config openafs > /tmp/kmod-config/config.yaml
CAPS=$CAPS,+sys_nice # afsd's Rx priority: given where afsd runs
check "the container becomes ready: openafs.ko loaded from the image, afsd started, /afs mounted" container_up
check "/afs is OpenAFS's root (magic 5346414f) listing $CELL" afs_root_is 5346414f
check "the container runs with those and CAP_SYS_NICE only" grep -q "^CapEff:.*0000000000ad0000" /proc/$CPID/status
check "it made the runtime's read-only /proc/fs writable for afsd" contains /tmp/km.log "made read-write for afsd"
check "the test volume reads through /afs" grep -q made-by-cell-init /afs/$CELL/$TESTVOL/README
container_down
check "SIGTERM when idle: the container exits 0" [ $? -eq 0 ]
check "/afs unmounted, afsd stopped, openafs unloaded" afs_down
check "the container unmounted the AFS root, then stopped afsd, then unloaded" \
    in_order /tmp/km.log "AFS root unmounted" "afsd -shutdown" "module unloaded"
check "no kernel oops" no_oops
}
if [ -x $R/usr/local/bin/kmod-manager ]; then
    ok "the built kmod image is in the guest"
    container_checks
else
    notok "the built kmod image is in the guest (run images/build first)"
fi
