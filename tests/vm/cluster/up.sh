# Guest side of the real-cluster scenario (sourced after scenarios/lib.sh and node/lib.sh,
# inside the AFS node; POSIX sh): a one-node Kubernetes on the node itself, all on the
# guest's own addresses. Debian's containerd + runc + CNI bridge + etcd from the guest
# root, the Kubernetes binaries from AFS_K8S_BIN_DIR (/kmt-k8s), the images and PKI from
# the cluster share (/kmt-cluster, cluster/prepare). No systemd: background jobs, logs in
# /var/log/k8s. The node's name is its hostname (afs1, cell_config).
C=/kmt-cluster
P=$C/pki
K8S_LOGS=/var/log/k8s
NODE=afs1
export KUBECONFIG=$P/admin.kubeconfig
export PATH=/kmt-k8s:$C/bin:$PATH
. $C/build.env

# elapsed: seconds since boot (the figures the scenario prints).
uptime_s() { cut -d' ' -f1 /proc/uptime; }
T0=$(uptime_s)
since() { awk -v t="$1" '{ printf "%.0f", $1 - t }' /proc/uptime; }
figure() { echo "KMT-FIGURE $1 $2 s"; }
# until_within SECONDS CMD...: retries CMD every second until it succeeds or SECONDS
# have passed (by the clock: a slow CMD does not stretch the wait).
until_within() {
    end=$(awk -v n="$1" '{ printf "%d", $1 + n }' /proc/uptime); shift
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ] || return 1
        sleep 1
    done
}
bg_start() { n=$1; shift; "$@" >$K8S_LOGS/$n.log 2>&1 & echo $! >/run/k8s-$n.pid; }

