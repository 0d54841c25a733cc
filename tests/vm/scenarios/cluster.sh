# kmt: cluster
# (cluster, opt-in: tests/vm/run cluster) The AFS node under a real kubelet and container
# runtime: a one-node Kubernetes in the guest (tests/vm/cluster/up.sh: Debian's containerd
# + runc + CNI bridge + etcd, kube-* from AFS_K8S_BIN_DIR), our images imported from
# images/build's OCI layouts. The admin's story, step by step, with the repository's own
# commands: afsctl install, bin/deploy, workloads with AFS volumes, bin/undeploy refused,
# a rolling update to a second kmod image, bin/undeploy; then openafs.ko + afsd. Each
# step's time is printed as a KMT-FIGURE line.
REPO=/kmt-cluster/repo
. $REPO/tests/vm/cluster/up.sh
export AFSCTL=/kmt-cluster/bin/afsctl AFS_OPERATOR_IMAGE=localhost/afs/afs-operator:$VERSION
NS=afs-test
APPS="kubectl -n afs-apps"

# render_sr kafs|openafs MODULE_VERSION: the SR of tests/vm/cluster/sr.yaml.in.
render_sr() {
    case $1 in
    kafs) module=kafs extra='' ;;
    openafs) module=openafs extra='    afsdOptions: [-dynroot, -fakestat, -stat, "2000", -daemons, "2", -volumes, "64", -nosettime]
    cache:
      sizeKiB: 20000' ;;
    esac
    sed -e "s/@MODULE@/$module/; s/@MODULE_CM@/$1/; s/@MODULE_VERSION@/$2/; s/@VERSION@/$VERSION/; s/@KERNEL@/$KERNEL_VERSION/" \
        $REPO/tests/vm/cluster/sr.yaml.in | awk -v extra="$extra" '$0 == "@CLIENT_EXTRA@" { if (extra != "") print extra; next } { print }'
}
# admin CMD...: runs a bin/ command of the repository as an admin does, after
# `source bin/setupEnvironment` of /tmp/sr.yaml; output in /tmp/admin.log (shown).
admin() {
    bash -c 'cd '$REPO' && source bin/setupEnvironment /tmp/sr.yaml tests/vm/cluster/create-maps.sh tests/vm/cluster/delete-maps.sh >/dev/null && "$@"' admin "$@" \
        >/tmp/admin.log 2>&1
    rc=$?
    sed 's/^/    | /' /tmp/admin.log
    return $rc
}
pods_of() { kubectl -n $NS get pods -l app.kubernetes.io/component=$1 -o jsonpath='{.items[*].metadata.name}'; }
taint_gone() { ! kubectl get node $NODE -o jsonpath='{.spec.taints[*].key}' | grep -q 'afs.csi.auristor.com/not-ready'; }
driver_registered() { kubectl get csinode $NODE -o jsonpath='{.spec.drivers[*].name}' | grep -qw $DRIVER; }
writer_pod() { $APPS get pods -l app=writer --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}'; }
logs_have() { $APPS logs "$1" 2>/dev/null | grep -q -- "$2"; }
writer_wrote() { p=$(writer_pod) && [ -n "$p" ] && logs_have "$p" 'wrote: written by'; }
# writer_found FIRST: a writer pod other than FIRST found the file FIRST wrote.
writer_found() { p=$(writer_pod) && [ -n "$p" ] && [ "$p" != "$1" ] && logs_have "$p" "found: written by $1"; }
claim_bound() { [ "$($APPS get pvc afs-root-claim -o jsonpath='{.status.phase}')" = Bound ]; }
kmod_image_is() { kubectl -n $NS get pods -l app.kubernetes.io/component=kmod -o jsonpath='{..image}' | grep -q "auristor-kmod-$1"; }
kafs_from_image() { loaded kafs && kmod_image_is "$1"; }
# kmod_inserted VERSION: the kmod pod of that image inserted kafs itself (finit_module),
# so the module was really swapped, not adopted.
kmod_inserted() { p=$(pods_of kmod) && kmod_image_is "$1" && kubectl -n $NS logs "$p" | grep -q 'finit_module module=kafs '; }
# evicted_by_operator POD: the audit log holds the operator's eviction of POD.
evicted_by_operator() { grep '"subresource":"eviction"' $K8S_LOGS/audit.log | grep "\"name\":\"$1\"" | grep -q 'system:serviceaccount:afs-system:afs-operator'; }
# follow_kmod FILE: the current kmod pod's log, followed into FILE (in the background).
follow_kmod() { kubectl -n $NS logs -f "$(pods_of kmod)" >"$1" 2>&1 & }
unloaded_in() { grep -q 'module unloaded' "$1"; }
uncordoned() { [ -z "$(kubectl get node $NODE -o jsonpath='{.spec.unschedulable}')" ]; }
ns_gone() { ! kubectl get ns "$1" >/dev/null 2>&1; }
undeploy_named_pods() { grep -q "$WRITER" /tmp/admin.log && grep -q reader /tmp/admin.log; }
openafs_serves() { loaded openafs && pgrep -x afsd >/dev/null && afs_root_is 5346414f; }
# must DESCRIPTION COMMAND...: a check the rest of the story stands on: when it fails,
# the story ends here, with what there is to read.
must() {
    d=$1; shift
    if "$@"; then ok "$d"; return 0; fi
    notok "$d"
    diagnose; sed 's/^/    diag| /' /tmp/diagnose.log
    finish cluster
    exit 0
}
# diagnose: what a failed step leaves to read.
diagnose() {
    kubectl get nodes -o wide; kubectl get pods -A -o wide
    kubectl get sr -o wide 2>/dev/null
    kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 25
    for p in $(kubectl get pods -A --field-selector=status.phase!=Running -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{" "}{end}'); do
        echo "--- describe $p"; kubectl -n ${p%%/*} describe pod ${p#*/} | tail -n 25
        kubectl -n ${p%%/*} logs --all-containers ${p#*/} 2>&1 | tail -n 10
    done
    for p in $(kubectl -n $NS get pods -o name 2>/dev/null); do echo "--- $p"; kubectl -n $NS logs --all-containers $p 2>&1 | tail -n 15; done
    kubectl -n afs-system describe pods | tail -n 30
    kubectl -n afs-system logs deploy/afs-operator 2>&1 | tail -n 20
    grep -E '^E[0-9]' $K8S_LOGS/kubelet.log | tail -n 15
} >/tmp/diagnose.log 2>&1

step "the cell and the cluster"
must "the cell $CELL is up" cell_up
must "a one-node cluster (containerd $(containerd --version | awk '{print $3}'), $(kubelet --version)) and the node is Ready" cluster_up
show kubectl get nodes -o wide
kubectl label node $NODE afs.test/group=test >/dev/null

step "1. afsctl install: the operator as a real Deployment"
t=$(uptime_s)
must "afsctl install" show afsctl install
must "the operator's Deployment becomes available" show kubectl -n afs-system rollout status deploy/afs-operator --timeout=300s
figure operator-available "$(since $t)"

step "2. bin/deploy: kafs from the kmod image"
render_sr kafs $MODULE_VERSION >/tmp/sr.yaml
t=$(uptime_s)
must "bin/deploy" admin bin/deploy --timeout 20m
figure deploy-to-ready "$(since $t)"
check "it ends with \"successfully rolled out\"" grep -q 'successfully rolled out' /tmp/admin.log
check "kafs loaded, by the kmod pod of image auristor-kmod-$MODULE_VERSION" kafs_from_image $MODULE_VERSION
check "/afs is the kAFS dynamic root listing $CELL (the kmod pod's mount, on the host)" afs_root_is 6b414653
check "the driver registered through node-driver-registrar (CSINode)" driver_registered
check "the readiness taint is gone" taint_gone

step "3. workloads"
t=$(uptime_s)
check "the static PV/PVC, the writer Deployment, the StorageClass PVC and its pod" show kubectl apply -f $REPO/tests/vm/cluster/workloads.yaml
must "the writer's pod runs and wrote its file" until_within 600 writer_wrote
figure pod-start-with-afs-volume "$(since $t)"
WRITER=$(writer_pod)
check "the file is in the AFS volume on the host" grep -q "written by $WRITER" /afs/$CELL/$TESTVOL/k8s-writer.txt
check "the PVC of the operator's StorageClass is bound (csi-provisioner)" until_within 300 claim_bound
check "its pod lists $CELL's volumes" until_within 300 logs_have root-claim "$TESTVOL"
show $APPS logs root-claim
check "the inline-volume readers" show kubectl apply -f $REPO/tests/vm/cluster/readers.yaml
check "reader reads the file through a read-only inline volume" until_within 300 logs_have reader "read: written by $WRITER"
check "and its write is refused: read-only file system" logs_have reader 'Read-only file system'
check "root-lister lists /afs/$CELL through a root inline volume" until_within 300 logs_have root-lister "listing: .*$TESTVOL"

step "4. in use: bin/undeploy and unload refused"
admin bin/undeploy --timeout 30s
check "bin/undeploy refuses" [ $? -ne 0 ]
check "naming the pods that use AFS" undeploy_named_pods
KMOD_POD=$(pods_of kmod)
kubectl -n $NS exec $KMOD_POD -- kmod-manager unload >/tmp/unload.log 2>&1
check "kmod-manager unload inside the kmod pod is refused" [ $? -ne 0 ]
show cat /tmp/unload.log
check "naming a CSI target of a pod" grep -q 'kubernetes.io~csi' /tmp/unload.log
check "kafs still loaded, /afs still served" client_kept kafs 6b414653

step "5. rolling update to module version $SECOND_MODULE_VERSION while the writer runs"
$APPS delete pod reader root-lister --wait=false >/dev/null
# What the node and the writer go through, sampled every second.
(while :; do
    echo "node unschedulable=$(kubectl get node $NODE -o jsonpath='{.spec.unschedulable}') state=$(kubectl get node $NODE -o jsonpath='{.metadata.labels.afs\.csi\.auristor\.com/upgrade-state}')"
    $APPS get pods -l app=writer -o jsonpath='{range .items[*]}pod {.metadata.name} {.status.phase} {.status.conditions[?(@.type=="DisruptionTarget")].reason}{"\n"}{end}'
    sleep 1
done) >/tmp/rollout-watch.log 2>&1 &
WATCH=$!
follow_kmod /tmp/kmod-v1.log
render_sr kafs $SECOND_MODULE_VERSION >/tmp/sr.yaml
t=$(uptime_s)
must "bin/deploy of the new version rolls the node" admin bin/deploy --timeout 20m
figure rollout "$(since $t)"
kill $WATCH
check "the node was cordoned during the update" grep -q 'unschedulable=true' /tmp/rollout-watch.log
check "the writer's pod was evicted through the Eviction API, by the operator (audit log)" evicted_by_operator $WRITER
check "the old kmod pod unloaded kafs" unloaded_in /tmp/kmod-v1.log
check "the node is uncordoned" uncordoned
check "the new kmod pod (auristor-kmod-$SECOND_MODULE_VERSION) inserted kafs afresh" kmod_inserted $SECOND_MODULE_VERSION
check "/afs is served again" afs_root_is 6b414653
check "the writer runs again and finds its file" until_within 600 writer_found $WRITER
show sort -u /tmp/rollout-watch.log

step "6. delete the workloads, then bin/undeploy"
check "workloads deleted" show kubectl delete -f $REPO/tests/vm/cluster/workloads.yaml --ignore-not-found --wait=true --timeout=300s
follow_kmod /tmp/kmod-undeploy.log
CSI_POD=$(pods_of csi-node)
kubectl -n $NS logs -f $CSI_POD -c csi-driver >/tmp/csi-undeploy.log 2>&1 &
t=$(uptime_s)
check "bin/undeploy" admin bin/undeploy --timeout 10m
figure undeploy "$(since $t)"
check "kafs unloaded, /afs gone" afs_down
check "the kmod pod said so" unloaded_in /tmp/kmod-undeploy.log
show tail -n 8 /tmp/kmod-undeploy.log
show tail -n 10 /tmp/csi-undeploy.log
show grep -E ' afs |kafs' /proc/mounts /proc/modules
check "the SR's namespace is gone" ns_gone $NS

step "7. the same node with openafs.ko and the image's afsd"
render_sr openafs $MODULE_VERSION >/tmp/sr.yaml
t=$(uptime_s)
must "bin/deploy (openafs)" admin bin/deploy --timeout 20m
figure deploy-to-ready-openafs "$(since $t)"
check "openafs loaded, afsd running, /afs is OpenAFS's root listing $CELL" openafs_serves
check "the workloads again" show kubectl apply -f $REPO/tests/vm/cluster/workloads.yaml
check "a new writer finds the file through openafs" until_within 600 writer_found $WRITER
check "workloads deleted" show kubectl delete -f $REPO/tests/vm/cluster/workloads.yaml --ignore-not-found --wait=true --timeout=300s
check "bin/undeploy (openafs)" admin bin/undeploy --timeout 10m
check "afsd stopped, openafs unloaded, /afs gone" afs_down

if [ "$FAILS" -gt 0 ]; then diagnose; sed 's/^/    diag| /' /tmp/diagnose.log; fi
