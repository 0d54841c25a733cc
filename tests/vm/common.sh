# Shared by tests/vm/run and tests/vm/bench (sourced, bash).
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${AFS_CSI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/afs-csi}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOGDIR=$TARGET_DIR/vm-test
BOOT_TIMEOUT=${KMT_BOOT_TIMEOUT:-240}
QEMU=${KMT_QEMU:-qemu-system-x86_64}

say() { printf '%s\n' "tests/vm: $*" >&2; }

skip_loudly() {
    {
        echo "################################################################"
        echo "###  SKIPPED: real-kernel VM tests cannot run on this machine ###"
        echo "###  reason: $*"
        echo "###  (install qemu-system-x86 or run tests/vm/setup)          ###"
        echo "################################################################"
    } >&2
    echo "SKIPPED: $*"
    echo "0 passed, 0 failed"
    exit 0
}

# Installs missing tools (tests/vm/setup) and skips when qemu still cannot run.
ensure_tools() {
    local missing=0
    for t in "$QEMU" busybox kmod cpio depmod perl readelf musl-gcc xz zstd; do
        command -v "$t" >/dev/null 2>&1 || missing=1
    done
    if ((missing)); then
        say "installing VM test tools (tests/vm/setup)"
        "$HERE/setup" >&2 || say "setup failed"
    fi
    command -v "$QEMU" >/dev/null 2>&1 || skip_loudly "$QEMU not installed"
    "$QEMU" -accel help 2>/dev/null | grep -qx tcg || skip_loudly "$QEMU has no TCG accelerator"
    echo quit | timeout 30 "$QEMU" -accel tcg -M none -nodefaults -display none -monitor stdio >/dev/null 2>&1 ||
        skip_loudly "$QEMU cannot start (tried: -accel tcg -M none)"
    [[ -x /bin/busybox ]] && file_is_static /bin/busybox || skip_loudly "/bin/busybox (busybox-static) missing"
    for t in kmod cpio depmod perl readelf xz zstd; do
        command -v "$t" >/dev/null 2>&1 || skip_loudly "$t not installed"
    done
}

file_is_static() { ! ldd "$1" >/dev/null 2>&1; }

