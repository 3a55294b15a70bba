#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, contained in namespaces of its own, with
# ganops installed: for trying ganops by hand, and for the end-to-end tests.
#
#   eval "$(cluster/local/up.sh)"      # as root; prints only `export NAME=value` lines
#   ganops submit jobs/mnist_dcgan.yaml --target k8s -n "$GANOPS_NAMESPACE" \
#     --set spec.data.root=s3://ganops/datasets/mnist --set spec.data.download=false \
#     --set spec.data.split=test --set spec.storage=s3://ganops/runs
#   cluster/local/down.sh              # everything gone (the caches in ~/.cache stay)
#
# What runs, all inside the network namespace `ganops-local` and a mount namespace of its own:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (+ runc), kubelet,
# kube-proxy (iptables), dnsmasq fed from the Services (cluster DNS), an S3 server (moto), an
# MLflow server (artifacts in S3), and the KubeRay stand-in (tests/kuberay) when it exists. The
# host reaches the API server, S3 and MLflow on 127.0.0.1 through socat forwarders; pods reach
# S3 and MLflow on the node IP. Progress goes to stderr, logs to $STATE/logs, the environment
# also to $STATE/env.sh. Idempotent: with the cluster up it only prints the environment; after a
# failure it goes on from where it stopped (or run down.sh first). Settings: see lib.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# stdout is for the export lines alone (eval "$(up.sh)"): everything else goes to stderr.
exec 3>&1 1>&2

# Debian's packages the cluster runs on (the Kubernetes binaries are built from Debian's source
# by k8s-envtest/build.sh). This machine has no init system, so installing containerd starts no
# daemon on the host.
PACKAGES=(containerd runc containernetworking-plugins debootstrap dnsmasq-base iptables iproute2
  conntrack ipset catatonit socat openssl curl util-linux)
CGROUP="/$NETNS"
DEPLOYMENT="ganops-operator"  # the chart's operator Deployment for release "ganops"

phase_start=0
phase() { phase_start=$SECONDS; log "== $*"; }
phase_done() { log "   done in $((SECONDS - phase_start))s"; }

# --- prerequisites ------------------------------------------------------------------------------

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

prerequisites() {
  [[ "$(id -u)" == 0 ]] || die "run as root (namespaces, mounts, cgroups)"
  install_packages
  # The Python environment of the repository (moto, mlflow, kubernetes, helm-python-sdk).
  make -C "$REPO" -s setup >&2
  BIN="$(k8s_bin)"
  [[ -x "$BIN/kubelet" ]] || die "no kubelet in $BIN (../shared/k8s-envtest/build.sh --node)"
}

# Its discovery cache in $STATE, not ~/.kube/cache: nothing of the cluster outlives down.sh.
kubectl() { "$BIN/kubectl" --kubeconfig "$PKI/admin.kubeconfig" --cache-dir "$STATE/kubectl-cache" "$@"; }

# --- namespaces ------------------------------------------------------------------------------

port_free() { ! ss -Htln "sport = :$1" | grep -q .; }

make_netns() {
  if netns_exists; then
    [[ -f "$STATE/ns/netns.ready" ]] || die "network namespace $NETNS is half made: run down.sh first"
    return 0
  fi
  for port in "$API_PORT" "$S3_PORT" "$MLFLOW_PORT"; do
    port_free "$port" || die "port $port is taken on this host (GANOPS_LOCAL_*_PORT chooses another)"
  done
  if ip -o addr show | grep -q " inet ${HOST_IP}/"; then
    die "$HOST_IP is already in use here (GANOPS_LOCAL_SUBNET chooses another subnet)"
  fi
  # `ip netns add` makes /run/netns a mount point the first time; down.sh undoes that too.
  [[ -d /run/netns ]] || touch "$STATE/ns/run-netns-was-absent"
  mountpoint -q /run/netns 2>/dev/null || touch "$STATE/ns/run-netns-was-no-mount"
  ip netns add "$NETNS"
  ip link add "$VETH_HOST" type veth peer name "$VETH_NODE" netns "$NETNS"
  ip addr add "$HOST_IP/$PREFIX_LEN" dev "$VETH_HOST"
  ip link set "$VETH_HOST" up
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" addr add "$NODE_IP/$PREFIX_LEN" dev "$VETH_NODE"
  ip -n "$NETNS" link set "$VETH_NODE" up
  # ClusterIPs need a route for the first routing decision, before kube-proxy's DNAT rewrites
  # them. It points at a veth whose peer stays down, so that an address nothing answers for is
  # dropped here and never sent to the host (this kernel has no dummy devices). There is no
  # default route: pods reach the node and each other, nothing else.
  ip -n "$NETNS" link add svc0 type veth peer name svc0-peer
  ip -n "$NETNS" link set svc0 up
  ip -n "$NETNS" route add "$SERVICE_CIDR" dev svc0
  nsenter --net="$NETNS_PATH" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  touch "$STATE/ns/netns.ready"
}

