#!/usr/bin/env bash
# Takes the local cluster of up.sh down and leaves nothing behind on the host: no process, no
# mount, no interface, no network namespace, no cgroup, no iptables rule (none was made in the
# host's namespace: kube-proxy's and kubelet's rules lived in the cluster's), no state
# directory. The caches (~/.cache/ganops-local: image layers and containerd's image store;
# ~/.cache/ganops-envtest) stay.
#
#   cluster/local/down.sh
#
# Safe to run twice, and after an up.sh that failed halfway: every step looks for what it
# undoes, and processes are found by their namespaces and cgroups too, not by pidfiles alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CGROUP="/$NETNS"
# Stopped in two rounds before the sweep: first what would start or restart containers
# (kubelet restarts what containerd stops), then, once the containers are gone, the rest.
STOP_FIRST=(kuberay kube-controller-manager kube-scheduler kubelet)
STOP_THEN=(kube-proxy dns-sync dnsmasq mlflow s3 containerd kube-apiserver etcd)

NET_ID=""
MNT_ID=""
if netns_exists; then NET_ID="$(stat -L -c 'net:[%i]' "$NETNS_PATH")"; fi
if mntns_exists; then MNT_ID="$(stat -L -c 'mnt:[%i]' "$MNTNS")"; fi

is_ours() {  # PID: in the cluster's network or mount namespace, or in its cgroups
  local pid="$1" n m
  n="$(readlink "/proc/$pid/ns/net" 2>/dev/null)" || return 1
  m="$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" || return 1
  [[ -n "$NET_ID" && "$n" == "$NET_ID" ]] && return 0
  [[ -n "$MNT_ID" && "$m" == "$MNT_ID" ]] && return 0
  grep -q ":$CGROUP\(/\|$\)" "/proc/$pid/cgroup" 2>/dev/null
}

our_pids() {
  local p pid
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
    is_ours "$pid" && echo "$pid"
  done
  return 0
}

alive() { [[ -e "/proc/$1" ]] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
any_alive() {
  local p
  for p in "$@"; do alive "$p" && return 0; done
  return 1
}

ours_by_pidfile() {  # NAME: its pid, if that process is still the one up.sh started
  local name="$1" pid
  pid="$(daemon_pid "$name" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && alive "$pid" || return 1
  case "$name" in
    forward-*) [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == "socat TCP-LISTEN:"* ]] || return 1 ;;
    *) is_ours "$pid" || return 1 ;;
  esac
  echo "$pid"
}

stop_groups() {  # NAME...: their process groups, TERM together, then KILL what is left after 10 s
  local name pid leaders=() names=() i
  for name in "$@"; do
    pid="$(ours_by_pidfile "$name")" || continue
    leaders+=("$pid") names+=("$name")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for i in $(seq 1 40); do
    any_alive "${leaders[@]}" || break
    sleep 0.25
  done
  for i in "${!leaders[@]}"; do
    alive "${leaders[$i]}" && log "${names[$i]} still ran 10 s after SIGTERM: SIGKILL"
    kill -KILL -- "-${leaders[$i]}" 2>/dev/null || true
  done
}

stop_up() {  # an up.sh that still runs, and what it started in the host's namespaces
  local pid p
  pid="$(daemon_pid up 2>/dev/null)" || pid=""
  if [[ -n "$pid" ]] && alive "$pid" && [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *up.sh* ]]; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  for p in /proc/[0-9]*; do
    [[ "${p#/proc/}" == "$$" ]] && continue
    if tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -qxF "GANOPS_LOCAL_UP=$STATE"; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
}

stop_containers() {  # every pod's containers, through containerd, while it still runs
  daemon_running containerd || return 0
  remove_containers
}

# What the CRI plugin keeps per pod and container in containerd's root (hosts and resolv.conf
# files), which only it removes, and it no longer runs.
clean_image_store() {
  rm -rf "$CTR_ROOT/io.containerd.grpc.v1.cri/sandboxes" "$CTR_ROOT/io.containerd.grpc.v1.cri/containers"
}