cluster_network() {
    mount --make-rshared / # as systemd does: the pods' HostToContainer mounts need it
    hostname $NODE
    grep -q " $NODE\$" /etc/hosts || echo "10.88.0.1 $NODE" >>/etc/hosts
    ip addr add 10.0.0.1/32 dev lo # the kubernetes Service's IP: no kube-proxy needed
    ip link add cni0 type bridge && ip addr add 10.88.0.1/16 dev cni0 && ip link set cni0 up
    sysctl -qw net.ipv4.ip_forward=1
    # kubelet sets these itself; preset them so that it does not change them.
    sysctl -qw kernel.panic=10 kernel.panic_on_oops=1 vm.overcommit_memory=1
    mkdir -p /etc/cni/net.d
    cat >/etc/cni/net.d/10-bridge.conflist <<EOC
{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
EOC
}

containerd_up() {
    mkdir -p /etc/containerd
    cat >/etc/containerd/config.toml <<EOC
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/afs/pause:$VERSION"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
EOC
    bg_start containerd containerd --config /etc/containerd/config.toml
    until_within 60 ctr version
}

# images_import: every archive of the share into containerd's k8s.io namespace, the
# sandbox image first (kubelet must never try to pull it: there is no registry).
images_import() {
    for i in $C/images/*.tar; do
        ctr -n k8s.io images import "$i" >>$K8S_LOGS/import.log 2>&1 || { echo "    import $i failed"; tail -n 3 $K8S_LOGS/import.log; return 1; }
    done
}

control_plane_up() {
    # The audit log holds every eviction and node patch: who evicted a pod is asserted.
    mkdir -p /etc/kubernetes
    cat >/etc/kubernetes/audit-policy.yaml <<EOC
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources: [{group: "", resources: [pods/eviction]}]
  - level: None
EOC
    bg_start etcd etcd --name=afs1 --data-dir=/var/lib/etcd --listen-client-urls=http://127.0.0.1:2379 \
        --advertise-client-urls=http://127.0.0.1:2379 --listen-peer-urls=http://127.0.0.1:2380 \
        --initial-advertise-peer-urls=http://127.0.0.1:2380 --initial-cluster=afs1=http://127.0.0.1:2380
    until_within 60 sh -c 'busybox wget -qO- http://127.0.0.1:2379/health | grep -q true' || { echo "    etcd not healthy"; tail -n 5 $K8S_LOGS/etcd.log; return 1; }
    bg_start kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 --secure-port=443 \
        --advertise-address=10.88.0.1 --tls-cert-file=$P/apiserver.crt --tls-private-key-file=$P/apiserver.key \
        --client-ca-file=$P/ca.crt --kubelet-client-certificate=$P/apiserver-kubelet-client.crt \
        --kubelet-client-key=$P/apiserver-kubelet-client.key --kubelet-certificate-authority=$P/ca.crt \
        --kubelet-preferred-address-types=InternalIP --service-account-key-file=$P/sa.pub \
        --service-account-signing-key-file=$P/sa.key --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --api-audiences=https://kubernetes.default.svc.cluster.local --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
        --audit-policy-file=/etc/kubernetes/audit-policy.yaml --audit-log-path=$K8S_LOGS/audit.log \
        --profiling=false --v=1
    until_within 300 kubectl get --raw /readyz || { echo "    kube-apiserver not ready"; tail -n 5 $K8S_LOGS/kube-apiserver.log; return 1; }
    bg_start kube-controller-manager kube-controller-manager --kubeconfig=$P/kcm.kubeconfig --bind-address=127.0.0.1 \
        --controllers=daemonset-controller,deployment-controller,replicaset-controller,garbage-collector-controller,namespace-controller,serviceaccount-token-controller,serviceaccount-controller,node-lifecycle-controller,root-ca-certificate-publisher-controller,persistentvolume-binder-controller,persistentvolume-attach-detach-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller,pod-garbage-collector-controller,disruption-controller,taint-eviction-controller \
        --use-service-account-credentials=true --service-account-private-key-file=$P/sa.key --root-ca-file=$P/ca.crt \
        --leader-elect=false --profiling=false --v=1
    bg_start kube-scheduler kube-scheduler --kubeconfig=$P/scheduler.kubeconfig --bind-address=127.0.0.1 --leader-elect=false
}

kubelet_up() {
    cat >/var/lib/kubelet/config.yaml <<EOC
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $P/ca.crt}}
authorization: {mode: Webhook}
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
readOnlyPort: 0
imageGCHighThresholdPercent: 100
evictionHard: {}
resolvConf: ""
EOC
    bg_start kubelet kubelet --config=/var/lib/kubelet/config.yaml --kubeconfig=$P/kubelet.kubeconfig \
        --node-ip=10.88.0.1 --hostname-override=$NODE --v=1
    until_within 300 kubectl get node $NODE || { echo "    node not registered"; tail -n 10 $K8S_LOGS/kubelet.log; return 1; }
    until_within 300 node_ready || { echo "    node not Ready"; kubectl describe node $NODE | tail -n 20; return 1; }
}
node_ready() { [ "$(kubectl get node $NODE -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }

# This apiserver build (microshift's tree) projects the ConfigMap openshift-service-ca.crt
# into every service-account token volume: a pod waits until its namespace has one. Made
# here in every namespace as it appears (upstream kube-apiserver does not need it).
service_ca_keeper() {
    while :; do
        for ns in $(kubectl get ns -o jsonpath='{.items[*].metadata.name}' 2>/dev/null); do
            kubectl -n "$ns" get configmap openshift-service-ca.crt >/dev/null 2>&1 ||
                kubectl -n "$ns" create configmap openshift-service-ca.crt --from-file=service-ca.crt=$P/ca.crt >/dev/null 2>&1
        done
        sleep 2
    done
}

# cluster_up: everything, the figures printed; returns non-zero naming what failed.
cluster_up() {
    for dir in /var/lib/containerd /var/lib/kubelet /var/lib/etcd $K8S_LOGS; do
        mkdir -p $dir && mount -t tmpfs -o size=2g tmpfs $dir
    done
    mount -t cgroup2 cgroup2 /sys/fs/cgroup || return 1
    cluster_network || return 1
    containerd_up || { echo "    containerd did not start"; tail -n 5 $K8S_LOGS/containerd.log; return 1; }
    (images_import && touch /run/k8s-imported || touch /run/k8s-import-failed) &
    control_plane_up || return 1
    figure "api-server-ready" "$(since $T0)"
    service_ca_keeper >/dev/null 2>&1 &
    until_within 600 sh -c '[ -e /run/k8s-imported ] || [ -e /run/k8s-import-failed ]'
    [ -e /run/k8s-imported ] || return 1
    figure "images-imported" "$(since $T0)"
    kubelet_up || return 1
    figure "node-ready" "$(since $T0)"
}
