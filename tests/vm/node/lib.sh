# Guest-side helpers for the AFS node scenarios (sourced after scenarios/lib.sh, inside
# the Debian guest root; POSIX sh). A real OpenAFS cell on an address of lo only:
# 10.77.0.1/32, named in CellServDB, /etc/hosts and NetInfo. Not 127/8: a pod's own
# network namespace (its own lo) must reach the cell, as it reaches a node's address.
CELL=test.afs
ADDR=10.77.0.1
TESTVOL=test.vol
DRIVER=auristorfs.csi.auristor.com
SOCK=/run/csi/csi.sock
EP=unix://$SOCK
KUBELET=/var/lib/kubelet
AFSLIB=/usr/lib/openafs
CELLTAR=/kmt-cell/cell.tar
step() { echo "== $*"; }
# show CMD...: runs CMD, its output indented (for the narrative), returns its status.
show() { "$@" >/tmp/show.out 2>&1; rc=$?; $BB sed 's/^/    | /' /tmp/show.out; return $rc; }

# The cell's configuration (server and client side) and its tmpfs directories.
cell_config() {
    ip addr add $ADDR/32 dev lo 2>/dev/null
    ip link set lo up
    hostname afs1
    printf '127.0.0.1 localhost\n%s afs1.%s afs1\n' $ADDR $CELL > /etc/hosts
    mkdir -p /etc/openafs/server /var/lib/openafs /vicepa /var/cache/openafs /var/log/openafs
    mount -t tmpfs -o mode=0755 tmpfs /var/lib/openafs # local/ holds the fssync unix socket
    mount -t tmpfs -o size=200m tmpfs /vicepa
    mkdir -p /var/lib/openafs/local /var/lib/openafs/db
    chmod 0700 /var/lib/openafs/local /var/lib/openafs/db
    touch /var/lib/openafs/local/NoAuth # unauthenticated cell
    for conf in /etc/openafs/server /etc/openafs; do
        echo $CELL > $conf/ThisCell
        printf '>%s #test cell\n%s #afs1.%s\n' $CELL $ADDR $CELL > $conf/CellServDB
    done
    echo "f$ADDR" > /var/lib/openafs/local/NetInfo
    echo "f$ADDR" > /etc/openafs/NetInfo
    echo "/afs:/var/cache/openafs:20000" > /etc/openafs/cacheinfo # cell-init's hand afsd
    # The client's map as a cluster has it (the examples' ConfigMap): the cell database
    # alone, no cacheinfo.
    mkdir -p /etc/afs-map && cp /etc/openafs/CellServDB /etc/openafs/ThisCell /etc/afs-map/
}

