# Benchmark: time from `run` start to module loaded + ready file, vs plain `modprobe kafs`.
# Rounds alternate which of the two goes first; each starts with nothing of the chain loaded.
CFG=/etc/kmod-manager/mappings.yaml
N=${BENCH_ROUNDS:-15}
# Warm-up: the first load also pulls in crypto modules through request_module.
$MODPROBE kafs && $MODPROBE -r kafs
bench_modprobe() {
    $KM stopwatch -- $MODPROBE kafs > /tmp/sw1 2>&1
    echo "BENCH modprobe_ms=$(sed -n 's/^stopwatch: \([0-9.]*\) ms.*/\1/p' /tmp/sw1)"
    $MODPROBE -r kafs
}
bench_run() {
    $KM stopwatch --until-file /run/bench/ready -- $KM run --config $CFG --ready-file /run/bench/ready --listen 127.0.0.1:9810 > /tmp/sw2 2>/dev/null
    echo "BENCH run_ready_ms=$(sed -n 's/^stopwatch: \([0-9.]*\) ms.*/\1/p' /tmp/sw2)"
    pid=$(sed -n 's/.*(pid \([0-9]*\)).*/\1/p' /tmp/sw2)
    kill -TERM "$pid"
    # The daemon unloads the chain on SIGTERM (nothing uses it); wait for all of it.
    j=0
    while { [ -e /run/bench/ready ] || ! none_loaded; } && [ $j -lt 100 ]; do $BB usleep 50000; j=$((j + 1)); done
}
i=0
while [ $i -lt $N ]; do
    if [ $((i % 2)) -eq 0 ]; then bench_modprobe; bench_run; else bench_run; bench_modprobe; fi
    i=$((i + 1))
done
check "benchmark rounds completed" [ $i -eq $N ]
check "nothing left loaded" none_loaded
