#!/usr/bin/env bash
# Runs once, from up.sh, as the first process of the cluster's new mount namespace (already in
# its network namespace); the mount namespace outlives it, bound to $STATE/ns/mnt, and every
# cluster process enters it. What is mounted here is seen by the cluster's processes only and
# vanishes with the namespace: the host never sees kubelet's and containerd's mounts.
#
#   unshare --mount=$STATE/ns/mnt --propagation private -- nsenter --net=... -- mntns.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The kernel tunables kubelet insists on. It would set them for the whole machine (they are not
# per namespace), so kubelet runs with protectKernelDefaults (it never writes them, and refuses
# to start if it finds other values), and here it finds files with the values it wants over the
# /proc/sys entries: the host's own values stay as they are.
KUBELET_SYSCTLS=(vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1
  kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000)

# A sysfs of this network namespace (sysfs shows the devices of the namespace that mounts it), so
# /sys/class/net lists the node's interfaces and not the host's; the cgroup file systems are
# carried over from the old /sys. (`ip netns exec` remounts /sys and loses them: kubelet needs them.)
remount_sysfs() {
  mkdir -p "$STATE/ns/cgroup"
  mount --rbind /sys/fs/cgroup "$STATE/ns/cgroup"
  umount -l /sys
  mount -t sysfs sysfs /sys
  mount --move "$STATE/ns/cgroup" /sys/fs/cgroup
}

mask_sysctls() {
  mkdir -p "$STATE/ns/sysctl"
  local kv key file
  for kv in "${KUBELET_SYSCTLS[@]}"; do
    key="${kv%=*}"
    file="$STATE/ns/sysctl/${key//\//.}"
    echo "${kv#*=}" >"$file"
    mount --bind -o ro "$file" "/proc/sys/$key"
  done
}

# $STATE/root/TARGET over TARGET, for what the cluster writes to fixed paths: /run (containerd's
# and kubelet's sockets, runc's state, the pods' network namespace mounts, the iptables lock),
# /var/lib (kubelet's device-plugins directory and libcni's cache are fixed in v1.20), /var/log
# (kubelet's /var/log/pods, fixed too). $STATE and the repository (its .venv runs the S3 and
# MLflow servers), when they lie under TARGET, are mounted again at their own paths in the new
# tree, so that they stay where everything expects them. (/tmp is not covered: the daemons get
# TMPDIR=$STATE/tmp instead, so that a repository under /tmp stays visible.)
overmount() {
  local target="$1" src="$STATE/root$1" keep
  mkdir -p "$src"
  for keep in "$STATE" "$REPO"; do
    if [[ "$keep/" == "$target/"* ]]; then
      mkdir -p "$src${keep#"$target"}"
      mount --bind "$keep" "$src${keep#"$target"}"
    fi
  done
  mount --rbind "$src" "$target"
}

main() {
  remount_sysfs
  mask_sysctls
  for t in /run /var/lib /var/log; do overmount "$t"; done
  mkdir -p /run/containerd /var/lib/kubelet /var/lib/cni /var/log/pods
  touch "$STATE/ns/mnt.ready"
}

main "$@"
