#!/usr/bin/env bash
# The cluster's certificates, keys and kubeconfigs, made with openssl under $STATE/pki
# (idempotent: what exists is kept). One CA signs the API server's serving certificate and a
# client certificate per component; the ServiceAccount tokens get a key pair of their own.
#
#   cluster/local/pki.sh      (up.sh runs it)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cert() {  # NAME CN [O] [EXTENSIONS]: NAME.key + NAME.crt signed by the CA
  local name="$1" cn="$2" org="${3:-}" ext="${4:-extendedKeyUsage=clientAuth}"
  [[ -f "$PKI/$name.crt" ]] && return 0
  local subj="/CN=$cn"
  [[ -n "$org" ]] && subj="$subj/O=$org"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -out "$PKI/$name.crt" -extfile <(printf 'keyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$ext") \
    2>/dev/null
  rm -f "$PKI/$name.csr"
}

kubeconfig() {  # NAME SERVER CERT: $PKI/NAME.kubeconfig, everything embedded
  local name="$1" server="$2" crt="$3"
  [[ -f "$PKI/$name.kubeconfig" ]] && return 0
  cat >"$PKI/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: ganops-local
    cluster:
      server: $server
      certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
  - name: $crt
    user:
      client-certificate-data: $(base64 -w0 "$PKI/$crt.crt")
      client-key-data: $(base64 -w0 "$PKI/$crt.key")
contexts:
  - name: ganops-local
    context:
      cluster: ganops-local
      user: $crt
      namespace: $NAMESPACE
current-context: ganops-local
EOF
  chmod 600 "$PKI/$name.kubeconfig"
}

main() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [[ ! -f "$PKI/ca.crt" ]]; then
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=ganops-local-ca" -days 3650 -out "$PKI/ca.crt"
  fi
  # Reached as 127.0.0.1 (the host's forwarder, and inside the namespace), as the node IP, and
  # as the `kubernetes` Service (its ClusterIP and names) from pods.
  local sans="IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes"
  sans="$sans,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver kube-apiserver "" "extendedKeyUsage=serverAuth
subjectAltName=$sans"
  cert admin ganops-local-admin system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  # The Node authorizer knows a kubelet by this name and group.
  cert kubelet "system:node:$NODE_NAME" system:nodes
  cert kube-proxy system:kube-proxy
  # The API server's identity towards the kubelet (logs, exec): the kubelet authorizes every
  # client its CA signed (the kubelet is reachable only inside the namespace).
  cert apiserver-kubelet-client kube-apiserver-kubelet-client
  [[ -f "$PKI/sa.key" ]] || openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  [[ -f "$PKI/sa.pub" ]] || openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

  local inside="https://$NODE_IP:$API_PORT"
  kubeconfig admin "$inside" admin
  kubeconfig controller-manager "$inside" controller-manager
  kubeconfig scheduler "$inside" scheduler
  kubeconfig kubelet "$inside" kubelet
  kubeconfig kube-proxy "$inside" kube-proxy
  # The one for the host: through the forwarder.
  kubeconfig host "https://127.0.0.1:$API_PORT" admin
}

main "$@"
