#!/usr/bin/env bash
# A local ganops cluster in one command: kind + KubeRay + MinIO + MLflow + the ganops operator.
#
#   cluster/bootstrap.sh            # CPU image (small; what a laptop runs)
#   cluster/bootstrap.sh --gpu      # the GPU image (Ray GPU base, CUDA torch); see cluster/GPU.md
#
# Needs docker (a running engine), kind, kubectl and helm, and the internet (images, charts).
# Safe to run again: every step keeps what is already there (the cluster, the credentials)
# and upgrades the rest. Settings (environment):
#   GANOPS_CLUSTER    kind cluster name                     [ganops]
#   GANOPS_NAMESPACE  namespace of ganops, MinIO, MLflow    [ganops]
#   GANOPS_IMAGE      image to build and load               [ganops:dev]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${GANOPS_CLUSTER:-ganops}"
NAMESPACE="${GANOPS_NAMESPACE:-ganops}"
IMAGE="${GANOPS_IMAGE:-ganops:dev}"
SECRET="ganops-credentials"
KUBERAY_NAMESPACE="kuberay-system"
GPU=0

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf '\n==> %s\n' "$*"; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpu) GPU=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

# --- prerequisites --------------------------------------------------------------------------
missing=()
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  die "missing: ${missing[*]}. Install them first:
  docker   https://docs.docker.com/get-docker/
  kind     https://kind.sigs.k8s.io/docs/user/quick-start/#installation
  kubectl  https://kubernetes.io/docs/tasks/tools/
  helm     https://helm.sh/docs/intro/install/"
fi
docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer (is Docker running?)"

# Versions come from the repository, so that the cluster runs what the tests check.
RAY_VERSION="$(sed -n 's/^ray==\([0-9.]*\).*/\1/p' "$REPO/constraints.txt")"
# The KubeRay chart version is the ganops chart's annotation ganops.io/kuberay-version.
KUBERAY_VERSION="$(sed -n 's/^ *ganops\.io\/kuberay-version: *"\{0,1\}\([0-9.]*\)"\{0,1\}.*/\1/p' "$REPO/helm/ganops/Chart.yaml")"
[[ -n "$RAY_VERSION" ]] || die "no ray==VERSION pin in constraints.txt"
[[ -n "$KUBERAY_VERSION" ]] || die "no ganops.io/kuberay-version annotation in helm/ganops/Chart.yaml"
CONTEXT="kind-$CLUSTER"
KUBECTL=(kubectl --context "$CONTEXT")
HELM=(helm --kube-context "$CONTEXT")

# --- the cluster ----------------------------------------------------------------------------
# (Not `kind get clusters | grep -q`: with pipefail, grep quitting early can fail the pipe.)
clusters="$(kind get clusters 2>/dev/null || true)"
if grep -qx "$CLUSTER" <<<"$clusters"; then
  log "kind cluster '$CLUSTER' exists; using it"
else
  log "creating kind cluster '$CLUSTER' (cluster/kind.yaml)"
  kind create cluster --name "$CLUSTER" --config "$REPO/cluster/kind.yaml" --wait 180s
fi

# --- KubeRay --------------------------------------------------------------------------------
log "installing the KubeRay operator $KUBERAY_VERSION (namespace $KUBERAY_NAMESPACE)"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
"${HELM[@]}" upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace "$KUBERAY_NAMESPACE" --create-namespace --wait --timeout 10m

# --- the image ------------------------------------------------------------------------------
if [[ $GPU -eq 1 ]]; then
  build_args=(--build-arg "RAY_IMAGE=rayproject/ray:${RAY_VERSION}-py311-gpu"
              --build-arg "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128")
else
  build_args=(--build-arg "RAY_IMAGE=rayproject/ray:${RAY_VERSION}-py311-cpu"
              --build-arg "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
fi
log "building $IMAGE (cluster/Dockerfile, Ray $RAY_VERSION, $([[ $GPU -eq 1 ]] && echo GPU || echo CPU))"
docker build -f "$REPO/cluster/Dockerfile" -t "$IMAGE" "${build_args[@]}" "$REPO"
log "loading $IMAGE onto the kind nodes"
kind load docker-image "$IMAGE" --name "$CLUSTER"

# --- namespace and credentials --------------------------------------------------------------
log "namespace $NAMESPACE and Secret $SECRET"
"${KUBECTL[@]}" create namespace "$NAMESPACE" --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f - >/dev/null
if "${KUBECTL[@]}" -n "$NAMESPACE" get secret "$SECRET" >/dev/null 2>&1; then
  echo "Secret $SECRET exists; keeping its keys (MinIO's data is tied to them)"
else
  # Random S3 keys for the bundled MinIO, handed to kubectl on stdin (printf is a shell
  # builtin: the keys never appear in a process list, a file or this script's output).
  key_id="ganops$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  key="$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')"
  printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\ntype: Opaque\nstringData:\n  AWS_ACCESS_KEY_ID: "%s"\n  AWS_SECRET_ACCESS_KEY: "%s"\n' \
    "$SECRET" "$NAMESPACE" "$key_id" "$key" | "${KUBECTL[@]}" apply -f - >/dev/null
  unset key_id key
  echo "created Secret $SECRET with random S3 keys"
fi

# --- ganops ---------------------------------------------------------------------------------
log "installing ganops (helm/ganops, cluster/kind-values.yaml)"
# Helm installs crds/ only on the first install and never upgrades them; apply them always.
"${KUBECTL[@]}" apply --server-side -f "$REPO/helm/ganops/crds/" >/dev/null
"${HELM[@]}" upgrade --install ganops "$REPO/helm/ganops" --namespace "$NAMESPACE" \
  -f "$REPO/cluster/kind-values.yaml" \
  --set "image.repository=${IMAGE%:*}" --set "image.tag=${IMAGE##*:}" \
  --set "credentials.secretName=$SECRET" \
  --wait --timeout 15m
"${KUBECTL[@]}" -n "$NAMESPACE" rollout status deployment/ganops-operator --timeout 5m

cat <<EOF

ganops is running on kind cluster '$CLUSTER' (kubectl context $CONTEXT), namespace $NAMESPACE:
KubeRay $KUBERAY_VERSION, MinIO (buckets ganops, mlflow), MLflow, the ganops operator.

Submit the MNIST DCGAN job (it downloads MNIST inside the cluster; checkpoints, sample grids
and the GIF go to MinIO, metrics to MLflow):
  kubectl config use-context $CONTEXT
  ganops submit jobs/mnist_dcgan.yaml --target k8s -n $NAMESPACE \\
    --set spec.storage=s3://ganops/runs --set spec.train.epochs=3
  ganops status mnist-dcgan --target k8s -n $NAMESPACE
  ganops logs mnist-dcgan --target k8s -n $NAMESPACE -f
  kubectl -n $NAMESPACE get ganjobs,rayjobs,pods

MLflow UI:      kubectl --context $CONTEXT -n $NAMESPACE port-forward svc/ganops-mlflow 5000   -> http://localhost:5000
MinIO console:  kubectl --context $CONTEXT -n $NAMESPACE port-forward svc/ganops-minio 9001    -> http://localhost:9001
  (user/password: kubectl --context $CONTEXT -n $NAMESPACE get secret $SECRET -o jsonpath='{.data.AWS_ACCESS_KEY_ID}' | base64 -d; likewise AWS_SECRET_ACCESS_KEY)
Remove it all:  kind delete cluster --name $CLUSTER
EOF
