"""The operator on a real API server, under exactly the Helm chart's RBAC.

kube-apiserver v1.20 + etcd (tests/kube.py) with the GANJob CRDs from helm/ganops/crds
and KubeRay's RayJob kind. The operator runs in-process as the chart's ServiceAccount
(a static token for system:serviceaccount:ganops:ganops-operator), bound by the Role the
chart renders for the watched namespace. Nothing runs pods here, so the tests patch
RayJob status the way KubeRay does and check what the operator makes of it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

os.environ.setdefault("GANOPS_OPERATOR_POLL_S", "1")  # the MLflow timer, before the import below

from ganops.k8s.render import Defaults  # noqa: E402
from tests import helm, kube  # noqa: E402
from tests.conftest import JOBS  # noqa: E402

pytestmark = pytest.mark.slow

NS = "team-a"  # watched
OTHER = "team-b"  # not watched
RELEASE_NS = "ganops"
G, V = "ganops.io", "v1alpha1"


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - not there yet
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class KopfLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def chart_docs() -> list[dict[str, Any]]:
    return helm.render({"watchNamespaces": [NS]}, namespace=RELEASE_NS)


@pytest.fixture(scope="module")
def cluster(kube_api: kube.KubeAPI, chart_docs: list[dict[str, Any]], mlflow_server: str) -> Iterator[dict[str, Any]]:
    """CRDs, namespaces and the chart's RBAC applied; the operator running as its ServiceAccount."""
    from ganops.k8s import operator as op

    kube_api.apply(helm.crds())
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in (RELEASE_NS, NS, OTHER)])
    rbac = helm.rbac_docs(chart_docs)
    (sa,) = [d for d in rbac if d["kind"] == "ServiceAccount"]
    token = kube.sa_token(sa["metadata"]["namespace"], sa["metadata"]["name"])
    assert (sa["metadata"]["namespace"], sa["metadata"]["name"]) in kube.SERVICE_ACCOUNTS
    env = {**helm.operator_env(chart_docs), "MLFLOW_TRACKING_URI": mlflow_server}
    args = helm.operator_container(chart_docs)["args"]
    watched = [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]
    assert watched == [NS]
    log = KopfLog()
    logging.getLogger("kopf").addHandler(log)
    logging.getLogger("ganops").addHandler(log)
    with helm.applied(kube_api, rbac):
        with op.InProcess(watched, str(kube_api.kubeconfig(token, NS, name="operator")), Defaults.from_env(env)):
            yield {"log": log, "env": env}
    logging.getLogger("kopf").removeHandler(log)
    logging.getLogger("ganops").removeHandler(log)