# Starts ptserver and vlserver, waits for their quorum (one server: its own), then the
# fileserver and volserver (no bosserver), and waits until the fileserver has registered
# its address in the VLDB (a fileserver started before the quorum registers minutes later,
# and kAFS then finds no address: EDESTADDRREQ).
# Each binds its Rx socket to the cell's address (-rxbind), as a server on a host of
# its own answers from the address it was asked at: kAFS drops a reply from any other,
# and one bound to all addresses answers a pod (10.99/10.88) from the bridge's address.
cell_servers() {
    for s in ptserver vlserver; do $AFSLIB/$s -rxbind >/var/log/openafs/$s.out 2>&1 & done
    wait_cell "VL and PT quorum" "vos listvldb -noauth -cell $CELL && pts listentries -noauth -cell $CELL" || return 1
    $AFSLIB/volserver -rxbind >/var/log/openafs/volserver.out 2>&1 &
    $AFSLIB/fileserver -L -rxbind >/var/log/openafs/fileserver.out 2>&1 &
    wait_cell "fileserver registered, partition /vicepa served" \
        "vos listaddrs -noresolve -noauth -cell $CELL | grep -q "$ADDR" && vos listpart $ADDR -noauth -cell $CELL | grep -q /vicepa"
}
# wait_cell WHAT SHELL-CONDITION: up to 120 s.
wait_cell() {
    i=0
    while [ $i -lt 240 ]; do
        sh -c "$2" >/tmp/wait.out 2>&1 && return 0
        $BB usleep 500000; i=$((i + 1))
    done
    echo "    cell: no $1 after 120 s:"; sed 's/^/    | /' /tmp/wait.out; tail -n 5 /var/log/openafs/*Log 2>/dev/null
    return 1
}

# cell_up: the cell from its cached databases and partition (made once by cell_init).
cell_up() {
    cell_config
    tar -xf $CELLTAR -C / || return 1
    cell_servers || return 1
    vos examine $TESTVOL -noauth -cell $CELL 2>&1 | grep -q "On-line" || { vos examine $TESTVOL -noauth -cell $CELL; return 1; }
}

# Stops the servers cleanly, as bos shutdown does (SIGQUIT: volumes detached, so the next
# boot needs no salvage), and waits up to 60 s.
cell_down() {
    for s in fileserver volserver vlserver ptserver; do pkill -QUIT -x $s; done
    i=0
    while pgrep -x fileserver >/dev/null || pgrep -x volserver >/dev/null || pgrep -x vlserver >/dev/null || pgrep -x ptserver >/dev/null; do
        if [ $i -ge 600 ]; then
            echo "    still running after 60 s: $(pgrep -l -x 'fileserver|volserver|vlserver|ptserver' | tr '\n' ' ')"
            tail -n 5 /var/log/openafs/FileLog /var/log/openafs/VolserLog
            return 1
        fi
        $BB usleep 100000; i=$((i + 1))
    done
}

# The cell's client side by hand, for cell-init only (it prepares the cell's volumes
# before any scenario runs): openafs.ko through kmod-manager, then afsd.
openafs_client_up() {
    run_km /tmp/load-openafs.log load --config /kmt/etc/openafs.yaml || return 1
    afsd -memcache -dynroot -fakestat -blocks 20000 -stat 2000 -daemons 2 -volumes 64 -nosettime >/tmp/afsd.log 2>&1 || { cat /tmp/afsd.log; return 1; }
    grep -q ' /afs afs ' /proc/mounts
}
openafs_client_down() {
    umount /afs 2>/dev/null
    afsd -shutdown >/dev/null 2>&1
    true
}

# The node's AFS client through the stack, as the kmod pod runs it: `kmod-manager run`
# with the config the operator writes (module + client) and the maps it mounts: the
# cell's CellServDB and ThisCell in /etc/afs-map (cell_config). Nothing is done by hand.
# km_config kafs|openafs [AFSD]: the config on stdout (AFSD: afsd's path).
km_config() {
    case $1 in
    kafs) printf 'moduleVersion: "kernel"\nmodule:\n  name: kafs\n  filesystemTypes: [afs]\n' ;;
    openafs) printf 'moduleVersion: "dkms"\nmodule:\n  name: openafs\n  filesystemTypes: [afs]\n' ;;
    esac
    printf 'client:\n  cacheManager: %s\n  afsRoot: /afs\n  configDir: /etc/afs-map\n' "$1"
    [ "$1" = openafs ] && printf '  afsd:\n    path: %s\n    cacheBlocks: 20000\n    options: [-dynroot, -fakestat, -stat, "2000", -daemons, "2", -volumes, "64", -nosettime]\n' "${2:-/usr/sbin/afsd}"
    true
}
# stack_up kafs|openafs: starts the daemon (PID in KM_PID, log /tmp/km.log) and waits
# until /readyz answers ready: module loaded AND the AFS root serving the cells.
stack_up() {
    km_config "$1" > /tmp/km-$1.yaml
    mkdir -p /run/kmod-manager
    RUST_LOG=info $KM run --config /tmp/km-$1.yaml --state-dir /run/kmod-manager \
        --ready-file /run/kmod-manager/ready --listen 127.0.0.1:9808 >>/tmp/km.log 2>&1 &
    KM_PID=$!
    readyz_within 120
}
# readyz_within SECONDS: /readyz answers ready in time.
readyz_within() {
    i=0
    while [ $i -lt $(($1 * 5)) ]; do
        $BB wget -q -O - http://127.0.0.1:9808/readyz 2>/dev/null | grep -q '^ready' && return 0
        $BB usleep 200000; i=$((i + 1))
    done
    sed 's/^/    | /' /tmp/km.log; return 1
}
# pod_netns NAME: a network namespace pinned as a runtime pins a pod's (`ip netns add`:
# a bind mount of nsfs in /run/netns), reaching the cell through a veth pair, as a CNI
# bridge's pod does.
pod_netns() {
    ip netns add $1 && ip link add v$1 type veth peer name eth0 netns $1 &&
        ip addr add 10.99.0.1/30 dev v$1 && ip link set v$1 up &&
        ip -n $1 addr add 10.99.0.2/30 dev eth0 && ip -n $1 link set eth0 up &&
        ip -n $1 link set lo up && ip -n $1 route add default via 10.99.0.1
}
# stack_down: SIGTERM, as kubelet stops the pod; the daemon's exit status.
stack_down() { kill -TERM $KM_PID; wait $KM_PID; }
# afs_root_is MAGIC: /afs is mounted with that statfs magic and lists the test cell.
afs_root_is() { grep -q ' /afs afs ' /proc/mounts && [ "$(stat -f -c %t /afs)" = "$1" ] && ls /afs | grep -qx $CELL; }
# client_kept MODULE MAGIC: the client and its module still up.
client_kept() { afs_root_is "$2" && grep -q "^$1 " /proc/modules; }
# in_order FILE PATTERN...: each pattern is in FILE, each first seen after the previous.
in_order() {
    f=$1; shift; last=0
    for p in "$@"; do
        n=$(grep -n -m1 -- "$p" "$f" | cut -d: -f1)
        [ -n "$n" ] && [ "$n" -gt "$last" ] || return 1
        last=$n
    done
}
# afs_down: /afs is no AFS mount, no afsd process is left, no AFS module is loaded.
afs_down() { ! grep -q ' /afs afs ' /proc/mounts && ! pgrep -x afsd >/dev/null && ! grep -qE '^(kafs|openafs) ' /proc/modules; }

# csi_start CACHE_MANAGER [WRAPPER...]: the CSI driver in node mode on $SOCK (started
# through WRAPPER, e.g. unshare, when given), allowing the test cell, root mounts and
# inline volumes, as the operator configures it; log in /tmp/csi.log.
csi_start() {
    mkdir -p /run/csi
    cm=$1; shift
    RUST_LOG=info "$@" csi-driver --endpoint $EP --mode node --cache-manager "$cm" --afs-root /afs \
        --node-id afs-node-1 --kubelet-dir $KUBELET --allowed-cells $CELL --allow-root-mounts \
        --allow-ephemeral >>/tmp/csi.log 2>&1 &
    CSI_PID=$!
    i=0
    while [ $i -lt 100 ]; do
        [ -S $SOCK ] && csi-bench --endpoint $EP info >/tmp/csi-info.out 2>&1 && return 0
        $BB usleep 100000; i=$((i + 1))
    done
    cat /tmp/csi.log; return 1
}

# target POD PV: a kubelet-style target path; its vol_data.json written as kubelet does.
target() {
    tdir=$KUBELET/pods/$1/volumes/kubernetes.io~csi/$2
    mkdir -p "$tdir"
    printf '{"driverName":"%s","volumeHandle":"%s"}\n' $DRIVER "$2" > "$tdir/vol_data.json"
    echo "$tdir/mount"
}
# publish TARGET VOLUME_ID [csi-bench publish options...]
publish() { t=$1 v=$2; shift 2; show csi-bench --endpoint $EP publish --volume-id "$v" --target "$t" "$@"; }
unpublish() { show csi-bench --endpoint $EP unpublish --volume-id "$2" --target "$1"; }
is_mounted() { grep -q " $1 " /proc/mounts; }
# refused OUT GREP CSI-BENCH-ARGS...: the call fails and its message matches GREP.
# (Helpers called through check use locals: check keeps its description in $d.)
refused() {
    local out=$1 pattern=$2; shift 2
    ! csi-bench --endpoint $EP "$@" >"$out" 2>&1 && grep -q "$pattern" "$out"
}
# mounts_under DIR: "mount-point options" of every mount at or below DIR.
mounts_under() { awk -v d="$1" '$2 == d || index($2, d "/") == 1 {print $2, $4}' /proc/mounts; }
# all_mounts_have DIR OPT...: every mount at or below DIR carries every OPT.
all_mounts_have() {
    local dir=$1 opt; shift
    [ -n "$(mounts_under "$dir")" ] || return 1
    for opt in "$@"; do
        mounts_under "$dir" | awk -v o="$opt" '{n = split($2, a, ","); f = 0; for (i = 1; i <= n; i++) if (a[i] == o) f = 1; if (!f) exit 1}' || return 1
    done
}
# writes_refused_erofs FILE: a write fails with EROFS (Read-only file system).
writes_refused_erofs() { ! sh -c "echo x > '$1'" 2>/tmp/erofs.err && grep -q 'Read-only file system' /tmp/erofs.err; }
# no_oops: the kernel logged no oops or BUG (with oops=panic a boot would not get this far).
no_oops() { ! dmesg | grep -qE 'Oops|BUG:|general protection'; }
