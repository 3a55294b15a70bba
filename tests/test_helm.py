"""The Helm chart (helm/ganops): rendered with every example values file by Helm itself (the
helm-python-sdk wheel), linted strictly, validated against the Kubernetes 1.28-1.33 schemas,
installed server-side (dry run) on a real API server, and its RBAC checked there as the
operator's own ServiceAccount."""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from ganops.k8s import rbac
from tests import helm

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

KUBE_VERSIONS = ["1.28", "1.29", "1.30", "1.31", "1.32", "1.33"]
BOOTSTRAP_VALUES = helm.REPO / "cluster" / "kind-values.yaml"
ALL_VALUES = [*helm.VALUES_FILES, BOOTSTRAP_VALUES]
SELF_CONTAINED = {"minio": {"enabled": True}, "mlflow": {"enabled": True}, "credentials": {"generate": True}}

# The operator's rights are declared with the operator (ganops/k8s/rbac.py, which its tests
# run under on a real API server); the chart must grant exactly those.
NAMESPACED_RULES = set(rbac.NAMESPACED)
CLUSTER_RULES = set(rbac.CLUSTER_WIDE)


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


def _checkout_files() -> list[Path]:
    """The chart's files as a fresh clone has them: those git tracks plus new ones it does not
    ignore (so the test means the same before and after they are committed), less ones deleted
    here. Not what a developer fetched or built into the directory (e.g. charts/*.tgz)."""
    git = shutil.which("git")
    inside = git and subprocess.run([git, "rev-parse", "--is-inside-work-tree"], cwd=helm.REPO,
                                    capture_output=True, check=False)  # fmt: skip
    if not git or not inside or inside.returncode != 0:
        pytest.skip("needs a git checkout (the chart as a fresh clone has it)")
    out = subprocess.run([git, "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "helm/ganops"],
                         cwd=helm.REPO, capture_output=True, check=True, text=True).stdout  # fmt: skip
    return [helm.REPO / f for f in sorted(set(out.split("\0"))) if f and (helm.REPO / f).is_file()]


@pytest.fixture(scope="module")
def checkout_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart directory with exactly the files of a fresh clone (``_checkout_files``)."""
    dst = tmp_path_factory.mktemp("checkout") / "ganops"
    for src in _checkout_files():
        target = dst / src.relative_to(helm.CHART)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dst


def _closed_port() -> int:
    with socket.socket() as s:  # a port the kernel just handed out and nobody listens on
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _offline(tmp: Path) -> tuple[list[str], dict[str, str]]:
    """A command prefix and an environment in which Helm reaches no network, as on an air-gapped
    machine: every proxy variable points at a closed port (Go's HTTP client obeys them), Helm's
    repositories, caches and kubeconfig are empty, and where the kernel allows it (user
    namespaces) the process gets a network namespace of its own with no interfaces up. In a
    child process: Go reads the environment once, when the Helm library loads."""
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = {
        k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith(("HELM_", "KUBECONFIG"))
    }
    env.update({k: proxy for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")})
    for name in ("home", "config", "cache", "data"):
        (tmp / name).mkdir(parents=True)
    env.update(HOME=str(tmp / "home"), HELM_CONFIG_HOME=str(tmp / "config"), HELM_CACHE_HOME=str(tmp / "cache"),
               HELM_DATA_HOME=str(tmp / "data"), HELM_REPOSITORY_CONFIG=str(tmp / "config" / "repositories.yaml"),
               HELM_REPOSITORY_CACHE=str(tmp / "cache" / "repository"), KUBECONFIG=str(tmp / "no-kubeconfig"))  # fmt: skip
    unshare = shutil.which("unshare")
    prefix = [unshare, "--net", "--map-root-user"] if unshare else []
    if prefix and subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode != 0:
        prefix = []  # no user namespaces here (e.g. in some containers): the proxies alone
    return prefix, env


# What the offline child runs: `helm lint --strict` and `helm install --dry-run` from the chart
# directory per values set, then `helm pull` of KubeRay's chart, which must fail (or the sandbox leaks).
_OFFLINE_CHECKS = """
import json, sys
from pathlib import Path
import helm_python
from tests import helm
chart, cases, pulled = Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
out = {"lint": {}, "install": {}}
for name, values in cases.items():
    out["lint"][name] = {kube: helm.lint(chart, values, kube_version=kube) for kube in ("v1.28.0", "v1.33.0")}
    try:
        out["install"][name] = sorted(d["kind"] + "/" + d["metadata"]["name"] for d in helm.install_dry_run(chart, values))
    except helm_python.HelmError as e:
        out["install"][name] = "install failed: " + str(e)
try:
    helm_python.pull("kuberay-operator", version="1.5.1", repo_url="https://ray-project.github.io/kuberay-helm/",
                     destination=pulled)
    out["fetch"] = "fetched"
except helm_python.HelmError as e:
    out["fetch"] = str(e)
print(json.dumps(out))
"""


# --- Helm: render and lint -------------------------------------------------------------------


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=_ids(ALL_VALUES))
def test_every_values_file_lints_strictly(values_file: Path) -> None:
    values = yaml.safe_load(values_file.read_text()) or {}
    for kube in ("v1.28.0", "v1.33.0"):
        assert helm.lint(helm.CHART, values, kube_version=kube) == [], kube


def test_a_plain_checkout_lints_strictly_and_installs_with_no_network(checkout_chart: Path, tmp_path: Path) -> None:
    """Air-gapped GPU clusters: a fresh clone's chart directory, with nothing fetched, passes
    `helm lint --strict` and `helm install --dry-run` (which check that every declared
    dependency is in charts/) with every values file, offline, and installs what it renders."""
    cases = {"defaults": {}, **{p.name: yaml.safe_load(p.read_text()) or {} for p in ALL_VALUES}}
    prefix, env = _offline(tmp_path / "env")
    out = subprocess.run([*prefix, sys.executable, "-c", _OFFLINE_CHECKS, str(checkout_chart), json.dumps(cases), str(tmp_path)],
                         cwd=helm.REPO, env=env, capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    # The sandbox holds: Helm's own fetch met the closed proxy or a network namespace with none.
    assert "proxyconnect" in report["fetch"] or "network is unreachable" in report["fetch"], report["fetch"]
    lint_problems = {name: lints for name, lints in report["lint"].items() if any(lints.values())}
    install_failures = {name: got for name, got in report["install"].items() if isinstance(got, str)}
    assert (lint_problems, install_failures) == ({}, {})
    for name, values in cases.items():
        rendered = [
            f"{d['kind']}/{d['metadata']['name']}"
            for d in helm.render(values, include_crds=False)
            if not helm.is_hook(d)
        ]
        assert report["install"][name] == sorted(rendered), name


def test_lint_catches_a_broken_template(checkout_chart: Path, tmp_path: Path) -> None:
    broken = tmp_path / "ganops"
    shutil.copytree(checkout_chart, broken)
    template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Values.nope.name }}\n"
    (broken / "templates" / "broken.yaml").write_text(template)
    problems = helm.lint(broken)
    assert any("nil pointer" in e or "nope" in e for e in problems), problems


@functools.cache
def _k8s_validator(version: str, kind: str, api_version: str) -> Any:
    """What `kubernetes_validate.validate(doc, version, strict=True)` checks against (the
    `-local-strict` schemas it ships), built once per kind: the library re-reads a 1 MB
    definitions file on every call, which made this test ten times slower."""
    import jsonschema
    import referencing
    from kubernetes_validate import utils

    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # rbac.authorization.k8s.io/v1 -> rbac-v1
    folder = f"kubernetes-json-schema/v{version}.0-local-strict"
    schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", version)
    defs = utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = referencing.Resource.from_contents(defs) @ (
        referencing.Resource.from_contents(schema) @ referencing.Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _k8s_errors(doc: dict[str, Any], version: str) -> list[str]:
    v = _k8s_validator(version, doc["kind"], doc["apiVersion"])
    return [f"{e.message} at {'.'.join(map(str, e.path))}" for e in v.iter_errors(doc)]


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=_ids(ALL_VALUES))
def test_rendered_objects_are_valid_kubernetes_1_28_to_1_33(values_file: Path) -> None:
    docs = helm.render_file(values_file, include_crds=False)  # the CRDs: their own test below
    assert docs
    errors = [
        f"{d['kind']}/{d['metadata']['name']} on {v}: {e}"
        for d in docs
        for v in KUBE_VERSIONS
        for e in _k8s_errors(d, v)
    ]
    assert not errors, "\n".join(errors)


def test_cached_validation_agrees_with_kubernetes_validate() -> None:
    import kubernetes_validate

    good = helm.operator_deployment(helm.render())
    bad = json.loads(json.dumps(good))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["prot"] = 8080
    for version in ("1.28", "1.33"):
        assert _k8s_errors(good, version) == [] and kubernetes_validate.validate(good, version, strict=True)
        assert _k8s_errors(bad, version)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)


def test_crds_are_valid_kubernetes_1_28_to_1_33() -> None:
    crds = helm.crds()
    if not crds:
        pytest.skip("helm/ganops/crds/ not generated yet (`ganops operator crd --out-dir helm/ganops/crds`)")
    errors = [f"{c['metadata']['name']} on {v}: {e}" for c in crds for v in KUBE_VERSIONS for e in _k8s_errors(c, v)]
    assert not errors, "\n".join(errors)


def test_crds_are_the_operators_and_are_installed_before_everything_else() -> None:
    crds = helm.crds()
    if not crds:
        pytest.skip("helm/ganops/crds/ not generated yet (`ganops operator crd --out-dir helm/ganops/crds`)")
    kinds = {c["spec"]["names"]["kind"]: c for c in crds}
    assert set(kinds) == {"GANJob", "GANGeneration"}
    for kind, plural in (("GANJob", "ganjobs"), ("GANGeneration", "gangenerations")):
        crd = kinds[kind]
        assert crd["spec"]["group"] == "ganops.io" and crd["spec"]["names"]["plural"] == plural
        assert [v["name"] for v in crd["spec"]["versions"] if v.get("served")] == ["v1alpha1"]
    docs = helm.render()
    assert [helm.is_crd(d) for d in docs[: len(crds)]] == [True] * len(crds)


# --- the operator Deployment -----------------------------------------------------------------


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=_ids(ALL_VALUES))
def test_every_pod_meets_the_restricted_pod_security_standard(values_file: Path) -> None:
    for name, pod in _pods(helm.render_file(values_file)):
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, name
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), name
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert {"requests", "limits"} <= set(c["resources"]), name
            writable = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in writable, f"{name}: a read-only root needs a writable /tmp"
        assert all("hostPath" not in v for v in pod.get("volumes", [])), name


def test_operator_runs_once_with_probes_on_kopfs_liveness_endpoint() -> None:
    docs = helm.render()
    dep = helm.operator_deployment(docs)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    c = helm.operator_container(docs)
    assert c["command"] == ["ganops", "operator", "run"]
    liveness = c["args"][c["args"].index("--liveness") + 1]
    assert liveness == "http://0.0.0.0:8080/healthz"
    (port,) = c["ports"]
    assert (port["name"], port["containerPort"]) == ("health", 8080)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    (tmp,) = pod["volumes"]
    assert "emptyDir" in tmp
    assert pod["serviceAccountName"] == "ganops-operator"
    assert helm.find(docs, "ServiceAccount", "ganops-operator", "ganops")


def test_operator_watches_the_release_namespace_by_default_and_the_listed_ones_when_set() -> None:
    args = helm.operator_container(helm.render(namespace="ml"))["args"]
    assert args[2:] == ["--namespace", "ml"]
    args = helm.operator_container(helm.render({"watchNamespaces": ["team-a", "team-b"]}))["args"]
    assert args[2:] == ["--namespace", "team-a", "--namespace", "team-b"]
    args = helm.operator_container(helm.render({"rbac": {"clusterWide": True}, "watchNamespaces": ["x"]}))["args"]
    assert args[2:] == ["--all-namespaces"]


def test_operator_environment_carries_the_job_defaults_from_values() -> None:
    values = yaml.safe_load((helm.CHART / "ci" / "teams-gpu-values.yaml").read_text())
    env = helm.operator_env(helm.render(values))
    assert env["GANOPS_IMAGE"] == "registry.example.com/ml/ganops:0.1.0-cu128"
    assert env["GANOPS_SERVICE_ACCOUNT"] == "ganops-jobs"
    assert env["GANOPS_SECRET"] == "team-ml-credentials"
    assert (env["GANOPS_WORKER_CPU"], env["GANOPS_WORKER_MEMORY"]) == ("8", "48Gi")
    assert (env["GANOPS_HEAD_CPU"], env["GANOPS_HEAD_MEMORY"]) == ("2", "8Gi")
    assert env["GANOPS_GPU_RESOURCE"] == "nvidia.com/gpu"
    assert json.loads(env["GANOPS_NODE_SELECTOR"]) == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert json.loads(env["GANOPS_TOLERATIONS"]) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com"
    assert env["AWS_ENDPOINT_URL"] == "https://s3.eu-central-1.amazonaws.com"
    # Defaults: the operator's image trains too; no SA, MLflow or endpoint unless configured.
    env = helm.operator_env(helm.render())
    assert env["GANOPS_IMAGE"] == "ganops:0.1.0"
    assert json.loads(env["GANOPS_NODE_SELECTOR"]) == {} and json.loads(env["GANOPS_TOLERATIONS"]) == []
    assert not {"GANOPS_SERVICE_ACCOUNT", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"} & set(env)


# --- credentials -----------------------------------------------------------------------------


def _secret_like(name: str) -> bool:
    return bool(re.search(r"SECRET_ACCESS|PASSWORD|TOKEN|PRIVATE", name)) and name != "GANOPS_SECRET"


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=_ids(ALL_VALUES))
def test_credentials_reach_pods_only_from_secrets(values_file: Path) -> None:
    docs = helm.render_file(values_file)
    for name, pod in _pods(docs):
        for c in pod["containers"]:
            for e in c.get("env", []):
                if _secret_like(e["name"]) or e["name"].startswith("MINIO_ROOT"):
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{name}: {e['name']} is not from a Secret"
            assert all(
                "value" not in e or "secret" not in e["value"].lower()
                for e in c.get("env", [])
                if e["name"] != "GANOPS_SECRET"
            )
            assert "secret" not in " ".join(c.get("args", [])).lower(), name
    assert not [d for d in docs if d["kind"] == "ConfigMap"], "the chart keeps no configuration outside the Deployment"
    c = helm.operator_container(docs)
    secret = (
        (yaml.safe_load(values_file.read_text()) or {}).get("credentials", {}).get("secretName", "ganops-credentials")
    )
    if secret:
        assert c["envFrom"] == [{"secretRef": {"name": secret, "optional": True}}]
    else:
        assert "envFrom" not in c and "GANOPS_SECRET" not in helm.operator_env(docs)


def test_values_hold_no_credentials() -> None:
    """Only Secret names: no key in values.yaml (or any example) could hold a key or a password."""

    def keys(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict):
            return [k for key, v in node.items() for k in [f"{prefix}{key}", *keys(v, f"{prefix}{key}.")]]
        return []

    for path in [helm.CHART / "values.yaml", *ALL_VALUES]:
        for key in keys(yaml.safe_load(path.read_text()) or {}):
            leaf = key.rsplit(".", 1)[-1].lower()
            assert not re.search(r"password|secretkey|accesskey|token|rootuser", leaf), f"{path.name}: {key}"


def test_generated_credentials_are_one_pair_in_every_namespace_that_needs_them() -> None:
    import base64

    docs = helm.render({**SELF_CONTAINED, "watchNamespaces": ["team-a", "team-b"]})
    secrets = helm.find(docs, "Secret", "ganops-credentials")
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["ganops", "team-a", "team-b"]
    pairs = {(s["data"]["AWS_ACCESS_KEY_ID"], s["data"]["AWS_SECRET_ACCESS_KEY"]) for s in secrets}
    assert len(pairs) == 1
    key_id, key = (base64.b64decode(v).decode() for v in pairs.pop())
    assert len(key_id) >= 3 and len(key) >= 32  # MinIO: user >= 3, password >= 8 characters
    # Each install that has no Secret yet draws fresh keys (upgrades read the existing ones back).
    again = helm.find(helm.render(SELF_CONTAINED), "Secret", "ganops-credentials")[0]["data"]["AWS_SECRET_ACCESS_KEY"]
    assert base64.b64decode(again).decode() != key


# --- bundled MLflow and MinIO ------------------------------------------------------------------


def _service_url_host(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def test_bundled_mlflow_and_minio_are_wired_to_the_operator_and_each_other() -> None:
    docs = helm.render(SELF_CONTAINED)
    env = helm.operator_env(docs)
    mlflow_svc = helm.find(docs, "Service", "ganops-mlflow", "ganops")[0]
    minio_svc = helm.find(docs, "Service", "ganops-minio", "ganops")[0]
    assert env["MLFLOW_TRACKING_URI"] == f"http://ganops-mlflow.ganops.svc:{mlflow_svc['spec']['ports'][0]['port']}"
    assert env["AWS_ENDPOINT_URL"] == f"http://ganops-minio.ganops.svc:{minio_svc['spec']['ports'][0]['port']}"
    for svc in (mlflow_svc, minio_svc):
        (dep,) = [
            d
            for d in docs
            if d["kind"] == "Deployment"
            and all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
        ]
        ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports, svc["metadata"]["name"]

    (mlflow,) = helm.find(docs, "Deployment", "ganops-mlflow")[0]["spec"]["template"]["spec"]["containers"]
    cmd = mlflow["command"]
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://mlflow/artifacts"
    mlflow_env = {e["name"]: e.get("value") for e in mlflow["env"]}
    assert mlflow_env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    # MLflow refuses Host headers it does not know (DNS-rebinding protection, fnmatch patterns):
    # the address the operator and the jobs use, and a port-forward, must pass.
    allowed = mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for host in (_service_url_host(env["MLFLOW_TRACKING_URI"]), "ganops-mlflow:5000", "localhost:5000",
                 "ganops-mlflow.ganops.svc.cluster.local:5000"):  # fmt: skip
        assert any(fnmatch.fnmatch(host, p) for p in allowed), host
    assert not any(fnmatch.fnmatch("evil.example.com", p) for p in allowed)

    (minio,) = helm.find(docs, "Deployment", "ganops-minio")[0]["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in minio["env"] if "valueFrom" in e}
    assert refs["MINIO_ROOT_USER"] == {"name": "ganops-credentials", "key": "AWS_ACCESS_KEY_ID"}
    assert refs["MINIO_ROOT_PASSWORD"] == {"name": "ganops-credentials", "key": "AWS_SECRET_ACCESS_KEY"}

    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert helm.is_hook(job) and docs[-1] is job
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"][-2:] == ["ganops", "mlflow"]
    assert {e["name"]: e.get("value") for e in c["env"]}["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    compile(c["command"][2], "buckets", "exec")  # the inline script is valid Python


@pytest.mark.slow  # the S3 server
def test_bucket_script_creates_missing_buckets_on_a_real_s3(s3_server: str) -> None:
    """The hook Job's script, run here against the session's S3 server (moto) instead of MinIO."""
    import subprocess
    import sys

    import boto3

    (job,) = [d for d in helm.render(SELF_CONTAINED) if d["kind"] == "Job"]
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    names = [f"b-{uuid.uuid4().hex[:10]}", f"b-{uuid.uuid4().hex[:10]}"]
    boto3.client("s3").create_bucket(Bucket=names[0])  # one exists already: left alone
    out = subprocess.run(
        [sys.executable, "-c", script, *names], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    have = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
    assert set(names) <= have


def test_mlflow_without_minio_keeps_artifacts_on_its_volume() -> None:
    docs = helm.render({"mlflow": {"enabled": True}})
    (c,) = helm.find(docs, "Deployment", "ganops-mlflow")[0]["spec"]["template"]["spec"]["containers"]
    assert c["command"][c["command"].index("--artifacts-destination") + 1] == "/mlflow/artifacts"
    assert "MLFLOW_S3_ENDPOINT_URL" not in {e["name"] for e in c["env"]}
    assert helm.find(docs, "PersistentVolumeClaim", "ganops-mlflow")
    assert not helm.find(docs, "Deployment", "ganops-minio")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"credentials": {"generate": True}}, "credentials.generate: generates S3 keys for the bundled MinIO only"),
        (
            {"minio": {"enabled": True}, "credentials": {"secretName": ""}},
            "minio.enabled: the bundled MinIO takes its root user",
        ),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name: required"),
        (
            {"kuberay-operator": {"enabled": True}},
            "no longer installs KubeRay; install the kuberay-operator chart on its own first",
        ),
        (
            {"kuberay-operator": {"enabled": False}},
            "no longer installs KubeRay; install the kuberay-operator chart on its own first",
        ),
        ({"watchNamespaces": "team-a"}, "watchNamespaces"),
    ],
)
def test_bad_values_fail_the_install_naming_the_value(values: dict[str, Any], message: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmError) as err:
        helm.render(values)
    assert message in str(err.value)


# --- KubeRay: installed with its own chart ---------------------------------------------------


def test_kuberay_is_no_dependency_and_one_version_is_installed_everywhere() -> None:
    """KubeRay's chart is installed on its own (a dependency, even a disabled one, breaks a
    plain checkout offline); the README, NOTES and cluster/bootstrap.sh all install the
    version the chart names."""
    chart = yaml.safe_load((helm.CHART / "Chart.yaml").read_text())
    assert "dependencies" not in chart and "kuberay-operator" not in yaml.safe_load(
        (helm.CHART / "values.yaml").read_text()
    )
    version = chart["annotations"]["ganops.io/kuberay-version"]
    assert re.fullmatch(r"1\.\d+\.\d+", version), version
    command = f"helm upgrade --install kuberay-operator kuberay/kuberay-operator --version {version}"
    readme = (helm.CHART / "README.md").read_text().replace("\\\n ", "")
    assert readme.count(command) == 2 and f"helm pull kuberay/kuberay-operator --version {version}" in readme
    assert (
        command in helm.notes() and "helm repo add kuberay https://ray-project.github.io/kuberay-helm/" in helm.notes()
    )
    # bootstrap.sh reads the version with sed; run its line on the chart.
    bootstrap = (helm.REPO / "cluster" / "bootstrap.sh").read_text()
    (line,) = [ln for ln in bootstrap.splitlines() if ln.startswith("KUBERAY_VERSION=")]
    got = subprocess.run(["bash", "-c", f'{line}\necho "$KUBERAY_VERSION"'], env={**os.environ, "REPO": str(helm.REPO)},
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert got == version
    assert 'kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION"' in bootstrap
    assert "helm dependency" not in bootstrap
    # Helm installs whatever sits in charts/, declared or not: an old `helm dependency build`'s
    # kuberay-operator-*.tgz would now install KubeRay with ganops, unasked.
    assert not list(helm.CHART.glob("charts/*")), "delete helm/ganops/charts/ (left by an old `helm dependency build`)"


# --- values documentation and NOTES ------------------------------------------------------------


def test_every_value_is_documented_with_a_helm_docs_comment() -> None:
    """Each value of values.yaml has a `# --` comment right above it, or sits inside a section
    documented as a whole (e.g. operator.resources.requests.cpu)."""
    lines = (helm.CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented) of the open ancestors
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([\w.-]+):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        documented = j >= 0 and lines[j].strip().startswith("# --")
        path = ".".join([k for _, k, _ in stack] + [m.group(2)])
        nxt = next((ln for ln in lines[i + 1 :] if ln.strip() and not ln.strip().startswith("#")), "")
        is_section = not line.split(":", 1)[1].strip() and len(nxt) - len(nxt.lstrip()) > indent
        if not is_section and not documented and not any(d for _, _, d in stack):
            undocumented.append(path)
        stack.append((indent, m.group(2), documented))
    assert not undocumented


def test_values_named_in_the_issue_are_documented() -> None:
    text = (helm.CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    for path in ("image.repository", "watchNamespaces", "jobs.image", "jobs.gpuResource", "mlflow.trackingUri",
                 "s3.endpoint", "credentials.secretName", "rbac.clusterWide", "mlflow.enabled", "minio.enabled"):  # fmt: skip
        node = values
        for part in path.split("."):
            node = node[part]  # raises if missing
    readme = (helm.CHART / "README.md").read_text()
    for key in ("watchNamespaces", "jobs.gpuResource", "mlflow.trackingUri", "s3.endpoint", "credentials.secretName",
                "kuberay/kuberay-operator"):  # fmt: skip
        assert key in readme, key


def test_notes_show_how_to_submit_a_job_to_the_watched_namespace() -> None:
    text = helm.notes({"watchNamespaces": ["team-a"], **SELF_CONTAINED})
    assert "ganops submit jobs/mnist_dcgan.yaml --target k8s -n team-a --set spec.storage=s3://ganops/runs" in text
    assert "kubectl -n team-a apply -f jobs/mnist_dcgan.yaml" in text
    assert "port-forward svc/ganops-mlflow" in text
    text = helm.notes()
    assert "kubectl -n ganops create secret generic ganops-credentials" in text
    assert "kuberay-operator" in text


# --- RBAC --------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=_ids(ALL_VALUES))
def test_no_rbac_rule_uses_a_wildcard(values_file: Path) -> None:
    for d in helm.render_file(values_file):
        for rule in d.get("rules", []) if d["kind"] in ("Role", "ClusterRole") else []:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), (d["metadata"]["name"], rule)


def test_operator_rules_are_the_agreed_ones_in_each_mode() -> None:
    docs = helm.render({"watchNamespaces": ["team-a", "team-b"]})
    assert helm.rule_set(helm.operator_rules(docs)) == NAMESPACED_RULES
    roles = helm.find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for rb in helm.find(docs, "RoleBinding"):
        assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ganops-operator"}
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "ganops-operator", "namespace": "ganops"}]
    assert not [d for d in helm.rbac_docs(docs) if d["kind"].startswith("Cluster")]

    docs = helm.render({"rbac": {"clusterWide": True}}, namespace="ml")
    assert helm.rule_set(helm.operator_rules(docs)) == CLUSTER_RULES
    (crb,) = helm.find(docs, "ClusterRoleBinding")
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "ganops-operator", "namespace": "ml"}]
    assert not helm.find(docs, "Role") and not helm.find(docs, "RoleBinding")


def test_cluster_scoped_names_differ_between_releases_in_different_namespaces() -> None:
    names = [{d["metadata"]["name"] for d in helm.render({"rbac": {"clusterWide": True}}, namespace=ns) if d["kind"].startswith("Cluster")}
             for ns in ("a", "b")]  # fmt: skip
    assert names[0] and not names[0] & names[1]


def test_users_of_the_builtin_roles_get_ganjob_rights_by_aggregation() -> None:
    docs = helm.render()
    by_label = {}
    for d in helm.find(docs, "ClusterRole"):
        for label in ("aggregate-to-edit", "aggregate-to-view"):
            if d["metadata"]["labels"].get(f"rbac.authorization.k8s.io/{label}") == "true":
                by_label[label] = helm.rule_set(d["rules"])
    kinds = ("ganjobs", "gangenerations")
    assert {("ganops.io", k, v) for k in kinds for v in ("create", "delete", "patch", "list")} <= by_label[
        "aggregate-to-edit"
    ]
    assert by_label["aggregate-to-view"] == {("ganops.io", k, v) for k in (*kinds, "ganjobs/status", "gangenerations/status")
                                             for v in ("get", "list", "watch")}  # fmt: skip
    assert not [d for d in helm.render({"rbac": {"aggregateToDefaultRoles": False}}) if d["kind"] == "ClusterRole"]


# --- on a real API server ----------------------------------------------------------------------


def _namespace(kube_api: Any, name: str) -> None:
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])


@pytest.mark.slow
@pytest.mark.parametrize("values_file", ALL_VALUES, ids=_ids(ALL_VALUES))
def test_server_side_dry_run_install_is_accepted(values_file: Path, kube_api: Any) -> None:
    from kubernetes import dynamic

    docs = helm.render_file(values_file)
    crds = [d for d in docs if helm.is_crd(d)]
    kube_api.apply(crds)  # for real: custom kinds need their CRDs (Helm installs crds/ first too)
    for ns in helm.namespaces_of(docs):
        _namespace(kube_api, ns)
    dyn = dynamic.DynamicClient(kube_api.api_client())
    for doc in docs:
        if helm.is_crd(doc):
            continue
        res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        ns = doc["metadata"].get("namespace") if res.namespaced else None
        assert bool(ns) == res.namespaced, f"{doc['kind']}/{doc['metadata']['name']}: namespace {ns!r}"
        out = res.create(body=doc, namespace=ns, dry_run="All")
        # Admitted, defaulted and validated by the server (it assigned a uid), stored nowhere.
        assert out.metadata.name == doc["metadata"]["name"] and out.metadata.uid and not out.metadata.resourceVersion


@pytest.mark.slow
def test_server_rejects_what_the_chart_must_not_render(kube_api: Any) -> None:
    """The dry run is a real check: a broken object from the same render is refused."""
    from kubernetes import dynamic
    from kubernetes.dynamic.exceptions import (
        UnprocessibleEntityError,  # sic: the client's spelling
    )

    _namespace(kube_api, "ganops")
    dep = helm.operator_deployment(helm.render())
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 70000
    res = dynamic.DynamicClient(kube_api.api_client()).resources.get(api_version="apps/v1", kind="Deployment")
    with pytest.raises(UnprocessibleEntityError):
        res.create(body=dep, namespace="ganops", dry_run="All")


@pytest.mark.slow
def test_operator_service_account_can_do_exactly_the_rules_in_its_namespaces_only(kube_api: Any) -> None:
    """Namespaced mode, applied for real: the operator's ServiceAccount (team-a/ganops-operator)
    may do precisely the chart's rules in the watched namespace and nothing anywhere else."""
    from tests import kube

    watched = f"ganops-rbac-{uuid.uuid4().hex[:6]}"
    for ns in ("team-a", "team-b", watched):
        _namespace(kube_api, ns)
    token = kube.sa_token("team-a", "ganops-operator")
    docs = helm.render({"watchNamespaces": [watched]}, namespace="team-a")
    rules = helm.rule_set(helm.operator_rules(docs))
    assert helm.granted_rules(kube_api, token, watched) == set()
    with helm.applied(kube_api, helm.rbac_docs(docs)):
        assert helm.granted_rules(kube_api, token, watched) == rules == NAMESPACED_RULES
        for group, resource, verb in sorted(rules):
            assert helm.can(kube_api, token, verb, resource, watched, group), (group, resource, verb)
        for ns in ("team-a", "team-b", "default"):
            assert helm.granted_rules(kube_api, token, ns) == set(), ns
            assert not helm.can(kube_api, token, "list", "ganjobs", ns, "ganops.io"), ns
        for verb, resource, group in [("get", "secrets", ""), ("list", "secrets", ""), ("create", "ganjobs", "ganops.io"),
                                      ("delete", "ganjobs", "ganops.io"), ("update", "rayjobs", "ray.io"),
                                      ("create", "rayclusters", "ray.io"), ("list", "pods", ""), ("get", "configmaps", ""),
                                      ("create", "roles", "rbac.authorization.k8s.io"), ("delete", "events", "")]:  # fmt: skip
            assert not helm.can(kube_api, token, verb, resource, watched, group), (verb, resource)
        assert not helm.can(kube_api, token, "list", "namespaces")
        assert not helm.can(kube_api, token, "list", "customresourcedefinitions", group="apiextensions.k8s.io")
    assert helm.granted_rules(kube_api, token, watched) == set()  # and nothing is left behind


@pytest.mark.slow
def test_cluster_wide_operator_can_do_the_rules_in_every_namespace_and_no_more(kube_api: Any) -> None:
    from tests import kube

    other = f"ganops-rbac-{uuid.uuid4().hex[:6]}"
    for ns in ("team-b", other):
        _namespace(kube_api, ns)
    token = kube.sa_token("team-b", "ganops-operator")
    docs = helm.render({"rbac": {"clusterWide": True}}, namespace="team-b")
    with helm.applied(kube_api, helm.rbac_docs(docs)):
        for ns in (other, "default", "team-a"):
            assert helm.granted_rules(kube_api, token, ns) == CLUSTER_RULES, ns
            assert helm.can(kube_api, token, "watch", "ganjobs", ns, "ganops.io")
            assert helm.can(kube_api, token, "create", "rayjobs", ns, "ray.io")
            assert not helm.can(kube_api, token, "get", "secrets", ns)
        assert helm.can(kube_api, token, "watch", "ganjobs", None, "ganops.io")  # one watch over all namespaces
        assert helm.can(kube_api, token, "list", "namespaces")
        assert helm.can(kube_api, token, "watch", "customresourcedefinitions", group="apiextensions.k8s.io")
        assert not helm.can(kube_api, token, "create", "customresourcedefinitions", group="apiextensions.k8s.io")
        assert not helm.can(kube_api, token, "list", "nodes")
        assert not helm.can(kube_api, token, "create", "ganjobs", other, "ganops.io")
    assert helm.granted_rules(kube_api, token, other) == set()


def test_the_operators_own_job_defaults_are_the_charts() -> None:
    # An operator run outside the chart (`ganops operator run`) must size pods as the chart does.
    from ganops.k8s.render import Defaults

    jobs = yaml.safe_load((helm.CHART / "values.yaml").read_text())["jobs"]
    d = Defaults()
    assert (d.worker_cpu, d.worker_memory) == (str(jobs["worker"]["cpu"]), jobs["worker"]["memory"])
    assert (d.head_cpu, d.head_memory) == (str(jobs["head"]["cpu"]), jobs["head"]["memory"])
    assert d.gpu_resource == jobs["gpuResource"]
    assert d.backoff_limit == jobs["backoffLimit"] > 0  # a failed attempt is retried (and resumes)