make_mntns() {
  if mntns_exists; then
    [[ -f "$STATE/ns/mnt.ready" ]] || die "the mount namespace is half made: run down.sh first"
    return 0
  fi
  mkdir -p "$STATE/ns"
  touch "$MNTNS"
  # unshare can bind the new namespace only onto a file whose mount is not shared (systemd
  # makes / shared); then $STATE/ns gets a private mount of its own, which down.sh removes.
  if [[ "$(findmnt -no PROPAGATION --target "$STATE/ns")" == shared* ]]; then
    mount --bind "$STATE/ns" "$STATE/ns" && mount --make-private "$STATE/ns"
    touch "$MNTNS"
  fi
  unshare --mount="$MNTNS" --propagation private -- \
    nsenter --net="$NETNS_PATH" -- bash "$HERE/mntns.sh"
}

# Pods' cgroups live under one cgroup of their own in every hierarchy (kubelet's cgroupRoot),
# which down.sh removes whole.
make_cgroups() {
  local h
  for h in /sys/fs/cgroup/*/; do
    mkdir -p "$h${CGROUP#/}"
  done
  # A new cpuset has no CPUs and no memory nodes, and nothing can join it until it has some.
  local cs=/sys/fs/cgroup/cpuset
  if [[ -d "$cs$CGROUP" ]]; then
    cat "$cs/cpuset.cpus" >"$cs$CGROUP/cpuset.cpus"
    cat "$cs/cpuset.mems" >"$cs$CGROUP/cpuset.mems"
  fi
}

# --- configuration files ------------------------------------------------------------------------

write_configs() {
  mkdir -p "$STATE/etc" "$STATE/cni" "$STATE/dns"
  cat >"$STATE/etc/containerd.toml" <<EOF
version = 2
root = "$CTR_ROOT"
state = "/run/containerd"
# "opt" would create /opt/containerd on the host; the other snapshotters are not used.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CTR_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/ganops-local/pause:catatonit"
  # No CAP_SYS_RESOURCE in this sandbox: without this every pod sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
EOF
  cat >"$STATE/cni/10-ganops-local.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "ganops-local",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
             "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/var/lib/cni/networks"}
  }]
}
EOF
  # Pods ask the cluster DNS only; nothing is forwarded outside.
  : >"$STATE/etc/resolv.conf"
  [[ -f "$STATE/dns/hosts" ]] || echo "$NODE_IP $NODE_NAME" >"$STATE/dns/hosts"
  cat >"$STATE/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP
failSwapOn: false
# The kernel tunables kubelet wants are shown to it in its mount namespace (mntns.sh); it must
# never write them, since they are the whole machine's.
protectKernelDefaults: true
oomScoreAdj: 0
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $STATE/etc/resolv.conf
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
# Every client the cluster's CA signed (only the API server has such a certificate); the
# kubelet's port exists only inside the namespace.
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
# The machine is shared: no evictions for the disk other programs fill, and no image garbage
# collection (the imported images cannot be pulled again).
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# CPU limits are not enforced as CFS quotas here: pods are placed by their requests (which
# fit the 2 CPUs), then share the CPUs. With quotas the two 500m Ray workers would train on
# one CPU between them while the other CPU idled (e2e's training took twice as long). A real
# cluster keeps the default (true).
cpuCFSQuota: false
maxPods: 50
EOF
}

# --- the control plane --------------------------------------------------------------------------

start_control_plane() {
  start_daemon etcd "$BIN/etcd" --name "$NODE_NAME" --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:2380"
  wait_for 60 etcd nsrun curl -sf http://127.0.0.1:2379/health
  start_daemon kube-apiserver "$BIN/kube-apiserver" \
    --advertise-address="$NODE_IP" --secure-port="$API_PORT" --insecure-port=0 \
    --etcd-servers=http://127.0.0.1:2379 \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false
  wait_for 120 kube-apiserver kubectl get --raw /readyz
  start_daemon kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$PKI/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true --leader-elect=false \
    --port=0 --bind-address=127.0.0.1 --profiling=false
  start_daemon kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$PKI/scheduler.kubeconfig" \
    --authentication-kubeconfig="$PKI/scheduler.kubeconfig" \
    --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
    --leader-elect=false --port=0 --bind-address=127.0.0.1 --profiling=false
}

# --- the node -----------------------------------------------------------------------------------

image_imported() {  # DESCRIPTOR: is that image, with that manifest, in containerd?
  local name digest
  name="$("$VENV_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$1")"
  digest="$("$VENV_PY" "$HERE/oci.py" --manifest-digest "$1")"
  ctr images ls "name==$name" | grep -q " $digest "
}

import_images() {
  local d layer skip have digest
  for d in "${IMAGE_DESCRIPTORS[@]}"; do
    image_imported "$d" && continue
    # Layers the store has (the base, after a code change) stay out of the archive.
    have="$(ctr content ls -q)"
    skip=()
    for layer in $("$VENV_PY" -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["layers"]))' "$d"); do
      digest="sha256:$(cat "$layer.sha256")"
      if grep -qx "$digest" <<<"$have"; then skip+=(--skip "$digest"); fi
    done
    log "importing $(basename "$d" .json) into containerd"
    "$VENV_PY" "$HERE/oci.py" "${skip[@]}" "$d" | ctr images import - >/dev/null
  done
}

start_node() {
  start_daemon containerd /usr/bin/containerd --config "$STATE/etc/containerd.toml"
  wait_for 60 containerd ctr version
  # Leftovers of a cluster that was not taken down (the image store outlives clusters).
  remove_containers
  import_images
  start_daemon kubelet "$BIN/kubelet" --config="$STATE/etc/kubelet.yaml" \
    --kubeconfig="$PKI/kubelet.kubeconfig" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --container-runtime=remote --container-runtime-endpoint="unix://$CTR_SOCK" \
    --root-dir=/var/lib/kubelet --cert-dir=/var/lib/kubelet/pki
  # Service traffic is masqueraded (--masquerade-all) so that a pod reaching itself or a
  # neighbour through a ClusterIP gets its answers back over the bridge. The conntrack limits
  # are the host's (the kernel shares them): --conntrack-*=0 leaves them alone.
  start_daemon kube-proxy "$BIN/kube-proxy" --kubeconfig="$PKI/kube-proxy.kubeconfig" \
    --proxy-mode=iptables --hostname-override="$NODE_NAME" --bind-address="$NODE_IP" \
    --cluster-cidr="$POD_CIDR" --masquerade-all --oom-score-adj=0 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256
  # Cluster DNS on the node IP, from the hosts file alone: no upstream, so no query leaves the
  # namespace. Its pid file, written before it drops root, is what dns-sync signals.
  start_daemon dnsmasq /usr/sbin/dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv \
    --no-hosts --addn-hosts="$STATE/dns/hosts" --local=/cluster.local/ --domain-needed --bogus-priv \
    --bind-interfaces --listen-address="$NODE_IP" \
    --pid-file="$STATE/dns/dnsmasq.pid" --log-facility=-
  start_daemon dns-sync "$VENV_PY" "$HERE/dns_sync.py" --kubeconfig "$PKI/admin.kubeconfig" \
    --hosts "$STATE/dns/hosts" --dnsmasq-pidfile "$STATE/dns/dnsmasq.pid" --node "$NODE_NAME=$NODE_IP"
  wait_for 180 "node $NODE_NAME Ready" node_ready
}

node_ready() {
  [[ "$(kubectl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

# --- S3 and MLflow ------------------------------------------------------------------------------

S3_ENV=(AWS_ACCESS_KEY_ID="$S3_KEY_ID" AWS_SECRET_ACCESS_KEY="$S3_SECRET" AWS_DEFAULT_REGION=us-east-1)

# Started early, waited for late: their imports (MLflow's take a while) overlap the cluster's start.
start_services() {
  local s3="http://$NODE_IP:$S3_PORT"
  start_daemon s3 "$REPO/.venv/bin/moto_server" -H "$NODE_IP" -p "$S3_PORT"
  mkdir -p "$STATE/mlflow"
  # Artifacts are proxied (mlflow-artifacts:/), so clients need no S3 access for them. MLflow
  # refuses Host headers it was not told about (against DNS rebinding): the node IP for pods,
  # 127.0.0.1 and localhost for the host's forwarder.
  start_daemon mlflow "${S3_ENV[@]}" MLFLOW_S3_ENDPOINT_URL="$s3" MLFLOW_DISABLE_TELEMETRY=true \
    "$REPO/.venv/bin/mlflow" server --backend-store-uri "sqlite:///$STATE/mlflow/mlflow.db" \
    --artifacts-destination "s3://$BUCKET/mlflow" --host "$NODE_IP" --port "$MLFLOW_PORT" --workers 1 \
    --allowed-hosts "$NODE_IP:$MLFLOW_PORT,127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT,$NODE_IP,127.0.0.1,localhost"
}

services_ready() {
  local s3="http://$NODE_IP:$S3_PORT"
  # The host reaches the node IP over the veth (its route is the host end's subnet).
  wait_for 120 "S3 server" curl -sf "$s3/moto-api/"
  env "${S3_ENV[@]}" "$VENV_PY" "$HERE/s3_seed.py" --endpoint "$s3" --bucket "$BUCKET" \
    --mnist "$REPO/../shared/datasets/mnist"
  wait_for 240 "MLflow server" curl -sf "http://$NODE_IP:$MLFLOW_PORT/health"
}

start_forwarders() {
  local port
  for port in "$API_PORT" "$S3_PORT" "$MLFLOW_PORT"; do
    start_forwarder "$port"
  done
  wait_for 20 "forwarder to the API server" curl -sk "https://127.0.0.1:$API_PORT/"
  wait_for 20 "forwarder to S3" curl -sf "http://127.0.0.1:$S3_PORT/moto-api/"
  wait_for 20 "forwarder to MLflow" curl -sf "http://127.0.0.1:$MLFLOW_PORT/health"
}

# --- ganops -------------------------------------------------------------------------------------

install_ganops() {
  "$VENV_PY" "$HERE/crds.py" | kubectl apply -f - >/dev/null
  kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # The test keys, as the Secret the chart names (credentials.secretName); on stdin, never argv.
  printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: ganops-credentials\n  namespace: %s\ntype: Opaque\nstringData:\n  AWS_ACCESS_KEY_ID: "%s"\n  AWS_SECRET_ACCESS_KEY: "%s"\n' \
    "$NAMESPACE" "$S3_KEY_ID" "$S3_SECRET" | kubectl apply -f - >/dev/null
  # Helm's discovery cache and its own files under $STATE, like kubectl's (see kubectl above).
  HOME="$STATE/home" KUBECACHEDIR="$STATE/kubectl-cache" \
    "$VENV_PY" "$HERE/chart.py" --kubeconfig "$PKI/admin.kubeconfig" --namespace "$NAMESPACE" \
    --values "$HERE/values.yaml" \
    --set "s3.endpoint=http://$NODE_IP:$S3_PORT" --set "mlflow.trackingUri=http://$NODE_IP:$MLFLOW_PORT"
  if ! kubectl -n "$NAMESPACE" rollout status "deployment/$DEPLOYMENT" --timeout=300s >&2; then
    kubectl -n "$NAMESPACE" get pods -o wide >&2 || true
    kubectl -n "$NAMESPACE" logs "deployment/$DEPLOYMENT" --tail=30 --previous >&2 \
      || kubectl -n "$NAMESPACE" logs "deployment/$DEPLOYMENT" --tail=30 >&2 || true
    die "the ganops operator did not become Ready (its pod and log above)"
  fi
}

start_kuberay() {
  if [[ ! -f "$REPO/tests/kuberay/__main__.py" ]]; then
    log "no tests/kuberay yet: RayJobs stay unreconciled (no KubeRay operator)"
    return 0
  fi
  # In the namespaces: it reaches the Ray head through its ClusterIP.
  start_daemon kuberay PYTHONPATH="$REPO" "$VENV_PY" -m tests.kuberay --kubeconfig "$PKI/admin.kubeconfig"
  sleep 2
  daemon_running kuberay || die "the KubeRay stand-in exited: $LOGS/kuberay.log"
}

# --- output -------------------------------------------------------------------------------------

write_env() {
  cp "$PKI/host.kubeconfig" "$STATE/kubeconfig"
  cat >"$STATE/env.sh" <<EOF
export KUBECONFIG=$STATE/kubeconfig
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=$S3_KEY_ID
export AWS_SECRET_ACCESS_KEY=$S3_SECRET
export AWS_DEFAULT_REGION=us-east-1
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export GANOPS_NAMESPACE=$NAMESPACE
EOF
}

ALL_DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy
  dnsmasq dns-sync s3 mlflow "forward-$API_PORT" "forward-$S3_PORT" "forward-$MLFLOW_PORT")

healthy() {
  [[ -f "$STATE/env.sh" ]] || return 1
  local d
  for d in "${ALL_DAEMONS[@]}"; do daemon_running "$d" || return 1; done
  [[ ! -f "$PIDS/kuberay.pid" ]] || daemon_running kuberay || return 1
  curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz" >/dev/null
}

on_exit() {
  (($1 == 0)) || log "up.sh failed; cluster/local/down.sh takes down what it started (logs: $LOGS)"
}

main() {
  local t0=$SECONDS
  if healthy; then
    log "the cluster is up ($STATE)"
    cat "$STATE/env.sh" >&3
    return 0
  fi
  trap 'on_exit $?' EXIT
  mkdir -p "$STATE/ns" "$LOGS" "$PIDS"
  save_settings
  # How down.sh finds an up.sh that still runs, and the helpers (kubectl, curl, ...) of one that
  # was killed: they carry this variable, daemons do not (they start with a clean environment).
  echo "$$" >"$PIDS/up.pid"
  export GANOPS_LOCAL_UP="$STATE"
  phase "prerequisites (packages, .venv, Kubernetes binaries)"; prerequisites; phase_done
  phase "images (cached in $CACHE)"
  local descriptors
  descriptors="$("$HERE/image.sh")"  # (not `mapfile < <(...)`, which would hide its failure)
  mapfile -t IMAGE_DESCRIPTORS <<<"$descriptors"
  phase_done
  phase "namespaces, certificates, configuration"
  make_netns; make_mntns; make_cgroups
  bash "$HERE/pki.sh"
  write_configs
  phase_done
  phase "control plane (S3 and MLflow start meanwhile)"; start_services; start_control_plane; phase_done
  phase "node (containerd, images, kubelet, kube-proxy, DNS)"; start_node; phase_done
  phase "S3 and MLflow, forwarders"; services_ready; start_forwarders; phase_done
  phase "ganops chart and the KubeRay stand-in"; install_ganops; start_kuberay; phase_done
  write_env
  log "up in $((SECONDS - t0))s; logs in $LOGS; kubectl: $BIN/kubectl"
  cat "$STATE/env.sh" >&3
}

main "$@"
