# shellcheck shell=bash disable=SC2034  # the settings are for the scripts that source this
# Shared by up.sh, down.sh and image.sh: the settings, the paths, and the helpers that run
# processes inside the cluster's namespaces. Sourced, never run.
#
# Settings (environment; up.sh records what it used in $STATE/settings.sh, and down.sh reads
# that record, so a cluster started with other settings is still taken down whole):
#   GANOPS_LOCAL_STATE         certs, etcd, kubelet, MLflow, logs, pidfiles [/var/lib/ganops-local]
#   GANOPS_LOCAL_CACHE         image layers, containerd's image store; kept [~/.cache/ganops-local]
#   GANOPS_LOCAL_NETNS         network namespace of the cluster    [ganops-local]
#   GANOPS_LOCAL_VETH          host end of the veth pair           [the netns name, cut to 15]
#   GANOPS_LOCAL_SUBNET        veth subnet: .1 host end, .2 node   [10.213.0.0/30]
#   GANOPS_LOCAL_POD_CIDR      pod addresses (CNI host-local)      [10.214.0.0/24]
#   GANOPS_LOCAL_SERVICE_CIDR  ClusterIPs                          [10.215.0.0/24]
#   GANOPS_LOCAL_API_PORT      API server, node IP and host 127.0.0.1 [16443]
#   GANOPS_LOCAL_S3_PORT       S3 (moto), likewise                 [19000]
#   GANOPS_LOCAL_MLFLOW_PORT   MLflow, likewise                    [15000]
#   GANOPS_LOCAL_NODE          node name                           [ganops-local]
#   GANOPS_LOCAL_BUCKET        S3 bucket of data, runs and MLflow artifacts [ganops]
#   GANOPS_NAMESPACE           namespace of the ganops release     [ganops]

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/cluster/local"
STATE="${GANOPS_LOCAL_STATE:-/var/lib/ganops-local}"
if [[ -f "$STATE/settings.sh" ]]; then
  # shellcheck source=/dev/null
  source "$STATE/settings.sh"
fi
CACHE="${GANOPS_LOCAL_CACHE:-$HOME/.cache/ganops-local}"
NETNS="${GANOPS_LOCAL_NETNS:-ganops-local}"
VETH_HOST="${GANOPS_LOCAL_VETH:-${NETNS:0:15}}"
SUBNET="${GANOPS_LOCAL_SUBNET:-10.213.0.0/30}"
POD_CIDR="${GANOPS_LOCAL_POD_CIDR:-10.214.0.0/24}"
SERVICE_CIDR="${GANOPS_LOCAL_SERVICE_CIDR:-10.215.0.0/24}"
API_PORT="${GANOPS_LOCAL_API_PORT:-16443}"
S3_PORT="${GANOPS_LOCAL_S3_PORT:-19000}"
MLFLOW_PORT="${GANOPS_LOCAL_MLFLOW_PORT:-15000}"
NODE_NAME="${GANOPS_LOCAL_NODE:-ganops-local}"
BUCKET="${GANOPS_LOCAL_BUCKET:-ganops}"
NAMESPACE="${GANOPS_NAMESPACE:-ganops}"

# Fixed test credentials: moto accepts any, and they reach the pods through a Secret only.
S3_KEY_ID="ganopslocal"
S3_SECRET="ganopslocal-secret"

# The veth's inside end takes the name eth0: it is the node's only interface, as on a VM.
VETH_NODE="eth0"
PREFIX_LEN="${SUBNET#*/}"
MNTNS="$STATE/ns/mnt"
NETNS_PATH="/run/netns/$NETNS"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
PKI="$STATE/pki"
VENV_PY="$REPO/.venv/bin/python"
CTR_SOCK="/run/containerd/containerd.sock"  # in the mount namespace, whose /run is $STATE/root/run
# containerd's root, i.e. its image store, is a cache like the image layers and stays when the
# cluster goes: importing the image costs a minute, and deleting its unpacked files (tens of
# thousands, on a disk mounted with `discard`) two more.
CTR_ROOT="$CACHE/containerd-$NETNS"

log() { printf '[ganops-local] %s\n' "$*" >&2; }
die() { printf '[ganops-local] error: %s\n' "$*" >&2; exit 1; }

ip_plus() {  # IP N: the address N after IP (bash arithmetic on the 32-bit value)
  local a b c d x
  IFS=. read -r a b c d <<<"${1%/*}"
  x=$(((a << 24 | b << 16 | c << 8 | d) + $2))
  echo "$((x >> 24 & 255)).$((x >> 16 & 255)).$((x >> 8 & 255)).$((x & 255))"
}
HOST_IP="$(ip_plus "$SUBNET" 1)"
NODE_IP="$(ip_plus "$SUBNET" 2)"
KUBERNETES_SVC_IP="$(ip_plus "$SERVICE_CIDR" 1)"

