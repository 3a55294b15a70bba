"""A real Kubernetes API server for tests: etcd + kube-apiserver on 127.0.0.1.

The binaries come from ``../shared/k8s-envtest/build.sh`` (v1.20.2; no pods run, since
there is no scheduler or kubelet). Identities are static bearer tokens: ``admin``
(system:masters) for set-up, and one token per ServiceAccount a test acts as, so RBAC is
enforced exactly as for that ServiceAccount in a cluster.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import REPO, free_port

BUILD = REPO.parent / "shared" / "k8s-envtest" / "build.sh"
KUBERAY_CRDS = REPO.parent / "shared" / "kuberay" / "crds"

# ServiceAccounts the tests may act as: (namespace, name).
SERVICE_ACCOUNTS = [("ganops", "ganops-operator"), ("team-a", "ganops-operator"), ("team-b", "ganops-operator")]


def sa_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def sa_token(namespace: str, name: str) -> str:
    return f"sa-{namespace}-{name}-token"


ADMIN_TOKEN = "ganops-envtest-admin-token"
USER_TOKEN = "ganops-envtest-user-token"  # a plain user ("alice"), for CLI tests
USER = "alice"


def binaries() -> Path:
    """Build (≈5 min the first time, then cached) and return the directory with the binaries."""
    env_dir = os.environ.get("KUBEBUILDER_ASSETS")
    if env_dir and (Path(env_dir) / "kube-apiserver").exists():
        return Path(env_dir)
    out = subprocess.run(["bash", str(BUILD)], check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


@dataclass
class KubeAPI:
    """A running API server and how to reach it as each identity."""

    url: str
    home: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def kubeconfig(self, token: str = ADMIN_TOKEN, namespace: str = "default", name: str = "admin") -> Path:
        """A kubeconfig file for ``token`` (the CLI and kopf read it like any other)."""
        path = self.home / f"kubeconfig-{name}-{namespace}"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "envtest", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "envtest", "user": name, "namespace": namespace}}],
            "current-context": name,
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    def api_client(self, token: str = ADMIN_TOKEN) -> Any:
        import urllib3
        from kubernetes import client

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the test server's own cert
        cfg = client.Configuration()
        cfg.host = self.url
        cfg.verify_ssl = False
        cfg.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(cfg)

    def apply(self, docs: list[dict[str, Any]]) -> None:
        """Create (or replace) objects as admin; enough for CRDs, namespaces and RBAC."""
        from kubernetes import dynamic

        dyn = dynamic.DynamicClient(self.api_client())
        for doc in docs:
            res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            ns = doc["metadata"].get("namespace") if res.namespaced else None
            try:
                res.create(body=doc, namespace=ns)
            except Exception as e:
                if getattr(e, "status", None) != 409:
                    raise
                cur = res.get(name=doc["metadata"]["name"], namespace=ns)
                doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion": cur.metadata.resourceVersion}}
                res.replace(body=doc, namespace=ns)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    ctx = ssl._create_unverified_context()
    deadline = time.time() + timeout
    while True:
        try:
            req = urllib.request.Request(f"{url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"kube-apiserver did not become ready; see {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def start(home: Path | None = None) -> KubeAPI:
    bin_dir = binaries()
    home = Path(home or tempfile.mkdtemp(prefix="ganops-envtest-"))
    home.mkdir(parents=True, exist_ok=True)
    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    etcd_log = home / "etcd.log"
    etcd = subprocess.Popen(
        [str(bin_dir / "etcd"), "--data-dir", str(home / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
         "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
         "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
         "--unsafe-no-fsync"],
        stdout=open(etcd_log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    # Service-account signing keys (v1.20 requires an issuer and a signing key).
    key = home / "sa.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(home / "sa.pub")],
                   check=True, capture_output=True)  # fmt: skip
    rows = [f'{ADMIN_TOKEN},admin,admin,"system:masters"', f"{USER_TOKEN},{USER},{USER}"]
    for ns, name in SERVICE_ACCOUNTS:
        rows.append(
            f"{sa_token(ns, name)},{sa_user(ns, name)},{ns}-{name},"
            f'"system:serviceaccounts,system:serviceaccounts:{ns},system:authenticated"'
        )
    (home / "tokens.csv").write_text("\n".join(rows) + "\n")
    api_log = home / "kube-apiserver.log"
    api = subprocess.Popen(
        [str(bin_dir / "kube-apiserver"),
         f"--etcd-servers=http://127.0.0.1:{etcd_port}",
         f"--cert-dir={home / 'certs'}",
         "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
         "--service-cluster-ip-range=10.0.0.0/24",
         "--service-account-issuer=https://kubernetes.default.svc",
         f"--service-account-key-file={home / 'sa.pub'}",
         f"--service-account-signing-key-file={key}",
         f"--token-auth-file={home / 'tokens.csv'}",
         "--authorization-mode=RBAC",
         "--allow-privileged=true",
         "--disable-admission-plugins=ServiceAccount",
         # As in hardened clusters: owning a RayJob with blockOwnerDeletion needs the
         # right to update the owner's finalizers (the operator's RBAC must include it).
         "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
         "--enable-priority-and-fairness=false",
         "--v=1"],
        stdout=open(api_log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    kube = KubeAPI(url=f"https://127.0.0.1:{api_port}", home=home, procs=[etcd, api])
    try:
        _wait_ready(kube.url, api, api_log)
    except Exception:
        kube.stop()
        raise
    return kube


def permissive_rayjob_crd() -> dict[str, Any]:
    """KubeRay's RayJob CRD with its schema replaced by one that keeps every field.

    v1.20 rejects the real CRD (its schema has empty-string defaults); tests check the
    bodies the operator writes against the real schema separately (``rayjob_schema``).
    """
    from tests.kuberay.crds import permissive_crd

    return permissive_crd("RayJob")
