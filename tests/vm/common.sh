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
    "$HERE/build-initramfs" "$INITRD" "$BIN" "$KVER" "$TREE"
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
