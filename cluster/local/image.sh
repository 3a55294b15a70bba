#!/usr/bin/env bash
# The images of the local cluster, built from root file systems (no registry, no Docker engine
# here) and cached as layer tarballs under $GANOPS_LOCAL_CACHE (~/.cache/ganops-local):
#
#   ganops:<version>   the operator's and the Ray pods' image, as cluster/Dockerfile makes it:
#     base layer  debootstrap'ed bookworm + python3-venv + ganops's dependencies, pip-installed
#                 with -c constraints.txt into /home/ray/venv (owned by ray, 1000:100);
#                 key: pyproject.toml + constraints.txt + the code below that builds it
#     top layer   ganops itself (pip install --no-deps .); key: the base + ganops/ + README.md
#                 (so a code change rebuilds in seconds)
#   ganops-local/pause:catatonit   the pod sandbox image: Debian's static catatonit
#
#   cluster/local/image.sh     builds what is missing; prints one descriptor (JSON) per image,
#                              which cluster/local/oci.py turns into an OCI archive
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/ganops/__init__.py")"
[[ -n "$VERSION" ]] || die "no __version__ in ganops/__init__.py"
VENV=/home/ray/venv
# What the image has besides Python: bash and procps as the Dockerfile's Ray base has them;
# wget because KubeRay's health probes of Ray pods run it.
PACKAGES=python3,python3-venv,bash,procps,ca-certificates,wget
IMAGE_ENV=(
  "PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  "HOME=/home/ray" "PYTHONUNBUFFERED=1" "PIP_NO_CACHE_DIR=1" "PIP_DISABLE_PIP_VERSION_CHECK=1"
  "RAY_USAGE_STATS_ENABLED=0" "MLFLOW_DISABLE_TELEMETRY=true"
  # No git in the image: MLflow's GitPython would print a page of warnings at every import.
  "GIT_PYTHON_REFRESH=quiet"
)

# Cache keys: what each layer is built from. The image script's part is the code that builds
# the layer (not its comments, nor the image config, which costs no rebuild).
base_layer_key() {
  { cat "$REPO/pyproject.toml" "$REPO/constraints.txt"; echo "$PACKAGES $VENV"
    declare -f build_base in_chroot pip_env unbind_leftovers make_layer mirror; } | sha256sum | cut -c1-16
}
top_layer_key() {  # BASE_KEY
  { echo "$1"; declare -f build_top make_layer
    cd "$REPO" && find ganops -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z \
      | xargs -0 sha256sum && sha256sum README.md; } | sha256sum | cut -c1-16
}

mirror() {  # Debian's archive as this machine's apt has it (so no host name is written here)
  awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
    || true
}