save_settings() {  # what down.sh must know to find everything up.sh made
  mkdir -p "$STATE"
  {
    for v in GANOPS_LOCAL_CACHE=CACHE GANOPS_LOCAL_NETNS=NETNS GANOPS_LOCAL_VETH=VETH_HOST \
      GANOPS_LOCAL_SUBNET=SUBNET GANOPS_LOCAL_POD_CIDR=POD_CIDR GANOPS_LOCAL_SERVICE_CIDR=SERVICE_CIDR \
      GANOPS_LOCAL_API_PORT=API_PORT GANOPS_LOCAL_S3_PORT=S3_PORT GANOPS_LOCAL_MLFLOW_PORT=MLFLOW_PORT \
      GANOPS_LOCAL_NODE=NODE_NAME GANOPS_LOCAL_BUCKET=BUCKET GANOPS_NAMESPACE=NAMESPACE; do
      local var="${v#*=}"
      printf '%s=%q\n' "${v%%=*}" "${!var}"
    done
  } >"$STATE/settings.sh"
}

k8s_bin() {  # the directory of the Kubernetes binaries (built once, then cached)
  "$REPO/../shared/k8s-envtest/build.sh" --node | tail -n 1
}

# --- the namespaces ---------------------------------------------------------------------------

netns_exists() { [[ -e "$NETNS_PATH" ]] && ip netns list | grep -qx "$NETNS\( (id: [0-9]*)\)\{0,1\}"; }
mntns_exists() { mountpoint -q "$MNTNS" 2>/dev/null; }

# Run a command in the cluster's mount and network namespaces. nsenter opens both before it
# enters either, so the host's /run/netns path is still the one it opens.
nsrun() {
  nsenter --mount="$MNTNS" --net="$NETNS_PATH" -- "$@"
}

# A daemon in the namespaces, in a session of its own (so that a whole process group can be
# signalled), with a clean environment plus `KEY=VALUE` words before the command. Its output
# goes to $LOGS/NAME.log, and fd 3 (up.sh's real stdout) is closed: a daemon holding it would
# keep `eval "$(up.sh)"` waiting for the end of the output forever.
#   start_daemon NAME [KEY=VALUE...] COMMAND ARGS...
start_daemon() {
  local name="$1"
  shift
  if daemon_running "$name"; then return 0; fi
  local envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="$STATE/home"
    TMPDIR="$STATE/tmp" LANG=C.UTF-8)
  while [[ "$1" == *=* ]]; do envs+=("$1"); shift; done
  mkdir -p "$LOGS" "$PIDS" "$STATE/home" "$STATE/tmp"
  # setsid and nsenter exec (no fork: not a group leader when started with &), so $! is the
  # daemon's own pid.
  setsid env -i "${envs[@]}" nsenter --mount="$MNTNS" --net="$NETNS_PATH" -- "$@" \
    >>"$LOGS/$name.log" 2>&1 </dev/null 3>&- &
  echo "$!" >"$PIDS/$name.pid"
}

# A forwarder in the host's namespaces: 127.0.0.1:PORT -> NODE_IP:PORT.
start_forwarder() {
  local port="$1" name="forward-$1"
  if daemon_running "$name"; then return 0; fi
  mkdir -p "$LOGS" "$PIDS"
  setsid socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" "TCP:$NODE_IP:$port" \
    >>"$LOGS/$name.log" 2>&1 </dev/null 3>&- &
  echo "$!" >"$PIDS/$name.pid"
}

daemon_pid() { [[ -f "$PIDS/$1.pid" ]] && cat "$PIDS/$1.pid"; }
daemon_running() {
  local pid
  pid="$(daemon_pid "$1" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

ctr() { nsrun /usr/bin/ctr --address "$CTR_SOCK" --namespace k8s.io "$@"; }

# Every container (pods' and their sandboxes), killed and deleted through containerd with their
# writable snapshots: what the image store keeps afterwards is images alone.
remove_containers() {
  local id
  for id in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill --all --signal SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr tasks ls -q 2>/dev/null); do ctr tasks delete --force "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr containers ls -q 2>/dev/null); do ctr containers delete "$id" >/dev/null 2>&1 || true; done
}

# Wait until COMMAND succeeds: wait_for SECONDS WHAT COMMAND ARGS...
wait_for() {
  local timeout="$1" what="$2" start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start > timeout)); then
      die "$what: not ready after ${timeout}s (logs: $LOGS)"
    fi
    sleep 0.5
  done
}