# Builds kmod-manager statically (musl) when possible; prints the binary path.
# Non-PIE (relocation-model=static): a static-pie binary relocates ~20k pointers at every
# start, which costs tens of milliseconds per exec under TCG emulation (and some on metal).
build_binary() {
    local musl=x86_64-unknown-linux-musl
    if rustup target list --installed 2>/dev/null | grep -qx $musl &&
        (cd "$ROOT" && CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C relocation-model=static -C target-feature=+crt-static" \
            cargo build -q -p kmod-manager --release --target $musl >&2); then
        echo "$TARGET_DIR/$musl/release/kmod-manager"
    else
        say "musl build unavailable; using the glibc binary with its libraries"
        (cd "$ROOT" && cargo build -q -p kmod-manager --release >&2)
        echo "$TARGET_DIR/release/kmod-manager"
    fi
}

# prepare KVER, TREE, INITRD
prepare() {
    ensure_tools
    mkdir -p "$LOGDIR"
    BIN=$(build_binary)
    local kv
    kv=$("$HERE/prepare-kernel" | tail -n1)
    KVER=${kv#KVER=}; KVER=${KVER%% *}
    TREE=${kv##*TREE=}
    KERNEL=$TREE/boot/vmlinuz-$KVER
    [[ -f $KERNEL ]] || { say "no kernel image at $KERNEL"; exit 1; }
    INITRD=$LOGDIR/initramfs.cpio
    # The kmod driver container as built (scenario 12); images/build makes it when absent.
    IMAGE_ROOTFS=${AFS_IMAGES_DIR:-$TARGET_DIR/images/oci}/kmod-rootfs
    if [[ ! -d $IMAGE_ROOTFS ]]; then
        say "no built kmod image at $IMAGE_ROOTFS: running images/build"
        "$ROOT/images/build" >&2 || say "images/build failed; scenario 12 will fail"
    fi
    "$HERE/build-initramfs" "$INITRD" "$BIN" "$KVER" "$TREE" "$IMAGE_ROOTFS"
}

# boot SCENARIO LOGFILE: one VM boot; the serial console goes to LOGFILE (CR stripped).
boot() {
    local scenario=$1 log=$2
    timeout --kill-after=10 "$BOOT_TIMEOUT" "$QEMU" \
        -accel tcg -cpu max -m 512 -nographic -nic none -no-reboot \
        -kernel "$KERNEL" -initrd "$INITRD" \
        -append "console=ttyS0 panic=-1 oops=panic quiet scenario=$scenario" \
        </dev/null 2>&1 | tr -d '\r' >"$log" || true
}

# ---- The AFS node (tests/vm/node/): a Debian guest root over 9p with a real OpenAFS cell.
NODE_TIMEOUT=${KMT_NODE_TIMEOUT:-420}

# is_node_scenario NAME: the scenario runs on the AFS node (its file says "# kmt: node").
is_node_scenario() { grep -q '^# kmt: node' "$HERE/scenarios/$1.sh" 2>/dev/null; }

# Builds csi-driver and csi-bench statically (musl, non-PIE like kmod-manager).
build_csi_binaries() {
    (cd "$ROOT" && CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C relocation-model=static -C target-feature=+crt-static" \
        cargo build -q -p csi-driver --release --target x86_64-unknown-linux-musl >&2)
}

# prepare_node (after prepare): ROOTFS, OPENAFS_KO, NODE_INITRD, CELLDIR; the guest root and
# openafs.ko (cached), the node initramfs, and the cell (made by one boot, cached).
prepare_node() {
    local out t0=$SECONDS
    say "node: building csi-driver and csi-bench (static musl)"
    build_csi_binaries || return 1
    [[ $BIN == */x86_64-unknown-linux-musl/* ]] || { say "node: kmod-manager is not a static musl build"; return 1; }
    out=$("$HERE/node/prepare-root" "$KVER" ${NODE_ROOT_FLAGS:-}) || return 1
    out=$(tail -n1 <<<"$out")
    ROOTFS=${out#ROOTFS=}; ROOTFS=${ROOTFS%% *}
    OPENAFS_KO=${out##*OPENAFS_KO=}
    NODE_INITRD=$LOGDIR/node-initramfs.cpio
    say "node: packing the node initramfs (kafs chain, openafs.ko, 9p, csi-driver, kmod-manager, the kmod image)"
    "$HERE/node/build-initramfs" "$NODE_INITRD" "$KVER" "$TREE" "$OPENAFS_KO" "$(dirname "$BIN")" "$IMAGE_ROOTFS" || return 1
    # The cell is remade when the scripts that make it change.
    CELLDIR=$(dirname "$ROOTFS")/cell-$(cat "$HERE/node/cell-init.sh" "$HERE/node/lib.sh" | sha256sum | cut -c1-12)
    mkdir -p "$CELLDIR" || return 1
    find "$(dirname "$ROOTFS")" -maxdepth 1 -name 'cell-*' ! -path "$CELLDIR" -exec rm -rf {} + # stale cells
    if [[ ! -f $CELLDIR/cell.tar ]]; then
        say "node: creating the AFS cell test.afs once (databases, volumes, mount point, ACLs; one VM boot)"
        boot_node cell-init "$LOGDIR/cell-init.log" rw
        sed -n '/KMT-START/,/^KMT-RESULT/p' "$LOGDIR/cell-init.log" | grep -E '^(KMT|  (ok|not ok) |== )' >&2 || true
        if ! grep -q '^KMT-RESULT cell-init PASS' "$LOGDIR/cell-init.log" || [[ ! -f $CELLDIR/cell.tar ]]; then
            rm -f "$CELLDIR/cell.tar"
            say "node: creating the cell failed; serial log $LOGDIR/cell-init.log"
            tail -n 40 "$LOGDIR/cell-init.log" >&2
            return 1
        fi
    fi
    say "node: ready in $((SECONDS - t0)) s (guest root $ROOTFS, cell cache $CELLDIR)"
}

# boot_node SCENARIO LOGFILE [rw]: one boot of the AFS node; rw lets it write the cell cache.
boot_node() {
    local scenario=$1 log=$2 mode=${3:-ro} ro=",readonly=on"
    [[ $mode == rw ]] && ro=""
    timeout --kill-after=10 "$NODE_TIMEOUT" "$QEMU" \
        -accel tcg -cpu max -m 1024 -nographic -nic none -no-reboot \
        -kernel "$KERNEL" -initrd "$NODE_INITRD" \
        -virtfs "local,path=$ROOTFS,mount_tag=rootfs,security_model=none,multidevs=remap,readonly=on" \
        -virtfs "local,path=$CELLDIR,mount_tag=cellcache,security_model=none,multidevs=remap$ro" \
        -append "console=ttyS0 panic=-1 oops=panic quiet scenario=$scenario cellcache=$mode" \
        </dev/null 2>&1 | tr -d '\r' >"$log" || true
}

# oops_in LOGFILE: the first kernel oops/BUG line of a boot, if any.
oops_in() { grep -m1 -E 'Oops|BUG: |general protection fault|Kernel panic' "$1" || true; }

# ---- The real cluster (tests/vm/cluster/): the AFS node plus a one-node Kubernetes.
CLUSTER_TIMEOUT=${KMT_CLUSTER_TIMEOUT:-3600}
SECOND_MODULE_VERSION=0.2.0

# is_cluster_scenario NAME: the scenario boots a cluster (its file says "# kmt: cluster").
is_cluster_scenario() { grep -q '^# kmt: cluster' "$HERE/scenarios/$1.sh" 2>/dev/null; }

# cluster_skip_reason: why the cluster scenario cannot run here (empty when it can).
cluster_skip_reason() {
    local b missing=()
    if [[ -z ${AFS_K8S_BIN_DIR:-} ]]; then
        echo "AFS_K8S_BIN_DIR is not set (a directory with kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl; see tests/vm/README.md)"
        return
    fi
    for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
        [[ -x $AFS_K8S_BIN_DIR/$b ]] || missing+=("$b")
    done
    if ((${#missing[@]})); then
        echo "AFS_K8S_BIN_DIR=$AFS_K8S_BIN_DIR lacks ${missing[*]}"
        return
    fi
    if [[ -z ${AFS_K8S_IMAGES_DIR:-} ]]; then
        echo "AFS_K8S_IMAGES_DIR is not set (OCI archives of csi-node-driver-registrar, livenessprobe, csi-provisioner; see tests/vm/README.md)"
        return
    fi
    for b in csi-node-driver-registrar livenessprobe csi-provisioner; do
        compgen -G "$AFS_K8S_IMAGES_DIR/$b*.tar" >/dev/null || missing+=("$b*.tar")
    done
    ((${#missing[@]} == 0)) || echo "AFS_K8S_IMAGES_DIR=$AFS_K8S_IMAGES_DIR lacks ${missing[*]}"
}

# prepare_cluster (after prepare_node): CLUSTER_SHARE; the images at both module
# versions (images/build) and the share (tests/vm/cluster/prepare).
prepare_cluster() {
    # Always rebuilt (cached steps are quick): the cluster runs exactly this checkout.
    say "cluster: images/build with a second kmod image (module version $SECOND_MODULE_VERSION)"
    KMOD_SECOND_VERSION=$SECOND_MODULE_VERSION "$ROOT/images/build" >&2 || return 1
    CLUSTER_SHARE=$LOGDIR/cluster-share
    "$HERE/cluster/prepare" "$CLUSTER_SHARE" "$KVER"
}

# boot_cluster SCENARIO LOGFILE: the AFS node with the cluster shares, 2 CPUs, 4 GiB.
boot_cluster() {
    local scenario=$1 log=$2
    timeout --kill-after=10 "$CLUSTER_TIMEOUT" "$QEMU" \
        -accel tcg -cpu max -smp 2 -m 4096 -nographic -nic none -no-reboot \
        -kernel "$KERNEL" -initrd "$NODE_INITRD" \
        -virtfs "local,path=$ROOTFS,mount_tag=rootfs,security_model=none,multidevs=remap,readonly=on" \
        -virtfs "local,path=$CELLDIR,mount_tag=cellcache,security_model=none,multidevs=remap,readonly=on" \
        -virtfs "local,path=$AFS_K8S_BIN_DIR,mount_tag=k8sbin,security_model=none,multidevs=remap,readonly=on" \
        -virtfs "local,path=$CLUSTER_SHARE,mount_tag=cluster,security_model=none,multidevs=remap,readonly=on" \
        -append "console=ttyS0 panic=-1 oops=panic quiet scenario=$scenario cellcache=ro cluster=1" \
        </dev/null 2>&1 | stdbuf -oL tr -d '\r' >"$log" || true
}
