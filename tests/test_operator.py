"""The operator on a real API server, under exactly the Helm chart's RBAC.

kube-apiserver v1.20 + etcd (tests/kube.py) with the GANJob CRDs from helm/ganops/crds
and KubeRay's RayJob kind. The operator runs in-process as the chart's ServiceAccount
(a static token for system:serviceaccount:ganops:ganops-operator), bound by the Role the
chart renders for the watched namespace. Nothing runs pods here, so the tests patch
RayJob status the way KubeRay does and check what the operator makes of it.

Each test makes the objects it needs, under names of its own (``unique``), so the tests
pass alone and in any order. Nothing waits a fixed time: a test waits for what the
operator writes, and "nothing happened" is checked only after a sign that the operator
has handled what it would have acted on.

The first tests need no API server: the status mapping, the configuration and the kube
config errors.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import re
import shlex
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ganops.entrypoint import decode_spec
from ganops.errors import UserError
from ganops.k8s import operator as op
from tests import helm, helpers, kube
from tests.helpers import JOBS, cli_in_process

slow = pytest.mark.slow

NS = "team-a"  # watched
OTHER = "team-b"  # not watched
RELEASE_NS = "ganops"
G, V = "ganops.io", "v1alpha1"


# --- mirrored_status: RayJob status in, GANJob status patch out -----------------------------


class _Timestamp:
    """Equal to any RFC 3339 UTC timestamp: stands for ``now()`` in the expected rows."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", other) is not None

    def __repr__(self) -> str:
        return "<timestamp>"


NOW = _Timestamp()
SUBMITTED = {"type": "Submitted", "status": "True", "reason": "RayJobCreated", "message": "RayJob j created",
             "lastTransitionTime": "2026-11-22T09:59:00Z"}  # fmt: skip


def _rayjob(status: dict[str, Any] | None, *, suspend: bool = False, kind: str = "train") -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "j", "labels": {"ganops.io/kind": kind}}, "spec": {}}
    if suspend:
        body["spec"]["suspend"] = True
    if status is not None:
        body["status"] = status
    return body


def _cond(type_: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": NOW}


MIRROR_ROWS = [
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Initializing"}), "MODIFIED", {},
        {"phase": "Pending", "rayJobName": "j", "jobStatus": None, "jobDeploymentStatus": "Initializing"},
        id="initializing-is-pending-without-a-condition"),
    pytest.param(
        _rayjob(None), "ADDED", {},
        {"phase": "Pending", "rayJobName": "j", "jobStatus": None, "jobDeploymentStatus": None},
        id="no-status-yet-is-pending"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "startTime": "2026-11-22T10:00:00Z"}),
        "MODIFIED", {"phase": "Pending", "conditions": [SUBMITTED]},
        {"phase": "Running", "rayJobName": "j", "jobStatus": "RUNNING", "jobDeploymentStatus": "Running",
         "startTime": "2026-11-22T10:00:00Z", "message": "training",
         "conditions": [SUBMITTED, _cond("Running", "Running", "training")]},
        id="running-adds-a-running-condition"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, kind="generate"),
        "MODIFIED", {"phase": "Running", "conditions": [SUBMITTED]},
        {"phase": "Running", "rayJobName": "j", "jobStatus": "RUNNING", "jobDeploymentStatus": "Running",
         "message": "running"},
        id="still-running-adds-no-second-condition"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": "2026-11-22T11:00:00Z"}),
        "MODIFIED", {"phase": "Running"},
        {"phase": "Succeeded", "rayJobName": "j", "jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete",
         "completionTime": "2026-11-22T11:00:00Z", "conditions": [_cond("Complete", "Complete", "Succeeded")]},
        id="complete-is-succeeded-with-its-end-time"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "endTime": "2026-11-22T11:00:00Z"}),
        "MODIFIED", {"phase": "Running"},
        {"phase": "Running", "rayJobName": "j", "jobStatus": "RUNNING", "jobDeploymentStatus": "Running",
         "message": "training"},
        id="an-end-time-before-the-end-is-not-a-completion-time"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Failed", "jobStatus": "", "message": "passed the activeDeadlineSeconds"}),
        "MODIFIED", {"phase": "Pending"},
        {"phase": "Failed", "rayJobName": "j", "jobStatus": "", "jobDeploymentStatus": "Failed",
         "message": "passed the activeDeadlineSeconds",
         "conditions": [_cond("Failed", "Failed", "passed the activeDeadlineSeconds")]},
        id="kuberay-failure-wins-over-ray-job-state"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "Job failed"}), "MODIFIED",
        {"phase": "Running"},
        {"phase": "Failed", "rayJobName": "j", "jobStatus": "FAILED", "jobDeploymentStatus": "Failed",
         "message": "Job failed", "conditions": [_cond("Failed", "Failed", "Job failed")]},
        id="ray-job-failure-is-failed-once-kuberay-says-so"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Running", "jobStatus": "FAILED"}), "MODIFIED", {"phase": "Running"},
        {"phase": "Running", "rayJobName": "j", "jobStatus": "FAILED", "jobDeploymentStatus": "Running",
         "message": "the attempt's Ray job failed; waiting for KubeRay to retry it or fail the job"},
        id="a-failed-attempt-before-kuberay-decides-is-still-running"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "ValidationFailed", "message": "bad spec"}), "MODIFIED", {"phase": "Pending"},
        {"phase": "Failed", "rayJobName": "j", "jobStatus": None, "jobDeploymentStatus": "ValidationFailed",
         "message": "bad spec", "conditions": [_cond("Failed", "ValidationFailed", "bad spec")]},
        id="a-rayjob-kuberay-refuses-is-failed"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Running", "jobStatus": "STOPPED"}), "MODIFIED", {"phase": "Running"},
        {"phase": "Cancelled", "rayJobName": "j", "jobStatus": "STOPPED", "jobDeploymentStatus": "Running"},
        id="stopped-by-someone-else-is-cancelled-without-a-condition"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, suspend=True), "MODIFIED",
        {"phase": "Running"},
        {"phase": "Cancelled", "jobStatus": "RUNNING", "jobDeploymentStatus": "Running"},
        id="a-suspended-rayjob-is-our-cancel"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Suspended", "jobStatus": "STOPPED"}), "MODIFIED",
        {"phase": "Cancelled", "message": "cancelled (…)"},
        {"phase": "Cancelled", "jobStatus": "STOPPED", "jobDeploymentStatus": "Suspended"},
        id="after-a-cancel-later-states-keep-it-cancelled"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}), "DELETED", {"phase": "Running"},
        {"phase": "Failed", "message": "its RayJob was deleted", "completionTime": NOW},
        id="deleted-while-running-is-a-failure"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}), "DELETED", {"phase": "Succeeded"},
        {},
        id="deleted-after-the-end-changes-nothing"),
    pytest.param(
        _rayjob({"jobDeploymentStatus": "Waiting", "jobStatus": "SOME_NEW_STATE"}), "MODIFIED", {"phase": "Pending"},
        {"phase": "Pending", "rayJobName": "j", "jobStatus": "SOME_NEW_STATE", "jobDeploymentStatus": "Waiting"},
        id="unknown-states-are-pending"),
    pytest.param(
        {**_rayjob({"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED", "failed": 1,
                    "message": "Job failed"}), "spec": {"backoffLimit": 2}},
        "MODIFIED", {"phase": "Running"},
        {"phase": "Pending", "rayJobName": "j", "jobStatus": "FAILED", "jobDeploymentStatus": "Retrying",
         "message": "attempt 1 of 3 failed (Job failed); retrying on a new Ray cluster from the latest checkpoint"},
        id="a-failed-attempt-with-retries-left-is-pending-not-failed"),
]  # fmt: skip