# The pip settings of this machine, for pip inside the chroot: the local wheels and indexes
# are bind-mounted at the same paths, and named here (they live in root's user config, which
# pip in the chroot would not read). One KEY=VALUE a line.
pip_env() {
  local extra=()
  for d in /opt/pypi/simple /opt/pypi-more/simple; do [[ -d "$d" ]] && extra+=("file://$d"); done
  printf '%s\n' PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PYTHONDONTWRITEBYTECODE=1
  [[ -d /opt/wheels ]] && echo "PIP_FIND_LINKS=/opt/wheels"
  ((${#extra[@]})) && echo "PIP_EXTRA_INDEX_URL=${extra[*]}"
  return 0
}

# Run a script in ROOTFS as root, in a private mount namespace: its /proc, /dev, /tmp, DNS,
# CA bundle and pip's files are mounts that vanish with the namespace, whatever happens.
in_chroot() {
  local rootfs="$1" script="$2" envs=()
  mapfile -t envs < <(pip_env)
  local binds=(/etc/resolv.conf /etc/ssl/certs/ca-certificates.crt)
  for p in /etc/pip.conf /opt/wheels /opt/pypi /opt/pypi-more; do [[ -e "$p" ]] && binds+=("$p"); done
  # shellcheck disable=SC2016
  unshare --mount --propagation private -- bash -euo pipefail -c '
    rootfs="$1" script="$2" nenv="$3"; shift 3
    envs=("${@:1:$nenv}"); shift "$nenv"
    mount -t proc proc "$rootfs/proc"
    mount --rbind /dev "$rootfs/dev"
    mount -t tmpfs tmpfs "$rootfs/tmp"
    for p in "$@"; do
      if [[ -d "$p" ]]; then mkdir -p "$rootfs$p"; else mkdir -p "$(dirname "$rootfs$p")"; touch "$rootfs$p"; fi
      mount --bind -o ro "$p" "$rootfs$p"
    done
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "${envs[@]}" \
      chroot "$rootfs" /bin/bash -euo pipefail -c "$script"
  ' in_chroot "$rootfs" "$script" "${#envs[@]}" "${envs[@]}" "${binds[@]}"
}

# The mount points in_chroot made in the root file system (empty files and directories).
unbind_leftovers() {
  local rootfs="$1"
  rm -f "$rootfs/etc/pip.conf"
  rmdir "$rootfs/opt/wheels" "$rootfs/opt/pypi" "$rootfs/opt/pypi-more" 2>/dev/null || true
}

# ROOTFS -> LAYER.tar (+ LAYER.tar.sha256): uncompressed (2 CPUs: gzip would cost minutes),
# real modification times (a .pyc records its source's: with mtimes zeroed, Python would
# recompile every module at every start, on a read-only root),
# numeric owners, what only a running system fills left out.
make_layer() {
  local rootfs="$1" out="$2"
  tar --numeric-owner --sort=name -C "$rootfs" -cf "$out.tmp" \
    --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* --exclude=./tmp/* --exclude=./run/* \
    --exclude=./var/cache/apt/* --exclude=./var/lib/apt/lists/* --exclude=./var/log/* .
  sha256sum "$out.tmp" | cut -d' ' -f1 >"$out.sha256"
  mv "$out.tmp" "$out"
}

build_base() {  # DIR: debootstrap + the dependencies; DIR/rootfs stays for the top layer's builds
  local dir="$1" work="$1.tmp"
  rm -rf "$work" && mkdir -p "$work" "$CACHE/debs"
  log "image: debootstrap bookworm (about 3 min)"
  # In a private mount namespace: debootstrap mounts /proc and /sys in the target and leaves
  # them behind when it fails.
  unshare --mount --propagation private -- debootstrap --variant=minbase --include="$PACKAGES" \
    --cache-dir="$CACHE/debs" bookworm "$work/rootfs" "$(mirror)" >"$work/debootstrap.log" 2>&1 \
    || die "debootstrap failed: $work/debootstrap.log"
  local deps
  deps="$(python3 -c 'import sys, tomllib; print(" ".join(repr(d) for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$REPO/pyproject.toml")"
  cp "$REPO/constraints.txt" "$work/rootfs/tmp.constraints.txt"
  log "image: pip install the dependencies (-c constraints.txt; a few minutes)"
  # The ray user of the Ray images (uid 1000, group users/100) owns the Python environment.
  # Debian's /etc/profile resets PATH for login shells (KubeRay starts Ray with bash -l):
  # profile.d puts the venv back in front.
  in_chroot "$work/rootfs" "
    useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray
    echo 'export PATH=$VENV/bin:\$PATH' >/etc/profile.d/ganops-venv.sh
    python3 -m venv $VENV
    $VENV/bin/pip install -q -c /tmp.constraints.txt 'setuptools>=68' wheel $deps
    $VENV/bin/python -c 'import ray, torch; print(\"ray\", ray.__version__, \"torch\", torch.__version__)'
    rm -f /tmp.constraints.txt
    chown -R 1000:100 /home/ray
    apt-get clean
  " >"$work/pip.log" 2>&1 || die "pip install in the image failed: $work/pip.log"
  unbind_leftovers "$work/rootfs"
  log "image: base layer tarball"
  make_layer "$work/rootfs" "$work/layer.tar"
  rm -rf "$dir" && mv "$work" "$dir"
}

build_top() {  # BASE_DIR DIR: ganops itself, installed against the base's venv into DIR/layer
  local base="$1" dir="$2" work="$2.tmp"
  rm -rf "$work" && mkdir -p "$work/layer" "$work/src"
  cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/constraints.txt" "$REPO/ganops" "$work/src/"
  find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
  log "image: pip install --no-deps . (the top layer)"
  # The base rootfs is the cache itself: it is mounted read-only at / of an overlay whose
  # upper layer is thrown away, and pip writes only under --root (the layer).
  # shellcheck disable=SC2016
  unshare --mount --propagation private -- bash -euo pipefail -c '
    base="$1" work="$2" venv="$3"
    mkdir -p "$work/upper" "$work/ovl" "$work/merged"
    mount -t overlay overlay -o "lowerdir=$base/rootfs,upperdir=$work/upper,workdir=$work/ovl" "$work/merged"
    mkdir -p "$work/merged/build/src" "$work/merged/build/layer"
    mount --bind "$work/src" "$work/merged/build/src"
    mount --bind "$work/layer" "$work/merged/build/layer"
    mount -t proc proc "$work/merged/proc"
    mount -t tmpfs tmpfs "$work/merged/tmp"
    cd / && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C.UTF-8 chroot "$work/merged" /bin/bash -euo pipefail -c "
      cd /build/src
      $venv/bin/pip install -q --no-deps --no-build-isolation --no-index --root /build/layer .
    "
  ' build_top "$base" "$work" "$VENV" >"$work/pip.log" 2>&1 || die "pip install . failed: $work/pip.log"
  rm -rf "$work/upper" "$work/ovl" "$work/merged"
  # Directories of the layer replace the base's: /home/ray must stay ray's.
  chown -R 1000:100 "$work/layer/home/ray"
  make_layer "$work/layer" "$work/layer.tar"
  rm -rf "$work/layer" "$work/src"
  rm -rf "$dir" && mv "$work" "$dir"
}

build_pause() {  # DIR: a sandbox ("pause") image of one file
  local dir="$1" work="$1.tmp"
  rm -rf "$work" && mkdir -p "$work/rootfs"
  cp /usr/bin/catatonit "$work/rootfs/catatonit"
  make_layer "$work/rootfs" "$work/layer.tar"
  rm -rf "$work/rootfs"
  rm -rf "$dir" && mv "$work" "$dir"
}

descriptor() {  # NAME OUT LAYER... (and the config from the environment of the caller)
  local name="$1" out="$2"
  shift 2
  python3 - "$name" "$out" "$@" <<'EOF'
import json, os, sys
name, out, *layers = sys.argv[1:]
cfg = json.loads(os.environ["IMAGE_CONFIG"])
json.dump({"name": name, "layers": layers, "config": cfg}, open(out, "w"), indent=1)
EOF
  echo "$out"
}

main() {
  mkdir -p "$CACHE/images"
  local base_key top_key
  base_key="$(base_layer_key)"
  top_key="$(top_layer_key "$base_key")"
  local base="$CACHE/base-$base_key" top="$CACHE/top-$top_key" pause="$CACHE/pause"
  [[ -f "$base/layer.tar" ]] || build_base "$base"
  [[ -f "$top/layer.tar" ]] || build_top "$base" "$top"
  [[ -f "$pause/layer.tar" ]] || build_pause "$pause"
  # Older layers of the same kind: a cache of one of each.
  find "$CACHE" -maxdepth 1 \( -name 'base-*' ! -name "base-$base_key" -o -name 'top-*' ! -name "top-$top_key" \) \
    -exec rm -rf {} +
  local cfg env_json
  env_json="$(printf '%s\n' "${IMAGE_ENV[@]}" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split("\n")[:-1]))')"
  # Numeric user, as the Dockerfile: Kubernetes checks runAsNonRoot against it.
  cfg="{\"User\": \"1000:100\", \"WorkingDir\": \"/home/ray\", \"Env\": $env_json, \"Cmd\": [\"ganops\", \"--help\"]}"
  IMAGE_CONFIG="$cfg" descriptor "docker.io/library/ganops:$VERSION" "$CACHE/images/ganops.json" \
    "$base/layer.tar" "$top/layer.tar"
  cfg='{"Entrypoint": ["/catatonit", "-P"], "Env": ["PATH=/"]}'
  IMAGE_CONFIG="$cfg" descriptor "docker.io/ganops-local/pause:catatonit" "$CACHE/images/pause.json" \
    "$pause/layer.tar"
}

main "$@"
