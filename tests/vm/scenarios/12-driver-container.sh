# (12) the kmod driver container AS BUILT (images/build: buildah, unpacked from its OCI
# layout), run the way a container runtime runs the operator's DaemonSet pod: its own
# root (chroot into the image), the command and environment of the image config plus the
# pod's env, the host's /proc (hostPID), a read-only /sys, /dev, an emptyDir at
# /run/kmod-manager, the ConfigMap at /etc/kmod-manager and the kubelet dir read-only.
# No host /lib/modules: the DaemonSet mounts none, the image brings its own tree.
R=/image
container_checks() {
check "the image's tree is for this kernel" [ -f $R/lib/modules/$KVER/modules.dep ]
check "the image carries kafs" sh -c "ls $R/lib/modules/$KVER/kernel/fs/afs/ | grep -q '^kafs\.ko'"
check "the image carries the DKMS-built openafs.ko" [ -f $R/lib/modules/$KVER/extra/openafs.ko ]
check_not "the image has no modprobe" sh -c "ls $R/sbin/modprobe $R/usr/sbin/modprobe $R/bin/kmod $R/usr/bin/kmod 2>/dev/null | grep -q ."
check_not "the host has no openafs.ko (only the image can load it)" sh -c "find /lib/modules -name 'openafs.ko*' | grep -q ."
check "the image runs as root (USER 0:0: loading needs CAP_SYS_MODULE)" sh -c "grep -qx '0:0' /etc/kmt/image.user"

$BB mkdir -p $R/proc $R/sys $R/dev $R/tmp $R/run/kmod-manager $R/etc/kmod-manager $R/var/lib/kubelet /var/lib/kubelet /tmp/kmod-config
$BB mount --bind /proc $R/proc
$BB mount --bind /sys $R/sys && $BB mount -o remount,bind,ro $R/sys
$BB mount --bind /dev $R/dev
$BB mount -t tmpfs tmpfs $R/tmp
$BB mount -t tmpfs tmpfs $R/run/kmod-manager
# The operator's kmod-manager config (objects::kmod_config), as its ConfigMap holds it.
$BB cat > /tmp/kmod-config/config.yaml <<YAML
moduleVersion: "image-test"
module:
  name: kafs
  filesystemTypes: [afs]
kernelMappings:
  - regexp: '6\.1\..*'
    containerImage: localhost/afs/auristor-kmod-\${MODULE_VERSION}:\${KERNEL_FULL_VERSION}
YAML
$BB mount --bind /tmp/kmod-config $R/etc/kmod-manager && $BB mount -o remount,bind,ro $R/etc/kmod-manager
$BB mount --bind /var/lib/kubelet $R/var/lib/kubelet && $BB mount -o remount,bind,ro $R/var/lib/kubelet

# The runtime's exec: the image's Entrypoint + Cmd with the image's Env and the pod's.
ARGV=$($BB cat /etc/kmt/image.argv | $BB tr '\n' ' ')
check "the image's command is kmod-manager run" [ "$ARGV" = "/usr/local/bin/kmod-manager run " ]
start_container() { # start_container LOG: runs the container in the background, PID in CPID
    $BB env -i $($BB cat /etc/kmt/image.env) \
        KMOD_CONFIG=/etc/kmod-manager/config.yaml KMOD_MODULE_VERSION=image-test \
        KMOD_IMAGE=localhost/afs/auristor-kmod-image-test:$KVER \
        KMOD_READY_FILE=/run/kmod-manager/ready KMOD_REPORT_NODE=false KMOD_FS_TYPES=afs \
        KMOD_CSI_DRIVER_NAME=auristorfs.csi.auristor.com KMOD_KUBELET_DIR=/var/lib/kubelet \
        KMOD_LISTEN=127.0.0.1:9808 RUST_LOG=info NO_COLOR=1 \
        $BB chroot $R $ARGV >"$1" 2>&1 &
    CPID=$!
}

start_container /tmp/c1.log
wait_for $R/run/kmod-manager/ready 60
check "the container becomes ready (ready file)" [ -e $R/run/kmod-manager/ready ]
check "kafs and its chain are loaded from the image's tree" all_loaded
check "/readyz answers ready" sh -c "wget -q -O - http://127.0.0.1:9808/readyz | grep -q ready"
$BB mount -t afs none /afs -o dyn
stop_daemon $CPID /tmp/c1.log
rc=$?
check "SIGTERM with /afs mounted: the container exits 0" [ $rc -eq 0 ]
check "SIGTERM with /afs mounted: kafs is kept loaded" loaded kafs
check "the container logged why it kept the module" sh -c "grep -q 'keeping it loaded' /tmp/c1.log && grep -q '/afs' /tmp/c1.log"
$BB umount /afs

start_container /tmp/c2.log
wait_for $R/run/kmod-manager/ready 60
check "a new container adopts the loaded module and becomes ready" [ -e $R/run/kmod-manager/ready ]
check "the record of what the first container inserted is in the emptyDir" \
    sh -c "grep -q '\"kafs\"' $R/run/kmod-manager/inserted-modules.json"
stop_daemon $CPID /tmp/c2.log
rc=$?
check "SIGTERM when idle: the container exits 0" [ $rc -eq 0 ]
check "SIGTERM when idle: kafs and its chain are unloaded" none_loaded

# in_image LOGFILE ARGS...: the image's kmod-manager in the image's root, like run_km.
in_image() {
    log=$1; shift
    $BB env -i $($BB cat /etc/kmt/image.env) NO_COLOR=1 $BB chroot $R /usr/local/bin/kmod-manager "$@" >"$log" 2>&1
    rc=$?; $BB sed 's/^/    | /' "$log"; return $rc
}
# openafs.ko exists only in the image: loading it proves the image's own module tree.
in_image /tmp/o1.log load --config /etc/kmod-manager/config.yaml --module openafs
rc=$?
check "the image's kmod-manager loads the DKMS-built openafs.ko from the image" sh -c "[ $rc -eq 0 ] && grep -q '^openafs ' /proc/modules"
in_image /tmp/o2.log unload --config /etc/kmod-manager/config.yaml --module openafs
rc=$?
check "and unloads it, unused" sh -c "[ $rc -eq 0 ] && ! grep -q '^openafs ' /proc/modules"
}
if [ -x $R/usr/local/bin/kmod-manager ]; then
    ok "the built kmod image is in the initramfs"
    container_checks
else
    notok "the built kmod image is in the initramfs (run images/build first)"
fi
