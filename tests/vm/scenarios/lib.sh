# Helpers sourced by every scenario (busybox sh).
KM=/usr/local/bin/kmod-manager
MODPROBE=/usr/sbin/modprobe
BB=/bin/busybox
KVER=$($BB uname -r)
. /etc/kmt/env
CHAIN="kafs rxrpc ip6_udp_tunnel udp_tunnel dns_resolver fscache netfs"
CHECKS=0
FAILS=0
export RUST_LOG=${RUST_LOG:-info}
export NO_COLOR=1

ok()    { CHECKS=$((CHECKS + 1)); echo "  ok - $*"; }
notok() { CHECKS=$((CHECKS + 1)); FAILS=$((FAILS + 1)); echo "  not ok - $*"; }
# check DESCRIPTION COMMAND...: passes when COMMAND succeeds.
check() { d=$1; shift; if "$@"; then ok "$d"; else notok "$d"; fi; }
# check_not DESCRIPTION COMMAND...: passes when COMMAND fails.
check_not() { d=$1; shift; if "$@"; then notok "$d"; else ok "$d"; fi; }
loaded() { $BB grep -q "^$1 " /proc/modules; }
none_loaded() { for m in $CHAIN; do loaded "$m" && return 1; done; return 0; }
all_loaded() { for m in $CHAIN; do loaded "$m" || return 1; done; return 0; }
contains() { $BB grep -q -- "$2" "$1"; }
# run_km LOGFILE ARGS...: runs kmod-manager, stdout+stderr to LOGFILE (echoed), returns its status.
run_km() { log=$1; shift; $KM "$@" >"$log" 2>&1; rc=$?; $BB sed 's/^/    | /' "$log"; return $rc; }
# stop_daemon PID LOGFILE: SIGTERM, wait, echo the log; returns the daemon's status.
stop_daemon() { kill -TERM "$1"; wait "$1"; rc=$?; $BB sed 's/^/    | /' "$2"; return $rc; }
# wait_for FILE SECONDS
wait_for() { i=0; while [ ! -e "$1" ] && [ $i -lt $(($2 * 10)) ]; do $BB usleep 100000; i=$((i + 1)); done; [ -e "$1" ]; }
finish() {
    if [ "$CHECKS" -gt 0 ] && [ "$FAILS" -eq 0 ]; then
        echo "KMT-RESULT $1 PASS ($CHECKS checks)"
    else
        echo "KMT-RESULT $1 FAIL ($FAILS of $CHECKS checks failed)"
    fi
}
check_no_finit() { ! $BB grep -q 'finit_module' "$1"; }
# materialize_tree DIR: replaces the symbolic links of a module tree by copies of their
# targets. build-initramfs links the dependencies of the broken trees to the good files;
# kmod-manager refuses to open a module through a link.
materialize_tree() {
    for l in $($BB find "$1" -type l); do
        t=$($BB readlink -f "$l") && $BB cp "$t" "$l.copy" && $BB mv "$l.copy" "$l" || return 1
    done
}
# not_loaded MODULE...: none of them is in /proc/modules.
not_loaded() { for m in "$@"; do loaded "$m" && return 1; done; return 0; }