@pytest.fixture
def admin(kube_api: kube.KubeAPI, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CLI's view: a user's kube config (admin here), and the API for assertions."""
    from kubernetes import client

    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig(kube.ADMIN_TOKEN, NS)))
    monkeypatch.delenv("GANOPS_TARGET", raising=False)
    return client.CustomObjectsApi(kube_api.api_client())


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from ganops.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def rayjob(api: Any, name: str, ns: str = NS) -> dict[str, Any]:
    return api.get_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", name)


def ganjob(api: Any, name: str, ns: str = NS, plural: str = "ganjobs") -> dict[str, Any]:
    return api.get_namespaced_custom_object(G, V, ns, plural, name)


def kuberay_sets(api: Any, name: str, status: dict[str, Any]) -> None:
    """What KubeRay does as a job goes along: write the RayJob's status subresource."""
    api.patch_namespaced_custom_object_status("ray.io", "v1", NS, "rayjobs", name, {"status": status})


def submit(name: str, capsys: pytest.CaptureFixture[str], *extra: str) -> None:
    code, out, err = cli(
        "submit", str(JOBS / "mnist_dcgan.yaml"), "--target", "k8s", "-q",
        "--set", f"metadata.name={name}", "--set", "spec.storage=s3://runs/ganops", *extra, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err


def test_ganjob_becomes_an_owned_rayjob(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    submit("dcgan-a", capsys, "--set", "spec.scaling.num_workers=2")
    rj = wait_for("the RayJob", lambda: rayjob(admin, "dcgan-a"))
    gj = ganjob(admin, "dcgan-a")
    (owner,) = rj["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "ganops.io/v1alpha1", "kind": "GANJob", "name": "dcgan-a",
                     "uid": gj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    assert rj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ganops"
    # The chart's defaults reached the pods; the credentials only as a Secret reference.
    (group,) = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert group["replicas"] == 2
    assert container["image"] == cluster["env"]["GANOPS_IMAGE"]
    assert container["resources"]["limits"]["cpu"] == cluster["env"]["GANOPS_WORKER_CPU"]
    assert container["envFrom"] == [{"secretRef": {"name": cluster["env"]["GANOPS_SECRET"]}}]
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(rj) and os.environ.get("AWS_SECRET_ACCESS_KEY", "none") not in json.dumps(rj)
    entry = shlex.split(rj["spec"]["entrypoint"])
    spec = yaml.safe_load(base64.b64decode(entry[entry.index("--spec-b64") + 1]))
    assert spec["spec"]["scaling"]["num_workers"] == 2 and spec["metadata"]["name"] == "dcgan-a"
    status = wait_for("status", lambda: ganjob(admin, "dcgan-a").get("status", {}).get("phase") and ganjob(admin, "dcgan-a")["status"])
    assert status["phase"] == "Pending" and status["rayJobName"] == "dcgan-a"
    assert status["conditions"][0]["type"] == "Submitted"


def test_rayjob_status_is_mirrored(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    submit("dcgan-b", capsys)
    wait_for("the RayJob", lambda: rayjob(admin, "dcgan-b"))
    phase = lambda: ganjob(admin, "dcgan-b").get("status", {}).get("phase")  # noqa: E731
    kuberay_sets(admin, "dcgan-b", {"jobDeploymentStatus": "Initializing"})
    kuberay_sets(admin, "dcgan-b", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING",
                                    "startTime": "2026-11-22T10:00:00Z", "jobId": "dcgan-b-x1"})  # fmt: skip
    wait_for("Running", lambda: phase() == "Running")
    code, out, _ = cli("status", "dcgan-b", "-o", "json", capsys=capsys)
    row = json.loads(out)
    assert code == 0 and row["phase"] == "Running" and row["started"] == "2026-11-22T10:00:00Z"
    assert row["details"] == {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}
    kuberay_sets(admin, "dcgan-b", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED",
                                    "endTime": "2026-11-22T11:00:00Z"})  # fmt: skip
    wait_for("Succeeded", lambda: phase() == "Succeeded")
    st = ganjob(admin, "dcgan-b")["status"]
    assert st["completionTime"] == "2026-11-22T11:00:00Z"
    assert [c["type"] for c in st["conditions"]] == ["Submitted", "Running", "Complete"]
    code, out, _ = cli("list", capsys=capsys)
    line = next(x for x in out.splitlines() if x.startswith("dcgan-b "))
    assert "Succeeded" in line and "train" in line
    assert out.splitlines()[0].split()[:3] == ["NAME", "KIND", "PHASE"]


def test_failures_from_kuberay(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    submit("dcgan-c", capsys)
    wait_for("the RayJob", lambda: rayjob(admin, "dcgan-c"))
    kuberay_sets(admin, "dcgan-c", {"jobDeploymentStatus": "Failed", "jobStatus": "",
                                    "message": "The RayJob has passed the activeDeadlineSeconds"})  # fmt: skip
    st = wait_for("Failed", lambda: ganjob(admin, "dcgan-c").get("status", {}).get("phase") == "Failed"
                  and ganjob(admin, "dcgan-c")["status"])  # fmt: skip
    assert "activeDeadlineSeconds" in st["message"]


def test_cancel_suspends_the_rayjob_and_resubmit_resumes(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    submit("dcgan-d", capsys)
    first = wait_for("the RayJob", lambda: rayjob(admin, "dcgan-d"))
    kuberay_sets(admin, "dcgan-d", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_for("Running", lambda: ganjob(admin, "dcgan-d").get("status", {}).get("phase") == "Running")
    code, _, err = cli("submit", str(JOBS / "mnist_dcgan.yaml"), "--target", "k8s", "-q",
                       "--set", "metadata.name=dcgan-d", capsys=capsys)  # fmt: skip
    assert code == 2 and "ganops cancel dcgan-d" in err  # no second driver on the same checkpoints
    code, _, err = cli("cancel", "dcgan-d", capsys=capsys)
    assert code == 0, err
    wait_for("suspend", lambda: rayjob(admin, "dcgan-d")["spec"].get("suspend") is True)
    wait_for("Cancelled", lambda: ganjob(admin, "dcgan-d").get("status", {}).get("phase") == "Cancelled")
    kuberay_sets(admin, "dcgan-d", {"jobDeploymentStatus": "Suspended", "jobStatus": "STOPPED"})
    time.sleep(1)
    st = ganjob(admin, "dcgan-d")["status"]
    assert st["phase"] == "Cancelled" and "resume" in st["message"] and st["jobDeploymentStatus"] == "Suspended"
    # Submitting the same name again replaces the finished GANJob; the operator replaces
    # the stale RayJob (garbage collection may not have reached it yet).
    submit("dcgan-d", capsys)
    new_uid = wait_for("new GANJob", lambda: ganjob(admin, "dcgan-d")["metadata"]["uid"])
    second = wait_for("a new RayJob", lambda: (r := rayjob(admin, "dcgan-d"))["metadata"]["uid"] != first["metadata"]["uid"] and r)
    assert second["metadata"]["ownerReferences"][0]["uid"] == new_uid
    assert not second["spec"].get("suspend")


def test_invalid_spec_is_a_permanent_failure(cluster: dict, admin: Any) -> None:
    """A spec that passes the CRD's schema but not ganops' own checks (kubectl apply)."""
    body = {"apiVersion": f"{G}/{V}", "kind": "GANJob", "metadata": {"name": "bad-batch", "namespace": NS},
            "spec": {"data": {"dataset": "fake"}, "train": {"batch_size": 10}, "scaling": {"num_workers": 3}}}  # fmt: skip
    admin.create_namespaced_custom_object(G, V, NS, "ganjobs", body)
    st = wait_for("Failed", lambda: ganjob(admin, "bad-batch").get("status", {}).get("phase") == "Failed"
                  and ganjob(admin, "bad-batch")["status"])  # fmt: skip
    assert "train.batch_size" in st["message"] and "not divisible" in st["message"]
    time.sleep(1)
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as e:
        rayjob(admin, "bad-batch")
    assert e.value.status == 404


def test_generation_uses_the_same_path(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli("generate", "--run-id", "0123abcd", "--out", "s3://gen/out", "--num", "1000",
                         "--workers", "2", "--target", "k8s", "--name", "gen-one", capsys=capsys)  # fmt: skip
    assert code == 0, err
    rj = wait_for("the RayJob", lambda: rayjob(admin, "gen-one"))
    assert rj["metadata"]["ownerReferences"][0]["kind"] == "GANGeneration"
    args = shlex.split(rj["spec"]["entrypoint"])
    assert args[:6] == ["ganops", "generate", "--target", "local", "--run-id", "0123abcd"] and "--workers" in args
    kuberay_sets(admin, "gen-one", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    wait_for("Succeeded", lambda: ganjob(admin, "gen-one", plural="gangenerations").get("status", {}).get("phase") == "Succeeded")
    code, out, _ = cli("list", "-o", "yaml", capsys=capsys)
    kinds = {i["name"]: i["kind"] for i in yaml.safe_load(out)["items"]}
    assert kinds["gen-one"] == "generate" and kinds["dcgan-a"] == "train"


def test_mlflow_run_and_checkpoint_reach_the_status(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str],
                                                    mlflow_server: str) -> None:  # fmt: skip
    from mlflow.tracking import MlflowClient

    submit("dcgan-e", capsys)
    wait_for("the RayJob", lambda: rayjob(admin, "dcgan-e"))
    uid = ganjob(admin, "dcgan-e")["metadata"]["uid"]
    kuberay_sets(admin, "dcgan-e", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    # What the trainer on the cluster does (the pods get GANOPS_K8S_UID).
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("ganops") or client.get_experiment(client.create_experiment("ganops"))
    run = client.create_run(exp.experiment_id, tags={"ganops.job": "dcgan-e", "ganops.k8s_uid": uid,
                                                     "ganops.checkpoint": "s3://runs/ganops/dcgan-e/checkpoints/epoch_0001"})  # fmt: skip
    st = wait_for("mlflowRunId", lambda: ganjob(admin, "dcgan-e").get("status", {}).get("mlflowRunId") and ganjob(admin, "dcgan-e")["status"])
    assert st["mlflowRunId"] == run.info.run_id
    assert st["latestCheckpoint"].endswith("epoch_0001")


def test_unwatched_namespace_is_left_alone(cluster: dict, admin: Any) -> None:
    body = {"apiVersion": f"{G}/{V}", "kind": "GANJob", "metadata": {"name": "elsewhere", "namespace": OTHER},
            "spec": {"data": {"dataset": "fake"}}}  # fmt: skip
    admin.create_namespaced_custom_object(G, V, OTHER, "ganjobs", body)
    time.sleep(2)
    assert "status" not in ganjob(admin, "elsewhere", ns=OTHER)
    assert admin.list_namespaced_custom_object("ray.io", "v1", OTHER, "rayjobs")["items"] == []


def test_the_operator_never_hit_a_permission_error(cluster: dict) -> None:
    """Missing rights show up as kopf's 403 warnings; the run so far must have none."""
    bad = [r for r in cluster["log"].records if "403" in r or "Forbidden" in r or "permission" in r.lower()]
    assert bad == []


def test_cli_errors_are_clean(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli("status", "nope", capsys=capsys)
    assert code == 2 and "no GANJob or GANGeneration named 'nope' in namespace team-a" in err
    code, _, err = cli("logs", "dcgan-a", capsys=capsys)
    assert code == 2 and "no driver pod yet" in err
    code, _, err = cli("list", "-n", OTHER, capsys=capsys, )
    assert code == 0


def test_a_user_without_rights_gets_a_clear_error(kube_api: kube.KubeAPI, cluster: dict, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig(kube.USER_TOKEN, NS, name="alice")))
    code, _, err = cli("list", capsys=capsys)
    assert code == 2 and "not allowed to list ganjobs in namespace team-a" in err and "Traceback" not in err


def test_no_finalizers(cluster: dict, admin: Any) -> None:
    """Nothing may block `kubectl delete ganjob` while the operator is down."""
    for item in admin.list_namespaced_custom_object(G, V, NS, "ganjobs")["items"]:
        assert not item["metadata"].get("finalizers"), item["metadata"]["name"]


def test_the_chart_grants_exactly_what_the_operator_declares(chart_docs: list[dict[str, Any]]) -> None:
    """This module runs the operator under these rules (a missing one fails it); the
    declaration is what the operator does, each rule with its reason (an extra one fails here)."""
    from ganops.k8s import rbac

    assert helm.rule_set(helm.operator_rules(chart_docs)) == set(rbac.NAMESPACED)


def test_operator_run_command(kube_api: kube.KubeAPI, cluster: dict, admin: Any) -> None:
    """`ganops operator run` as the chart's Deployment runs it: its own process, the kube
    config of its ServiceAccount, the chart's args and env, a liveness endpoint, SIGTERM."""
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from tests.conftest import _free_port

    docs = helm.render({}, namespace=OTHER)  # a release in team-b, watching team-b
    container = helm.operator_container(docs)
    port = _free_port()
    args = [a.replace("0.0.0.0:8080", f"127.0.0.1:{port}") for a in container["args"]]
    assert args[-2:] == ["--namespace", OTHER]
    (sa,) = [d for d in helm.rbac_docs(docs) if d["kind"] == "ServiceAccount"]
    token = kube.sa_token(OTHER, sa["metadata"]["name"])
    env = {**os.environ, **helm.operator_env(docs), "KUBECONFIG": str(kube_api.kubeconfig(token, OTHER, name="op-b"))}
    env.pop("HOME", None)
    exe = str(Path(sys.executable).with_name("ganops"))
    with helm.applied(kube_api, helm.rbac_docs(docs)):
        proc = subprocess.Popen([exe, *container["command"][1:], *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            wait_for("/healthz", lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200, 60)
            body = {"apiVersion": f"{G}/{V}", "kind": "GANJob", "metadata": {"name": "by-command", "namespace": OTHER},
                    "spec": {"data": {"dataset": "fake"}, "storage": "s3://runs/x"}}  # fmt: skip
            admin.create_namespaced_custom_object(G, V, OTHER, "ganjobs", body)
            rj = wait_for("the RayJob", lambda: rayjob(admin, "by-command", ns=OTHER))
            assert rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == env["GANOPS_IMAGE"]
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    assert "403" not in out and "Forbidden" not in out, out[-3000:]