@pytest.mark.parametrize(("rayjob", "event_type", "current", "expected"), MIRROR_ROWS)
def test_mirrored_status_maps_a_rayjob_event_to_the_owner_status_patch(
    rayjob: dict[str, Any], event_type: str, current: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert op.mirrored_status(rayjob, event_type, current) == expected


# --- configuration and registration ------------------------------------------------------


@pytest.fixture
def kubeconfig_file(tmp_path: Path) -> Path:
    """A well-formed kube config for a server that is never contacted."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ns1"}}],
    }))  # fmt: skip
    return path


def test_the_poll_interval_is_read_from_the_environment_when_the_operator_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GANOPS_OPERATOR_POLL_S", "2.5")
    assert op.OperatorConfig.from_env(namespaces=["a"]).poll_s == 2.5
    monkeypatch.delenv("GANOPS_OPERATOR_POLL_S")
    assert op.OperatorConfig.from_env(namespaces=["a"]).poll_s == op.DEFAULT_POLL_S


@pytest.mark.parametrize("raw", ["soon", "0", "-1"])
def test_a_bad_poll_interval_is_a_user_error(raw: str) -> None:
    with pytest.raises(UserError, match="GANOPS_OPERATOR_POLL_S"):
        op.OperatorConfig.from_env(namespaces=["a"], environ={"GANOPS_OPERATOR_POLL_S": raw})


def test_the_configuration_is_frozen_and_takes_the_defaults_from_the_given_environment() -> None:
    config = op.OperatorConfig.from_env(namespaces=["a", "b"], environ={"GANOPS_IMAGE": "img:1"})
    assert config.namespaces == ("a", "b") and config.defaults.image == "img:1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.poll_s = 1  # type: ignore[misc]


@pytest.mark.parametrize(("namespaces", "all_namespaces"), [((), False), (("a",), True)])
def test_the_configuration_needs_named_namespaces_or_all_of_them(
    namespaces: tuple[str, ...], all_namespaces: bool
) -> None:
    with pytest.raises(UserError, match="exactly one"):
        op.OperatorConfig(namespaces=namespaces, all_namespaces=all_namespaces)


def test_registering_fills_only_the_given_registry(kubeconfig_file: Path) -> None:
    import kopf

    default = kopf.get_default_registry()
    before = len(default._changing.get_all_handlers()) + len(default._watching.get_all_handlers())
    registry = kopf.OperatorRegistry()
    op.register(registry, op.OperatorConfig(namespaces=("a",), kubeconfig=str(kubeconfig_file)))
    changing = {(h.id, h.selector.any_name) for h in registry._changing.get_all_handlers()}
    assert changing == {(i, p) for i in ("created", "cancelled") for p in ("ganjobs", "gangenerations")}
    watching = sorted((h.id, h.selector.any_name) for h in registry._watching.get_all_handlers())
    assert watching == [("deleted", "gangenerations"), ("deleted", "ganjobs"), ("rayjob_changed", "rayjobs")]
    assert {h.id for h in registry._activities.get_all_handlers()} == {
        "login",
        "start_mlflow_poller",
        "stop_mlflow_poller",
    }
    after = len(default._changing.get_all_handlers()) + len(default._watching.get_all_handlers())
    assert after == before


def test_the_login_handler_uses_the_configured_kube_config(kubeconfig_file: Path) -> None:
    from ganops.k8s.client import configuration

    info = op.connection_info(configuration(str(kubeconfig_file)))
    assert info.server == "https://127.0.0.1:1" and info.scheme == "Bearer" and info.token == "t"


def test_the_login_handler_sends_the_pods_service_account_token_once_prefixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In its pod the operator loads the in-cluster config, which keeps "bearer <token>"
    (lower case): kopf must get the bare token, or it sends "Bearer bearer …" and is refused."""
    from kubernetes.config import incluster_config

    from ganops.k8s.client import configuration

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not checked here")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    info = op.connection_info(configuration())
    assert info.server == "https://10.96.0.1:443" and info.scheme == "Bearer" and info.token == "sa-token"


def test_kopf_settings_scan_the_cluster_only_for_all_namespaces() -> None:
    assert op.operator_settings(op.OperatorConfig(namespaces=("a",))).scanning.disabled is True
    assert op.operator_settings(op.OperatorConfig(all_namespaces=True)).scanning.disabled is False


# --- malformed kube configs ------------------------------------------------------------------

BAD_KUBECONFIGS = {
    "not-yaml": "not: [valid\n",
    "no-current-context": "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n",
    "a-string": "hello\n",
    "a-list": "- a\n- b\n",
    "empty": "",
}


@pytest.mark.parametrize("content", BAD_KUBECONFIGS.values(), ids=BAD_KUBECONFIGS.keys())
def test_a_malformed_kube_config_is_a_user_error_naming_the_file(content: str, tmp_path: Path) -> None:
    from ganops.k8s.client import configuration, default_namespace

    path = tmp_path / "kubeconfig"
    path.write_text(content)
    for load in (configuration, default_namespace):
        with pytest.raises(UserError) as e:
            load(str(path))
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_kube_config_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    from ganops.k8s.client import configuration

    with pytest.raises(UserError, match=re.escape(str(tmp_path / "nope"))):
        configuration(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "args", [["list", "--target", "k8s"], ["operator", "run", "-n", "team-x"]], ids=["list", "operator"]
)
def test_the_cli_reports_a_malformed_kube_config_without_a_traceback(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(BAD_KUBECONFIGS["not-yaml"])
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("GANOPS_TARGET", raising=False)
    code, _, err = cli(*args, capsys=capsys)
    assert code == 2 and str(path) in err and "not valid YAML" in err and "Traceback" not in err


# --- the operator on an API server -------------------------------------------------------------


def unique(prefix: str) -> str:
    """A name no other test uses (short: RayJob names are limited to 47 characters)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30) -> Any:
    # The API answers 404 (an exception) until the object exists.
    return helpers.wait_for(what, fn, timeout, retry=(Exception,))


class KopfLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")


# The operator's loggers only: the CLI's own (refused) calls are not the operator's rights.
OPERATOR_LOGGERS = ("kopf", "ganops.operator")


@pytest.fixture(scope="module")
def chart_docs() -> list[dict[str, Any]]:
    return helm.render({"watchNamespaces": [NS]}, namespace=RELEASE_NS)


@pytest.fixture(scope="module")
def cluster(kube_api: kube.KubeAPI, chart_docs: list[dict[str, Any]], mlflow_server: str) -> Iterator[dict[str, Any]]:
    """CRDs, namespaces and the chart's RBAC applied; the operator running as its ServiceAccount."""
    kube_api.apply(helm.crds())
    kube_api.apply(
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in (RELEASE_NS, NS, OTHER)]
    )
    rbac = helm.rbac_docs(chart_docs)
    (sa,) = [d for d in rbac if d["kind"] == "ServiceAccount"]
    token = kube.sa_token(sa["metadata"]["namespace"], sa["metadata"]["name"])
    assert (sa["metadata"]["namespace"], sa["metadata"]["name"]) in kube.SERVICE_ACCOUNTS
    env = {**helm.operator_env(chart_docs), "MLFLOW_TRACKING_URI": mlflow_server}
    args = helm.operator_container(chart_docs)["args"]
    watched = [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]
    assert watched == [NS]
    config = op.OperatorConfig.from_env(
        namespaces=watched, kubeconfig=str(kube_api.kubeconfig(token, NS, name="operator")),
        environ={**env, "GANOPS_OPERATOR_POLL_S": "1"},  # the MLflow poll, fast for the test
    )  # fmt: skip
    # The running operator's shared state (what it remembers between polls), for the tests
    # that check it stays bounded: its handlers get it from op._context as it is built.
    contexts: list[op._Context] = []
    real_context = op._context

    def kept(cfg: op.OperatorConfig) -> op._Context:
        contexts.append(real_context(cfg))
        return contexts[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(op, "_context", kept)
        operator = op.InProcess(config)
    (ctx,) = contexts
    log = KopfLog()
    for name in OPERATOR_LOGGERS:
        logging.getLogger(name).addHandler(log)
    try:
        with helm.applied(kube_api, rbac), operator:
            yield {"log": log, "env": env, "ctx": ctx}
    finally:
        for name in OPERATOR_LOGGERS:
            logging.getLogger(name).removeHandler(log)


@pytest.fixture
def admin(kube_api: kube.KubeAPI, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CLI's view: a user's kube config (admin here), and the API for assertions."""
    from kubernetes import client

    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig(kube.ADMIN_TOKEN, NS)))
    monkeypatch.delenv("GANOPS_TARGET", raising=False)
    return client.CustomObjectsApi(kube_api.api_client())


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return cli_in_process(list(args), capsys)


def rayjob(api: Any, name: str, ns: str = NS) -> dict[str, Any]:
    return api.get_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", name)


def ganjob(api: Any, name: str, ns: str = NS, plural: str = "ganjobs") -> dict[str, Any]:
    return api.get_namespaced_custom_object(G, V, ns, plural, name)


def status_of(api: Any, name: str, ns: str = NS, plural: str = "ganjobs") -> dict[str, Any]:
    return ganjob(api, name, ns, plural).get("status") or {}


def wait_phase(api: Any, name: str, phase: str, plural: str = "ganjobs") -> dict[str, Any]:
    """The status, once the operator has written ``phase`` into it."""
    return wait_for(f"{name} {phase}", lambda: (st := status_of(api, name, plural=plural)).get("phase") == phase and st)


def kuberay_sets(api: Any, name: str, status: dict[str, Any]) -> None:
    """What KubeRay does as a job goes along: write the RayJob's status subresource."""
    api.patch_namespaced_custom_object_status("ray.io", "v1", NS, "rayjobs", name, {"status": status})


def submit(name: str, capsys: pytest.CaptureFixture[str], *extra: str) -> None:
    code, out, err = cli(
        "submit", str(JOBS / "mnist_dcgan.yaml"), "--target", "k8s", "-q",
        "--set", f"metadata.name={name}", "--set", "spec.storage=s3://runs/ganops", *extra, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err


def submitted(api: Any, name: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    """Submit, and return the RayJob once the operator has created it and marked the job Pending.

    KubeRay reports on a RayJob only after it exists; waiting for Pending too keeps a
    test's simulated KubeRay from overtaking the operator's own first status write.
    """
    submit(name, capsys, *extra)
    wait_phase(api, name, "Pending")
    return rayjob(api, name)


@slow
def test_ganjob_becomes_an_owned_rayjob(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("dcgan")
    submit(name, capsys, "--set", "spec.scaling.num_workers=2")
    rj = wait_for("the RayJob", lambda: rayjob(admin, name))
    gj = ganjob(admin, name)
    (owner,) = rj["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "ganops.io/v1alpha1", "kind": "GANJob", "name": name,
                     "uid": gj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    assert rj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ganops"
    # The chart's defaults reached the pods; the credentials only as a Secret reference.
    (group,) = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert group["replicas"] == 2
    assert container["image"] == cluster["env"]["GANOPS_IMAGE"]
    assert container["resources"]["limits"]["cpu"] == cluster["env"]["GANOPS_WORKER_CPU"]
    assert container["envFrom"] == [{"secretRef": {"name": cluster["env"]["GANOPS_SECRET"]}}]
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(rj) and os.environ.get(
        "AWS_SECRET_ACCESS_KEY", "none"
    ) not in json.dumps(rj)
    entry = shlex.split(rj["spec"]["entrypoint"])
    spec = yaml.safe_load(base64.b64decode(entry[entry.index("--spec-b64") + 1]))
    assert spec["spec"]["scaling"]["num_workers"] == 2 and spec["metadata"]["name"] == name
    status = wait_phase(admin, name, "Pending")
    assert status["rayJobName"] == name
    assert status["conditions"][0]["type"] == "Submitted"


@slow
def test_rayjob_status_is_mirrored(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("dcgan")
    submitted(admin, name, capsys)
    kuberay_sets(admin, name, {"jobDeploymentStatus": "Initializing"})
    kuberay_sets(admin, name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING",
                               "startTime": "2026-11-22T10:00:00Z", "jobId": f"{name}-x1"})  # fmt: skip
    wait_phase(admin, name, "Running")
    code, out, _ = cli("status", name, "-o", "json", capsys=capsys)
    row = json.loads(out)
    assert code == 0 and row["phase"] == "Running" and row["started"] == "2026-11-22T10:00:00Z"
    assert row["details"] == {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}
    kuberay_sets(admin, name, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED",
                               "endTime": "2026-11-22T11:00:00Z"})  # fmt: skip
    st = wait_phase(admin, name, "Succeeded")
    assert st["completionTime"] == "2026-11-22T11:00:00Z"
    assert [c["type"] for c in st["conditions"]] == ["Submitted", "Running", "Complete"]
    code, out, _ = cli("list", capsys=capsys)
    line = next(x for x in out.splitlines() if x.startswith(f"{name} "))
    assert "Succeeded" in line and "train" in line
    assert out.splitlines()[0].split()[:3] == ["NAME", "KIND", "PHASE"]


@slow
def test_failures_from_kuberay(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("dcgan")
    submitted(admin, name, capsys)
    kuberay_sets(admin, name, {"jobDeploymentStatus": "Failed", "jobStatus": "",
                               "message": "The RayJob has passed the activeDeadlineSeconds"})  # fmt: skip
    st = wait_phase(admin, name, "Failed")
    assert "activeDeadlineSeconds" in st["message"]


@slow
def test_cancel_suspends_the_rayjob_and_resubmit_resumes(
    cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("dcgan")
    first = submitted(admin, name, capsys)
    kuberay_sets(admin, name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_phase(admin, name, "Running")
    code, _, err = cli("submit", str(JOBS / "mnist_dcgan.yaml"), "--target", "k8s", "-q",
                       "--set", f"metadata.name={name}", capsys=capsys)  # fmt: skip
    assert code == 2 and f"ganops cancel {name}" in err  # no second driver on the same checkpoints
    code, _, err = cli("cancel", name, capsys=capsys)
    assert code == 0, err
    wait_for("suspend", lambda: rayjob(admin, name)["spec"].get("suspend") is True)
    wait_phase(admin, name, "Cancelled")
    kuberay_sets(admin, name, {"jobDeploymentStatus": "Suspended", "jobStatus": "STOPPED"})
    # KubeRay's later states reach the status, and leave the cancel as it was.
    st = wait_for(
        "Suspended mirrored", lambda: (s := status_of(admin, name)).get("jobDeploymentStatus") == "Suspended" and s
    )
    assert st["phase"] == "Cancelled" and "resume" in st["message"]
    # Submitting the same name again replaces the finished GANJob; the operator replaces
    # the stale RayJob (garbage collection may not have reached it yet).
    submit(name, capsys)
    new_uid = wait_for(
        "new GANJob",
        lambda: (
            (uid := ganjob(admin, name)["metadata"]["uid"]) != first["metadata"]["ownerReferences"][0]["uid"] and uid
        ),
    )
    second = wait_for(
        "a new RayJob", lambda: (r := rayjob(admin, name))["metadata"]["uid"] != first["metadata"]["uid"] and r
    )
    assert second["metadata"]["ownerReferences"][0]["uid"] == new_uid
    assert not second["spec"].get("suspend")


class RayHead:
    """The Ray dashboard's job API of one running job, as KubeRay's status points at it
    (``dashboardURL``, ``jobId``): it reports RUNNING until asked to stop, then STOPPED
    once the test lets the driver finish (``finish``)."""

    def __init__(self, job_id: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.job_id, self.stops, self.finished = job_id, 0, threading.Event()
        head = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                assert self.path == f"/api/jobs/{head.job_id}", self.path
                self._reply({"status": "STOPPED" if head.finished.is_set() else "RUNNING"})

            def do_POST(self) -> None:
                assert self.path == f"/api/jobs/{head.job_id}/stop", self.path
                head.stops += 1
                self._reply({"stopped": True})

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@slow
def test_cancel_stops_the_ray_job_so_its_workers_checkpoint_before_the_cluster_goes(
    cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """KubeRay's suspend deletes the pods at once: the operator first has Ray stop the job
    (SIGTERM to the driver, whose workers write a checkpoint), and suspends once it is over."""
    name = unique("dcgan")
    head = RayHead(job_id=f"{name}-abcde")
    try:
        first = submitted(admin, name, capsys)
        env = {e["name"]: e["value"] for e in first["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
               ["containers"][0]["env"] if "value" in e}  # fmt: skip
        assert env["RAY_JOB_STOP_WAIT_TIME_S"] == "60"  # the driver's grace after SIGTERM
        kuberay_sets(admin, name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING",
                                   "dashboardURL": head.url, "jobId": head.job_id})  # fmt: skip
        wait_phase(admin, name, "Running")
        code, _, err = cli("cancel", name, capsys=capsys)
        assert code == 0, err
        wait_for("the stop request", lambda: head.stops >= 1)
        st = wait_for("the stopping message", lambda: "stopping the Ray job" in str((s := status_of(admin, name))
                                                                                  .get("message")) and s)  # fmt: skip
        time.sleep(2 * op.CANCEL_POLL_S)  # the job still runs: the cluster must stay
        assert not rayjob(admin, name)["spec"].get("suspend"), "suspended while the workers were checkpointing"
        assert st["phase"] == "Running"
        head.finished.set()  # the driver is gone; Ray reports STOPPED, and so does KubeRay
        kuberay_sets(admin, name, {"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"})
        wait_for("suspend", lambda: rayjob(admin, name)["spec"].get("suspend") is True, timeout=30)
        st = wait_for("the cancel's message", lambda: "resume" in str((s := status_of(admin, name))
                                                                      .get("message")) and s)  # fmt: skip
        assert st["phase"] == "Cancelled"
        assert [c["reason"] for c in st["conditions"] if c["type"] == "Cancelled"] == ["CancelRequested"]
    finally:
        head.close()


@slow
def test_invalid_spec_is_a_permanent_failure(cluster: dict, admin: Any) -> None:
    """A spec that passes the CRD's schema but not ganops' own checks (kubectl apply)."""
    from kubernetes.client.exceptions import ApiException

    name = unique("bad-batch")
    body = {"apiVersion": f"{G}/{V}", "kind": "GANJob", "metadata": {"name": name, "namespace": NS},
            "spec": {"data": {"dataset": "fake"}, "train": {"batch_size": 10}, "scaling": {"num_workers": 3}}}  # fmt: skip
    admin.create_namespaced_custom_object(G, V, NS, "ganjobs", body)
    # Failed is written by the very handler run that would have created the RayJob, and a
    # permanent error is never retried: once it shows, no RayJob can follow.
    st = wait_phase(admin, name, "Failed")
    assert "train.batch_size" in st["message"] and "not divisible" in st["message"]
    with pytest.raises(ApiException) as e:
        rayjob(admin, name)
    assert e.value.status == 404


@slow
def test_generation_uses_the_same_path(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    gen, train = unique("gen"), unique("dcgan")
    code, out, err = cli("generate", "--run-id", "0123abcd", "--out", "s3://gen/out", "--num", "1000",
                         "--workers", "2", "--target", "k8s", "--name", gen, capsys=capsys)  # fmt: skip
    assert code == 0, err
    rj = wait_for("the RayJob", lambda: rayjob(admin, gen))
    assert rj["metadata"]["ownerReferences"][0]["kind"] == "GANGeneration"
    args = shlex.split(rj["spec"]["entrypoint"])
    assert args[:5] == ["ganops", "generate", "--target", "local", "--spec-b64"]
    sent = yaml.safe_load(decode_spec(args[5]))["spec"]
    assert (sent["run_id"], sent["workers"], sent["num"]) == ("0123abcd", 2, 1000)
    wait_phase(admin, gen, "Pending", plural="gangenerations")
    kuberay_sets(admin, gen, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    wait_phase(admin, gen, "Succeeded", plural="gangenerations")
    submit(train, capsys)
    code, out, _ = cli("list", "-o", "yaml", capsys=capsys)
    kinds = {i["name"]: i["kind"] for i in yaml.safe_load(out)["items"]}
    assert kinds[gen] == "generate" and kinds[train] == "train"


@slow
def test_mlflow_run_and_checkpoint_reach_the_status(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str],
                                                    mlflow_server: str) -> None:  # fmt: skip
    from mlflow.tracking import MlflowClient

    name = unique("dcgan")
    submitted(admin, name, capsys)
    uid = ganjob(admin, name)["metadata"]["uid"]
    kuberay_sets(admin, name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    # What the trainer on the cluster does (the pods get GANOPS_K8S_UID).
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("ganops") or client.get_experiment(client.create_experiment("ganops"))
    run = client.create_run(exp.experiment_id, tags={"ganops.job": name, "ganops.k8s_uid": uid,
                                                     "ganops.checkpoint": f"s3://runs/ganops/{name}/checkpoints/epoch_0001"})  # fmt: skip
    st = wait_for("mlflowRunId", lambda: (s := status_of(admin, name)).get("mlflowRunId") and s)
    assert st["mlflowRunId"] == run.info.run_id
    assert st["latestCheckpoint"].endswith("epoch_0001")
    # The trainer's health verdict (the ganops.health tag) becomes the TrainingHealthy condition.
    client.set_tag(run.info.run_id, "ganops.health", "d_overpowers_g: D(G(z)) 0.002 < 0.05 in 5 reports")

    def healthy() -> dict[str, Any] | None:
        return next((c for c in status_of(admin, name).get("conditions", []) if c["type"] == "TrainingHealthy"), None)

    sick = wait_for("TrainingHealthy False", lambda: (c := healthy()) and c["status"] == "False" and c)
    assert sick["reason"] == "DOverpowersG" and "D(G(z)) 0.002" in sick["message"]
    client.set_tag(run.info.run_id, "ganops.health", "ok")
    wait_for("TrainingHealthy True", lambda: (c := healthy()) and c["status"] == "True")

    # The end: the trainer tags its final checkpoint, then the job finishes. A finished job
    # gets one more poll, so its status does not stop at the checkpoint of the last poll
    # while it ran (here one poller, driven by hand: the operator's own polls every second).
    client.set_tag(run.info.run_id, "ganops.checkpoint", f"s3://runs/ganops/{name}/checkpoints/epoch_0002")
    admin.patch_namespaced_custom_object_status(G, V, NS, "ganjobs", name, {"status": {"phase": "Succeeded"}})
    config = op.OperatorConfig(namespaces=(NS,), defaults=op.Defaults(env={"MLFLOW_TRACKING_URI": mlflow_server}))
    ctx = op._Context(config, admin)
    ctx.settled.update(o["metadata"]["uid"] for o in op._watched_ganjobs(ctx) if o["metadata"]["name"] != name)
    op.poll_mlflow_once(ctx)
    assert status_of(admin, name)["latestCheckpoint"].endswith("epoch_0002")
    assert uid in ctx.settled


@slow
def test_the_operator_forgets_a_finished_job_once_it_is_deleted(
    cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator remembers which finished GANJobs have had their last MLflow poll; a
    deleted one must leave that memory, else it grows with every job over the operator's life."""
    settled: set[str] = cluster["ctx"].settled

    def finished(name: str) -> str:
        """A job taken to its end as KubeRay reports it, once the poller has settled it: its uid."""
        submitted(admin, name, capsys)
        uid = ganjob(admin, name)["metadata"]["uid"]
        kuberay_sets(admin, name, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
        wait_phase(admin, name, "Succeeded")
        wait_for(f"{name}'s last MLflow poll", lambda: uid in settled)
        return uid

    gone, canary = unique("gone"), unique("canary")
    try:
        uid = finished(gone)
        _delete_job_and_rayjob(admin, gone, ns=NS)
        # The canary finishes after the deletion: once it is settled, a poll has listed the
        # jobs since the deletion (the poller's own, every second), and had its chance to forget.
        finished(canary)
        remembered = set(settled)
        live = {o["metadata"]["uid"] for o in admin.list_namespaced_custom_object(G, V, NS, "ganjobs")["items"]}
        assert uid not in remembered, "a deleted GANJob is still remembered as settled"
        assert remembered <= live, remembered - live
    finally:
        for name in (gone, canary):
            _delete_job_and_rayjob(admin, name, ns=NS)


@slow
def test_unwatched_namespace_is_left_alone(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere, canary = unique("elsewhere"), unique("canary")
    body = {"apiVersion": f"{G}/{V}", "kind": "GANJob", "metadata": {"name": elsewhere, "namespace": OTHER},
            "spec": {"data": {"dataset": "fake"}}}  # fmt: skip
    admin.create_namespaced_custom_object(G, V, OTHER, "ganjobs", body)
    try:
        # A job created after it in the watched namespace: once the operator has handled
        # that one, it has had its chance at the first.
        submitted(admin, canary, capsys)
        assert "status" not in ganjob(admin, elsewhere, ns=OTHER)
        names = [
            r["metadata"]["name"]
            for r in admin.list_namespaced_custom_object("ray.io", "v1", OTHER, "rayjobs")["items"]
        ]
        assert elsewhere not in names
    finally:
        admin.delete_namespaced_custom_object(G, V, OTHER, "ganjobs", elsewhere)


@slow
def test_the_operator_never_hit_a_permission_error(
    cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing rights show up as kopf's 403 warnings: a job taken through create, mirror,
    MLflow polls and cancel must leave none (nor may anything earlier in the module)."""
    name = unique("dcgan")
    submitted(admin, name, capsys)
    kuberay_sets(admin, name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_phase(admin, name, "Running")
    code, _, err = cli("cancel", name, capsys=capsys)
    assert code == 0, err
    wait_phase(admin, name, "Cancelled")
    wait_for("suspend", lambda: rayjob(admin, name)["spec"].get("suspend") is True)
    bad = [r for r in cluster["log"].records if re.search(r"\b403\b|Forbidden|permission", r, re.IGNORECASE)]
    assert bad == []


@slow
def test_cli_errors_are_clean(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("dcgan")
    submitted(admin, name, capsys)
    code, _, err = cli("status", "nope", capsys=capsys)
    assert code == 2 and "no GANJob or GANGeneration named 'nope' in namespace team-a" in err
    code, _, err = cli("logs", name, capsys=capsys)
    assert code == 2 and "no driver pod yet" in err
    code, _, err = cli("list", "-n", OTHER, capsys=capsys)
    assert code == 0


@slow
def test_a_user_without_rights_gets_a_clear_error(kube_api: kube.KubeAPI, cluster: dict, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig(kube.USER_TOKEN, NS, name="alice")))
    code, _, err = cli("list", capsys=capsys)
    assert code == 2 and "not allowed to list ganjobs in namespace team-a" in err and "Traceback" not in err


@slow
def test_no_finalizers(cluster: dict, admin: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing may block `kubectl delete ganjob` while the operator is down."""
    name = unique("dcgan")
    submitted(admin, name, capsys)  # kopf adds a finalizer, if any, before the handlers run
    items = admin.list_namespaced_custom_object(G, V, NS, "ganjobs")["items"]
    assert name in [i["metadata"]["name"] for i in items]
    for item in items:
        assert not item["metadata"].get("finalizers"), item["metadata"]["name"]


@slow
def test_the_chart_grants_exactly_what_the_operator_declares(chart_docs: list[dict[str, Any]]) -> None:
    """This module runs the operator under these rules (a missing one fails it); the
    declaration is what the operator does, each rule with its reason (an extra one fails here)."""
    from ganops.k8s import rbac

    assert helm.rule_set(helm.operator_rules(chart_docs)) == set(rbac.NAMESPACED)


def _chart_operator(
    kube_api: kube.KubeAPI, kubeconfig_name: str
) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
    """The chart's operator of a release in team-b, watching team-b: its docs, its command
    line (this venv's ganops, the chart's args) and its environment (the chart's env, the kube
    config of its ServiceAccount)."""
    import sys

    docs = helm.render({}, namespace=OTHER)
    container = helm.operator_container(docs)
    (sa,) = [d for d in helm.rbac_docs(docs) if d["kind"] == "ServiceAccount"]
    token = kube.sa_token(OTHER, sa["metadata"]["name"])
    kubeconfig = str(kube_api.kubeconfig(token, OTHER, name=kubeconfig_name))
    env = {**os.environ, **helm.operator_env(docs), "KUBECONFIG": kubeconfig}
    env.pop("HOME", None)
    command = [str(Path(sys.executable).with_name("ganops")), *container["command"][1:], *container["args"]]
    return docs, command, env


def _fake_ganjob(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "GANJob", "metadata": {"name": name, "namespace": OTHER},
            "spec": {"data": {"dataset": "fake"}, "storage": "s3://runs/x"}}  # fmt: skip


def _delete_job_and_rayjob(admin: Any, name: str, ns: str = OTHER) -> None:
    """No garbage collector runs here: remove the RayJob as well as its owner (either may be gone)."""
    for group, version, plural in ((G, V, "ganjobs"), ("ray.io", "v1", "rayjobs")):
        try:
            admin.delete_namespaced_custom_object(group, version, ns, plural, name)
        except Exception as e:  # noqa: BLE001 - not created (a test that failed early), or deleted already
            assert getattr(e, "status", None) == 404, e


@slow
def test_operator_run_command(kube_api: kube.KubeAPI, cluster: dict, admin: Any) -> None:
    """`ganops operator run` as the chart's Deployment runs it: its own process, the kube
    config of its ServiceAccount, the chart's args and env, a liveness endpoint, SIGTERM."""
    import signal
    import subprocess
    import urllib.request

    from tests.helpers import free_port

    name = unique("by-command")
    docs, command, env = _chart_operator(kube_api, "op-b")
    port = free_port()
    command = [a.replace("0.0.0.0:8080", f"127.0.0.1:{port}") for a in command]
    assert command[-2:] == ["--namespace", OTHER]
    with helm.applied(kube_api, helm.rbac_docs(docs)):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(
                "/healthz",
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200,
                60,
            )
            admin.create_namespaced_custom_object(G, V, OTHER, "ganjobs", _fake_ganjob(name))
            rj = wait_for("the RayJob", lambda: rayjob(admin, name, ns=OTHER))
            assert (
                rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
                == env["GANOPS_IMAGE"]
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            _delete_job_and_rayjob(admin, name)
    assert proc.returncode == 0, out[-3000:]
    assert "403" not in out and "Forbidden" not in out, out[-3000:]


@slow
def test_an_operator_killed_right_after_creating_a_rayjob_leaves_exactly_one_and_cleans_up_deletions(
    kube_api: kube.KubeAPI, cluster: dict, admin: Any
) -> None:
    """`ganops operator run` SIGKILLed as soon as its RayJob exists (before it could write the
    GANJob's status), then started again: the RayJob is adopted, not duplicated or replaced;
    and a GANJob deleted while the operator runs takes its RayJob with it (here, where no
    garbage collector runs, through the operator's on-delete handler)."""
    import signal
    import subprocess

    name = unique("killed-op")
    docs, command, env = _chart_operator(kube_api, "op-k")
    command = [a for a in command if not a.startswith("--liveness") and "8080" not in a]

    def start(fault: str | None = None) -> subprocess.Popen[str]:
        extra = {"GANOPS_FAULT": fault} if fault else {}
        return subprocess.Popen(command, env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip

    with helm.applied(kube_api, helm.rbac_docs(docs)), tempfile.TemporaryDirectory() as tmp:
        # The operator SIGKILLs itself right after creating the RayJob (ganops.faults).
        proc = start(f"after-rayjob-create:{name}:{tmp}/fired")
        try:
            admin.create_namespaced_custom_object(G, V, OTHER, "ganjobs", _fake_ganjob(name))
            proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGKILL and Path(f"{tmp}/fired").exists()
            first = rayjob(admin, name, ns=OTHER)
            assert not status_of(admin, name, ns=OTHER).get("phase")  # it died before writing the status
            proc = start()
            # The restarted operator resumes the job: it finds its RayJob and marks the job Pending.
            wait_for("Pending", lambda: status_of(admin, name, ns=OTHER).get("phase") == "Pending", 60)
            items = admin.list_namespaced_custom_object("ray.io", "v1", OTHER, "rayjobs")["items"]
            ours = [i for i in items if i["metadata"]["name"] == name]
            assert len(ours) == 1 and ours[0]["metadata"]["uid"] == first["metadata"]["uid"]
            t0 = time.time()
            admin.delete_namespaced_custom_object(G, V, OTHER, "ganjobs", name)

            def gone() -> bool:
                try:
                    rayjob(admin, name, ns=OTHER)
                except Exception as e:  # noqa: BLE001 - ApiException 404: deleted
                    return getattr(e, "status", None) == 404
                return False

            wait_for("the RayJob deleted with its GANJob", gone, 30)
            assert time.time() - t0 < 30
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            _delete_job_and_rayjob(admin, name)
    assert "Traceback" not in out, out[-3000:]


@slow
def test_a_stale_rayjob_that_vanishes_while_being_replaced_is_recreated_within_seconds(
    cluster: dict, admin: Any
) -> None:
    """The race of a resubmit (it failed a CI run): the new GANJob's create meets the old
    RayJob (409), and the old GANJob's deletion handler removes that RayJob before the
    operator reads it (404). The operator must recreate it on a short retry, not after
    kopf's 60 s default for an unexpected exception. The API calls are real; only the
    interleaving is forced, by deleting the RayJob right after the conflict."""
    import kopf
    from kubernetes.client.exceptions import ApiException

    from ganops.k8s.render import Defaults, render

    name = unique("vanish")
    try:
        old = admin.create_namespaced_custom_object(G, V, OTHER, "ganjobs", _fake_ganjob(name))
        admin.create_namespaced_custom_object("ray.io", "v1", OTHER, "rayjobs", render(old, Defaults()))
        admin.delete_namespaced_custom_object(G, V, OTHER, "ganjobs", name)  # no garbage collector here
        new = admin.create_namespaced_custom_object(G, V, OTHER, "ganjobs", _fake_ganjob(name))

        class Racing:
            """The admin API, with the old RayJob deleted just after the create's conflict."""

            def __getattr__(self, attr: str) -> Any:
                return getattr(admin, attr)

            def create_namespaced_custom_object(self, *args: Any) -> Any:
                try:
                    return admin.create_namespaced_custom_object(*args)
                except ApiException as e:
                    if e.status == 409:
                        admin.delete_namespaced_custom_object("ray.io", "v1", OTHER, "rayjobs", name)
                    raise

        ctx = op._Context(op.OperatorConfig(namespaces=(OTHER,)), Racing())
        with pytest.raises(kopf.TemporaryError) as retry:
            op.ensure_rayjob(ctx, new, kopf.Patch(), name, OTHER)
        assert retry.value.delay is not None and retry.value.delay <= 5, retry.value
        patch = kopf.Patch()
        op.ensure_rayjob(ctx, new, patch, name, OTHER)  # kopf's retry
        owners = [o["uid"] for o in rayjob(admin, name, ns=OTHER)["metadata"]["ownerReferences"]]
        assert owners == [new["metadata"]["uid"]] and patch["status"]["phase"] == "Pending"
    finally:
        _delete_job_and_rayjob(admin, name)