sweep() {  # whatever is left in the namespaces or cgroups: KILL, until none is
  local i left
  for i in $(seq 1 40); do
    mapfile -t left < <(our_pids)
    ((${#left[@]})) || return 0
    kill -KILL "${left[@]}" 2>/dev/null || true
    sleep 0.25
  done
  die "processes still in the cluster's namespaces: $(our_pids | tr '\n' ' ')"
}

stop_forwarders() {  # by pidfile, then any socat of exactly our command line
  local f pid port names=()
  for f in "$PIDS"/forward-*.pid; do
    [[ -e "$f" ]] && names+=("$(basename "$f" .pid)")
  done
  ((${#names[@]} == 0)) || stop_groups "${names[@]}"
  for port in "$API_PORT" "$S3_PORT" "$MLFLOW_PORT"; do
    local want="socat TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr TCP:$NODE_IP:$port "
    for pid in $(pgrep -x socat || true); do
      [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == "$want" ]] && kill -KILL "$pid" 2>/dev/null
    done
  done
  return 0
}

remove_namespaces() {
  # The mount namespace dies with its last process and this bind of it; its mounts go with it.
  if mntns_exists; then umount "$MNTNS"; fi
  if [[ -d "$STATE/ns" ]] && mountpoint -q "$STATE/ns"; then umount "$STATE/ns"; fi
  if [[ -e "$NETNS_PATH" ]]; then ip netns delete "$NETNS"; fi
  if ip link show "$VETH_HOST" >/dev/null 2>&1; then ip link delete "$VETH_HOST"; fi
  # `ip netns add` made /run/netns a mount point; undo that if no other namespace is left there.
  if [[ -f "$STATE/ns/run-netns-was-no-mount" ]] && mountpoint -q /run/netns \
    && [[ -z "$(ls -A /run/netns)" ]]; then
    umount /run/netns
    if [[ -f "$STATE/ns/run-netns-was-absent" ]]; then rmdir /run/netns; fi
  fi
}

remove_cgroups() {  # kubelet's and runc's cgroups under $CGROUP, deepest first
  local h i left
  for i in $(seq 1 20); do
    left=0
    for h in /sys/fs/cgroup/*/; do
      [[ -d "$h${CGROUP#/}" ]] || continue
      find "$h${CGROUP#/}" -depth -type d -exec rmdir {} + 2>/dev/null || left=1
    done
    ((left)) || return 0
    sleep 0.5
  done
  die "cgroups left: $(find /sys/fs/cgroup/*/"${CGROUP#/}" -maxdepth 0 2>/dev/null | tr '\n' ' ')"
}

remove_state() {
  [[ -d "$STATE" ]] || return 0
  local mounted
  mounted="$(findmnt -rn -o TARGET | awk -v s="$STATE" 'index($0, s "/") == 1 || $0 == s' || true)"
  [[ -z "$mounted" ]] || die "still mounted under $STATE: $mounted (not removing it)"
  rm -rf --one-file-system "$STATE"
}

step() {  # FUNCTION ARGS...: run it, and say how long it took when that was noticeable
  local t=$SECONDS
  "$@"
  ((SECONDS - t < 2)) || log "$*: $((SECONDS - t))s"
}

main() {
  local t0=$SECONDS
  [[ "$(id -u)" == 0 ]] || die "run as root"
  step stop_up
  step stop_groups "${STOP_FIRST[@]}"
  step stop_containers
  # The forwarders before the servers: their open connections would hold MLflow's graceful stop.
  step stop_forwarders
  step stop_groups "${STOP_THEN[@]}"
  step sweep
  clean_image_store
  step remove_namespaces
  step remove_cgroups
  step remove_state
  log "down in $((SECONDS - t0))s"
}

main "$@"
