"""The KubeRay stand-in (tests/kuberay) against a real API server, on RayJobs rendered by ganops.

The schema tests need no server: every field the stand-in reads or writes must exist in
KubeRay's real CRDs (../shared/kuberay/crds). The rest run ``python -m tests.kuberay`` as a
process against kube-apiserver v1.20 (tests/kube.py; no scheduler, no kubelet, no Job
controller, no garbage collector). Since nothing runs pods there, a test plays the missing
parts itself: it marks pods Running and Ready through their status, sets the submitter Job's
conditions, and serves the Ray dashboard's ``/api/jobs/<id>`` from a tiny HTTP server (a
stand-in for the Ray head in this test only). Every RayJob status the API server stores is
recorded through a watch, so transitions are checked as ganops's operator would see them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ganops.client import load_job
from ganops.k8s.objects import custom_object
from ganops.k8s.render import Defaults, render
from tests import helpers
from tests.helpers import JOBS, REPO
from tests.kuberay import crds, fields, pods
from tests.kuberay import names as n
from tests.kuberay.api import ApiError, Kube
from tests.kuberay.dashboard import DashboardError, resolver

pytestmark = [
    pytest.mark.slow,
    # The test API server's own certificate (tests/kube.py): not verified, by design.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

NS = "kuberay-standin"
TOKEN = "standin-test-token"
SUFFIX = "[bcdfghjklmnpqrstvwxz2456789]{5}"  # k8s.io/apimachinery rand.String's alphabet
DEFAULTS = Defaults(image="registry.example/ganops:0.1.0")
BATCH = "/apis/batch/v1"


# --- the fields the stand-in uses exist in KubeRay's real schema ---------------------------------


def _schema_node(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The schema of ``path`` (dotted; ``[]`` for array items; map keys via additionalProperties)."""
    node = schema
    for part in path.split("."):
        key, is_list = (part[:-2], True) if part.endswith("[]") else (part, False)
        props = node.get("properties") or {}
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
        if is_list:
            if node.get("type") != "array":
                return None
            node = node["items"]
    return node


def _missing(kind: str, paths: list[str]) -> list[str]:
    schema = crds.real_schema(kind)
    return [p for p in paths if _schema_node(schema, p) is None]


def _read_paths(kind: str) -> list[str]:
    templates = [f"{t}.{sub}" for t in fields.TEMPLATE_PATHS[kind] for sub in fields.TEMPLATE_READS]
    return [*fields.READS[kind], *templates]


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_every_field_the_standin_reads_exists_in_kuberays_crd(kind: str) -> None:
    assert _missing(kind, _read_paths(kind)) == []


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_every_status_field_the_standin_writes_exists_in_kuberays_crd(kind: str) -> None:
    assert _missing(kind, list(fields.STATUS_WRITES[kind])) == []
    # A RayJob carries a copy of its RayCluster's status.
    nested = [p.replace("status.", "status.rayClusterStatus.", 1) for p in fields.RAYCLUSTER_STATUS_WRITES]
    assert _missing("RayJob", nested) == []


def test_the_schema_check_can_fail() -> None:
    assert _missing("RayJob", ["spec.entrypoint", "spec.entrypoints", "status.failed.count", "spec.rayClusterSpec[]"]) == [
        "spec.entrypoints", "status.failed.count", "spec.rayClusterSpec[]",
    ]  # fmt: skip


def test_the_standin_refuses_to_read_or_write_an_undeclared_field() -> None:
    job = fields.Reader("RayJob", {"spec": {"entrypoint": "x", "entrypoints": "y"}})
    assert job.get("spec.entrypoint") == "x"
    with pytest.raises(fields.UndeclaredFieldError):
        job.get("spec.entrypoints")
    with pytest.raises(fields.UndeclaredFieldError):
        fields.Reader("RayCluster", {}).items("spec.headGroupSpecs")
    with pytest.raises(fields.UndeclaredFieldError):
        fields.check_status_writes("RayJob", {"jobStatus": "RUNNING", "phase": "Running"})
    with pytest.raises(fields.UndeclaredFieldError):
        fields.Status("RayJob", {}).get("phase")


def test_ray_start_takes_cpus_memory_and_gpus_from_the_container_limits() -> None:
    limits = {"cpu": "500m", "memory": "1536Mi", "nvidia.com/gpu": "2"}
    assert pods.ray_start_command(n.WORKER, {"address": "h:6379", "block": "true", "log-color": "true"}, {"limits": limits}) == (
        "ray start  --address=h:6379  --block  --log-color=true  --memory=1610612736  --num-cpus=1  --num-gpus=2 "
    )  # fmt: skip
    # Given rayStartParams win; a request stands in for a missing CPU limit.
    assert (
        pods.ray_start_command(n.HEAD, {"num-cpus": "0"}, {"requests": {"cpu": "3"}})
        == "ray start --head  --num-cpus=0 "
    )
    assert pods.ray_start_command(n.HEAD, {}, {"requests": {"cpu": "3"}}) == "ray start --head  --num-cpus=3 "


def test_the_dashboard_is_reached_where_the_flag_says() -> None:
    rayjob = {"status": {"dashboardURL": "c-head-svc.ns.svc.cluster.local:8265"}}
    cluster = {"status": {"head": {"serviceIP": "10.0.0.7", "podIP": "10.0.0.7"}}}
    assert resolver("service-ip")(rayjob, cluster) == "http://10.0.0.7:8265"
    assert resolver("fqdn")(rayjob, cluster) == "http://c-head-svc.ns.svc.cluster.local:8265"
    assert resolver("http://127.0.0.1:9999/")(rayjob, cluster) == "http://127.0.0.1:9999"
    with pytest.raises(DashboardError):  # no head yet: nothing to dial
        resolver("service-ip")(rayjob, {"status": {}})
    with pytest.raises(ValueError, match="--dashboard-address"):
        resolver("10.0.0.7")


# --- the fake Ray head and the API server ----------------------------------------------------------


class FakeDashboard:
    """The Ray dashboard's Jobs API, with job statuses set by the test."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.stopped: list[str] = []
        self.auth: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                outer.auth.add(self.headers.get("x-ray-authorization", ""))
                job = outer.jobs.get(self.path.removeprefix("/api/jobs/"))
                self._reply(200, job) if job else self._reply(404, {"detail": "no such job"})

            def do_POST(self) -> None:
                job_id = self.path.removeprefix("/api/jobs/").removesuffix("/stop")
                outer.stopped.append(job_id)
                if job_id in outer.jobs:
                    outer.jobs[job_id]["status"] = "STOPPED"
                self._reply(200, {"stopped": True})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, job_id: str, status: str, message: str = "") -> None:
        ms = int(time.time() * 1000)
        job = self.jobs.setdefault(job_id, {"submission_id": job_id, "start_time": ms})
        job.update(status=status, message=message)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            job["end_time"] = ms


class Statuses:
    """Every RayJob status the API server stores, in order (a watch, as an operator sees them)."""

    def __init__(self, kube: Kube) -> None:
        self.kube, self.stop = kube, threading.Event()
        self.seen: dict[str, list[tuple[str, str]]] = defaultdict(list)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        from kubernetes import client, watch

        custom = client.CustomObjectsApi(self.kube.client)
        rv = None
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(custom.list_namespaced_custom_object, n.GROUP, n.VERSION, NS, "rayjobs",
                                   resource_version=rv, timeout_seconds=5):  # fmt: skip
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    st = obj.get("status") or {}
                    row = (st.get("jobDeploymentStatus", ""), st.get("jobStatus", ""))
                    rows = self.seen[obj["metadata"]["name"]]
                    if not rows or rows[-1] != row:
                        rows.append(row)
                    if self.stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - a dropped watch restarts from the last version
                time.sleep(0.2)
            finally:
                w.stop()

    def deployment(self, name: str) -> list[str]:
        out: list[str] = []
        for ds, _ in self.seen[name]:
            if not out or out[-1] != ds:
                out.append(ds)
        return out


@pytest.fixture(scope="module")
def kube(kube_api: Any) -> Kube:
    kube_api.apply(
        [crds.permissive_crd("RayCluster"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]
    )
    k = Kube(kube_api.api_client())

    def served() -> bool:
        try:
            return k.list(k.ray_path("RayCluster", NS)) is not None
        except ApiError:
            return False

    wait_for("the RayCluster kind to be served", served)
    return k


@pytest.fixture(scope="module")
def dashboard() -> Iterator[FakeDashboard]:
    d = FakeDashboard()
    yield d
    d.server.shutdown()


@pytest.fixture(scope="module")
def standin(
    kube_api: Any, kube: Kube, dashboard: FakeDashboard, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """``python -m tests.kuberay`` for this module's namespace only (other tests share the server)."""
    home = tmp_path_factory.mktemp("standin")
    (home / "token").write_text(TOKEN + "\n")
    log = home / "standin.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kuberay", "--kubeconfig", str(kube_api.kubeconfig()), "--namespace", NS,
         "--dashboard-address", dashboard.url, "--dashboard-token-file", str(home / "token"), "--interval", "0.2"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
    )  # fmt: skip
    try:
        wait_for("the stand-in to start", lambda: "watching RayJobs" in log.read_text() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        yield log
        # The RayJobs carry KubeRay's finalizer: the stand-in lets them go.
        for job in kube.list(kube.ray_path("RayJob", NS)):
            kube.delete(kube.ray_path("RayJob", NS, job["metadata"]["name"]))
        wait_for("every RayJob to go", lambda: kube.list(kube.ray_path("RayJob", NS)) == [])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
        assert "got SIGTERM; stopping" in log.read_text() and "reconcile failed" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def statuses(kube: Kube) -> Iterator[Statuses]:
    s = Statuses(kube)
    yield s
    s.stop.set()


# --- helpers --------------------------------------------------------------------------------------


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 20) -> Any:
    return helpers.wait_for(what, fn, timeout, every=0.05)


def submit(kube: Kube, prefix: str, *overrides: str) -> dict[str, Any]:
    """The RayJob ganops renders for jobs/mnist_dcgan.yaml, created in the test namespace."""
    obj = custom_object(load_job(JOBS / "mnist_dcgan.yaml", list(overrides), resolve_paths=False), NS)
    obj["metadata"]["uid"] = str(uuid.uuid4())
    rayjob = render(obj, DEFAULTS)
    rayjob["metadata"]["name"] = f"{prefix}-{uuid.uuid4().hex[:6]}"
    del rayjob["metadata"]["ownerReferences"]  # no GANJob here (tests/test_operator.py covers that link)
    return kube.create(kube.ray_path("RayJob", NS), rayjob)


def rayjob(kube: Kube, name: str) -> dict[str, Any]:
    return kube.get(kube.ray_path("RayJob", NS, name)) or {}


def status(kube: Kube, name: str) -> dict[str, Any]:
    return rayjob(kube, name).get("status") or {}


def wait_status(kube: Kube, name: str, ds: str, timeout: float = 20, **expect: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(kube, name)
        return st if st.get("jobDeploymentStatus") == ds and all(st.get(k) == v for k, v in expect.items()) else None

    return wait_for(f"RayJob {name} {ds} {expect}", check, timeout)


def cluster_pods(kube: Kube, cluster: str) -> list[dict[str, Any]]:
    return kube.list(kube.core_path("pods", NS), {n.CLUSTER_LABEL: cluster})


def make_ready(kube: Kube, cluster: str, workers: int) -> None:
    """What the kubelet would report: every pod of the cluster Running and Ready."""
    all_pods = wait_for(
        f"{workers + 1} pods of {cluster}", lambda: len(p := cluster_pods(kube, cluster)) == workers + 1 and p
    )
    for i, pod in enumerate(all_pods):
        kube.merge_patch(kube.core_path("pods", NS, pod["metadata"]["name"]) + "/status", {"status": {
            "phase": "Running", "podIP": f"10.1.0.{i + 10}",
            "conditions": [{"type": "Ready", "status": "True"}],
        }})  # fmt: skip


def finish_submitter(kube: Kube, name: str, condition: str, reason: str = "", message: str = "") -> None:
    """What the Job controller would report when the submitter pod ends."""
    cond = {"type": condition, "status": "True", "reason": reason, "message": message}
    counts = {"succeeded": 1} if condition == "Complete" else {"failed": 3}
    kube.merge_patch(
        kube.core_path("jobs", NS, name, group=BATCH) + "/status", {"status": {"conditions": [cond], **counts}}
    )


def to_running(kube: Kube, name: str, workers: int) -> dict[str, Any]:
    st = wait_status(kube, name, "Initializing")
    wait_for("the RayCluster", lambda: kube.get(kube.ray_path("RayCluster", NS, st["rayClusterName"])))
    make_ready(kube, st["rayClusterName"], workers)
    return wait_status(kube, name, "Running")


def owner(obj: dict[str, Any]) -> dict[str, Any]:
    (ref,) = obj["metadata"]["ownerReferences"]
    return ref


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def leaf_paths(obj: Any, prefix: str) -> list[str]:
    if isinstance(obj, dict) and obj:
        return [p for k, v in obj.items() for p in leaf_paths(v, f"{prefix}.{k}")]
    if isinstance(obj, list) and obj:
        return [p for v in obj for p in leaf_paths(v, f"{prefix}[]")]
    return [prefix]


# --- the stand-in at work -------------------------------------------------------------------------


def test_a_rayjob_runs_to_complete_on_a_cluster_built_as_kuberay_builds_it(
    kube: Kube, standin: Path, dashboard: FakeDashboard, statuses: Statuses
) -> None:
    job = submit(kube, "happy", "spec.scaling.num_workers=2", "spec.cluster.ttl_seconds_after_finished=4")
    name, uid = job["metadata"]["name"], job["metadata"]["uid"]
    st = wait_status(kube, name, "Initializing")
    cluster_name, job_id = st["rayClusterName"], st["jobId"]
    assert re.fullmatch(f"{name}-{SUFFIX}", cluster_name) and re.fullmatch(f"{name}-{SUFFIX}", job_id)
    assert n.parse_time(st["startTime"]) and n.RAYJOB_FINALIZER in rayjob(kube, name)["metadata"]["finalizers"]

    # The RayCluster: the RayJob's cluster spec, owned by the RayJob (the garbage collector's link).
    cluster = wait_for("the RayCluster", lambda: kube.get(kube.ray_path("RayCluster", NS, cluster_name)))
    assert cluster["spec"] == job["spec"]["rayClusterSpec"]
    assert owner(cluster) == {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": name, "uid": uid,
                              "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    assert cluster["metadata"]["labels"] == {**job["metadata"]["labels"], "ray.io/originated-from-cr-name": name,
                                             "ray.io/originated-from-crd": "RayJob"}  # fmt: skip
    cluster_ref = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "name": cluster_name,
                   "uid": cluster["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip

    # The head Service: headless, the head container's ports plus metrics.
    svc_name = f"{cluster_name}-head-svc"
    service = wait_for("the head Service", lambda: kube.get(kube.core_path("services", NS, svc_name)))
    selector = {"ray.io/cluster": cluster_name, "ray.io/node-type": "head", "ray.io/identifier": f"{cluster_name}-head",
                "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}  # fmt: skip
    assert service["spec"]["selector"] == selector and service["metadata"]["labels"] == selector
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert [(p["name"], p["port"], p["appProtocol"]) for p in service["spec"]["ports"]] == [
        ("client", 10001, "tcp"), ("dashboard", 8265, "tcp"), ("gcs", 6379, "tcp"), ("metrics", 8080, "tcp")]  # fmt: skip
    assert owner(service) == cluster_ref

    # The pods: KubeRay's labels, `ray start` command and env.
    all_pods = wait_for("3 pods", lambda: len(p := cluster_pods(kube, cluster_name)) == 3 and p)
    (head,) = [p for p in all_pods if p["metadata"]["labels"]["ray.io/node-type"] == "head"]
    workers = [p for p in all_pods if p["metadata"]["labels"]["ray.io/node-type"] == "worker"]
    fqdn = f"{svc_name}.{NS}.svc.cluster.local"
    assert head["metadata"]["name"].startswith(f"{cluster_name}-head-") and owner(head) == cluster_ref
    assert head["metadata"]["labels"] == {"ray.io/is-ray-node": "yes", "ray.io/group": "headgroup", **selector}
    assert head["metadata"]["annotations"] == {"ray.io/ft-enabled": "false"}
    h = head["spec"]["containers"][0]
    head_start = ("ray start --head  --block  --dashboard-agent-listen-port=52365  --dashboard-host=0.0.0.0  "
                  "--memory=4294967296  --metrics-export-port=8080  --num-cpus=0 ")  # fmt: skip
    assert h["command"] == ["/bin/bash", "-c", "--"] and h["args"] == [f"ulimit -n 65536; {head_start}"]
    assert env_of(h) == {
        **env_of(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]),
        "RAY_CLUSTER_NAME": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels['ray.io/cluster']"}},
        "RAY_CLOUD_INSTANCE_ID": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        "RAY_NODE_TYPE_NAME": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels['ray.io/group']"}},
        "KUBERAY_GEN_RAY_START_CMD": head_start,
        "RAY_PORT": "6379", "RAY_ADDRESS": "127.0.0.1:6379", "RAY_USAGE_STATS_KUBERAY_IN_USE": "1",
        "RAY_USAGE_STATS_EXTRA_TAGS": "kuberay_version=v1.5.1;kuberay_crd=RayJob",
        "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE": "1",
    }  # fmt: skip
    assert {"name": "metrics", "containerPort": 8080, "protocol": "TCP"} in h["ports"]
    assert "wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success && " \
           "wget --tries 1 -T 10 -q -O- http://localhost:8265/api/gcs_healthz | grep success" in \
           h["readinessProbe"]["exec"]["command"][2]  # fmt: skip
    assert len(workers) == 2
    for w in workers:
        assert w["metadata"]["name"].startswith(f"{cluster_name}-workers-worker-") and owner(w) == cluster_ref
        assert w["metadata"]["labels"]["ray.io/group"] == "workers"
        c = w["spec"]["containers"][0]
        start = (f"ray start  --address={fqdn}:6379  --block  --dashboard-agent-listen-port=52365  "
                 "--memory=8589934592  --metrics-export-port=8080  --num-cpus=2 ")  # fmt: skip
        assert c["args"] == [f"ulimit -n 65536; {start}"]
        env = env_of(c)
        assert env["FQ_RAY_IP"] == fqdn and env["RAY_IP"] == svc_name and env["RAY_ADDRESS"] == f"{fqdn}:6379"
        assert env["KUBERAY_GEN_RAY_START_CMD"] == start and "RAY_USAGE_STATS_EXTRA_TAGS" not in env
        (init,) = w["spec"]["initContainers"]
        assert init["name"] == "wait-gcs-ready" and f"ray health-check --address {fqdn}:6379" in init["args"][0]
        assert env_of(init)["FQ_RAY_IP"] == fqdn

    # All pods Running and Ready: the cluster is ready, the submitter Job goes out.
    make_ready(kube, cluster_name, 2)
    st = wait_status(kube, name, "Running")
    assert st["dashboardURL"] == f"{fqdn}:8265"
    cluster = kube.get(kube.ray_path("RayCluster", NS, cluster_name))
    cs = cluster["status"]
    assert cs["state"] == "ready" and cs["readyWorkerReplicas"] == 2 == cs["desiredWorkerReplicas"]
    head_ip = kube.get(kube.core_path("pods", NS, head["metadata"]["name"]))["status"]["podIP"]
    # A headless Service has no IP of its own: KubeRay reports the head pod's.
    assert cs["head"] == {
        "podIP": head_ip,
        "podName": head["metadata"]["name"],
        "serviceIP": head_ip,
        "serviceName": svc_name,
    }
    assert (cs["desiredCPU"], cs["desiredMemory"], cs["desiredGPU"]) == ("5", "20Gi", "0")
    assert cs["endpoints"] == {"client": "10001", "dashboard": "8265", "gcs": "6379", "metrics": "8080"}
    assert {c["type"]: c["status"] for c in cs["conditions"]} == {
        "HeadPodReady": "True",
        "RayClusterProvisioned": "True",
    }
    sub = kube.get(kube.core_path("jobs", NS, name, group=BATCH))
    assert owner(sub) == {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": name, "uid": uid,
                          "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    assert sub["spec"]["backoffLimit"] == 2
    (c,) = sub["spec"]["template"]["spec"]["containers"]
    address = f"http://{fqdn}:8265"
    assert c["image"] == DEFAULTS.image and c["command"] == ["/bin/bash", "-ce", "--"]
    assert c["args"] == [f"if ! ray job status --address {address} {job_id} >/dev/null 2>&1 ; then "
                         f"ray job submit --address {address} --no-wait --submission-id {job_id} -- "
                         f"{job['spec']['entrypoint']} ; fi ; ray job logs --address {address} --follow {job_id}"]  # fmt: skip
    assert env_of(c) == {
        "PYTHONUNBUFFERED": "1",
        "RAY_DASHBOARD_ADDRESS": f"{fqdn}:8265",
        "RAY_JOB_SUBMISSION_ID": job_id,
    }
    # v1.5: a head Service named after the RayJob, that outlives the attempt's cluster.
    job_svc = wait_for(
        "the RayJob's head Service", lambda: kube.get(kube.core_path("services", NS, f"{name}-head-svc"))
    )
    assert job_svc["spec"]["selector"] == selector and owner(job_svc)["uid"] == uid
    assert job_svc["metadata"]["labels"] == {"ray.io/originated-from-cr-name": name, "ray.io/originated-from-crd": "RayJob",
                                             "ray.io/node-type": "head", "ray.io/identifier": f"{name}-head"}  # fmt: skip

    # The Ray job runs, then succeeds; the submitter's `ray job logs` ends with it.
    dashboard.set(job_id, "RUNNING")
    wait_status(kube, name, "Running", jobStatus="RUNNING")
    dashboard.set(job_id, "SUCCEEDED", "Job finished successfully.")
    time.sleep(0.5)
    assert status(kube, name)["jobDeploymentStatus"] == "Running"  # not before the submitter ends
    finish_submitter(kube, name, "Complete")
    st = wait_status(kube, name, "Complete", jobStatus="SUCCEEDED")
    assert (st["succeeded"], st["failed"], st["message"]) == (1, 0, "Job finished successfully.")
    assert n.parse_time(st["endTime"]) and st["rayJobInfo"]["endTime"] and st["rayClusterStatus"]["state"] == "ready"

    # ttlSecondsAfterFinished (4 s) after endTime the cluster goes; the submitter Job stays for its logs.
    assert kube.get(kube.ray_path("RayCluster", NS, cluster_name)) is not None
    wait_for("the RayCluster to go", lambda: kube.get(kube.ray_path("RayCluster", NS, cluster_name)) is None, 10)
    assert time.time() >= n.parse_time(st["endTime"]).timestamp() + 4
    assert kube.get(kube.core_path("jobs", NS, name, group=BATCH)) is not None
    assert statuses.deployment(name) == ["", "Initializing", "Running", "Complete"]
    assert dashboard.auth == {f"Bearer {TOKEN}"}  # the token file's token, on every request

    # What the stand-in wrote is KubeRay's own status schema.
    assert _missing("RayJob", leaf_paths(st, "status")) == []
    assert _missing("RayCluster", leaf_paths(cs, "status")) == []


def test_a_deleted_worker_pod_is_recreated(kube: Kube, standin: Path) -> None:
    job = submit(kube, "heal", "spec.scaling.num_workers=2")
    st = wait_status(kube, job["metadata"]["name"], "Initializing")
    cluster = st["rayClusterName"]

    def workers() -> list[str]:
        return sorted(
            p["metadata"]["name"]
            for p in cluster_pods(kube, cluster)
            if p["metadata"]["labels"]["ray.io/node-type"] == "worker"
        )

    before = wait_for("2 workers", lambda: len(w := workers()) == 2 and w)
    kube.delete(kube.core_path("pods", NS, before[0]))
    after = wait_for("a replacement worker", lambda: len(w := workers()) == 2 and w != before and w)
    assert before[1] in after and before[0] not in after


def test_a_failed_attempt_is_retried_on_a_new_cluster_until_the_backoff_limit(
    kube: Kube, standin: Path, dashboard: FakeDashboard, statuses: Statuses
) -> None:
    job = submit(kube, "retry", "spec.scaling.num_workers=1", "spec.cluster.backoff_limit=1",
                 "spec.cluster.ttl_seconds_after_finished=0")  # fmt: skip
    name = job["metadata"]["name"]
    first = to_running(kube, name, 1)
    # Attempt 1: the Ray job fails (the submitter itself ends well: `ray job logs` exits 0).
    dashboard.set(first["jobId"], "FAILED", "boom")
    finish_submitter(kube, name, "Complete")
    second = wait_status(kube, name, "Initializing", failed=1)
    assert second["rayClusterName"] != first["rayClusterName"] and second["jobId"] != first["jobId"]
    wait_for(
        "the first cluster to go", lambda: kube.get(kube.ray_path("RayCluster", NS, first["rayClusterName"])) is None
    )
    assert "jobStatus" not in second and "dashboardURL" not in second
    # Attempt 2: the submitter cannot submit (its Job fails); no attempts are left.
    wait_for("the old submitter Job to go", lambda: kube.get(kube.core_path("jobs", NS, name, group=BATCH)) is None)
    to_running(kube, name, 1)
    wait_for(  # the RayJob's head Service follows the new head
        "the RayJob's head Service on the second cluster",
        lambda: (
            kube.get(kube.core_path("services", NS, f"{name}-head-svc"))["spec"]["selector"]["ray.io/cluster"]
            == second["rayClusterName"]
        ),
    )
    finish_submitter(kube, name, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    st = wait_status(kube, name, "Failed", failed=2)
    assert st["reason"] == "SubmissionFailed" and st["message"] == (
        "Job submission has failed. Reason: BackoffLimitExceeded. Message: Job has reached the specified backoff limit"
    )
    assert statuses.deployment(name) == [
        "",
        "Initializing",
        "Running",
        "Retrying",
        "",
        "Initializing",
        "Running",
        "Failed",
    ]
    wait_for(
        "the second cluster to go", lambda: kube.get(kube.ray_path("RayCluster", NS, second["rayClusterName"])) is None
    )


def test_the_active_deadline_fails_the_rayjob_without_a_retry(kube: Kube, standin: Path, statuses: Statuses) -> None:
    job = submit(kube, "late", "spec.scaling.num_workers=1", "spec.cluster.active_deadline_seconds=2",
                 "spec.cluster.backoff_limit=2", "spec.cluster.ttl_seconds_after_finished=0")  # fmt: skip
    name = job["metadata"]["name"]
    st = wait_status(kube, name, "Initializing")  # its pods never get ready
    failed = wait_status(kube, name, "Failed", timeout=15)
    assert failed["reason"] == "DeadlineExceeded" and failed["failed"] == 1
    assert failed["message"].startswith("The RayJob has passed the activeDeadlineSeconds. StartTime: ")
    assert failed["message"].endswith("ActiveDeadlineSeconds: 2")
    assert (n.parse_time(failed["endTime"]) - n.parse_time(st["startTime"])).total_seconds() >= 2
    wait_for("the cluster to go", lambda: kube.get(kube.ray_path("RayCluster", NS, st["rayClusterName"])) is None)
    time.sleep(0.5)  # and nothing after Failed: a deadline is not retried
    assert statuses.deployment(name) == ["", "Initializing", "Failed"]


def test_suspend_deletes_the_cluster_and_resume_starts_over(kube: Kube, standin: Path, statuses: Statuses) -> None:
    job = submit(kube, "pause", "spec.scaling.num_workers=1")
    name = job["metadata"]["name"]
    first = to_running(kube, name, 1)
    assert kube.get(kube.core_path("jobs", NS, name, group=BATCH)) is not None
    kube.merge_patch(kube.ray_path("RayJob", NS, name), {"spec": {"suspend": True}})
    st = wait_status(kube, name, "Suspended")
    assert "rayClusterName" not in st and "jobId" not in st
    assert kube.get(kube.ray_path("RayCluster", NS, first["rayClusterName"])) is None
    assert kube.get(kube.core_path("jobs", NS, name, group=BATCH)) is None
    kube.merge_patch(kube.ray_path("RayJob", NS, name), {"spec": {"suspend": False}})
    again = wait_status(kube, name, "Initializing")
    assert again["rayClusterName"] != first["rayClusterName"]
    assert wait_for("the new cluster", lambda: kube.get(kube.ray_path("RayCluster", NS, again["rayClusterName"])))
    assert statuses.deployment(name) == ["", "Initializing", "Running", "Suspending", "Suspended", "", "Initializing"]


def test_an_invalid_rayjob_fails_validation_without_a_cluster(kube: Kube, standin: Path) -> None:
    too_long = submit(kube, "x" * 41)  # 47 characters are KubeRay's limit: the cluster name adds 6
    name = too_long["metadata"]["name"]
    assert len(name) == 47 + 1
    st = wait_status(kube, name, "ValidationFailed")
    assert st["reason"] == "ValidationFailed"
    assert st["message"] == "The RayJob metadata is invalid: RayJob name should be no more than 47 characters"
    not_dns1035 = submit(kube, "1st")
    st = wait_status(kube, not_dns1035["metadata"]["name"], "ValidationFailed")
    assert st["message"].startswith("The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label: [")
    time.sleep(0.5)
    assert kube.list(kube.ray_path("RayCluster", NS), {"ray.io/originated-from-cr-name": name}) == []


def test_deleting_a_running_rayjob_stops_its_ray_job_first(kube: Kube, standin: Path, dashboard: FakeDashboard) -> None:
    job = submit(kube, "gone", "spec.scaling.num_workers=1")
    name = job["metadata"]["name"]
    st = to_running(kube, name, 1)
    dashboard.set(st["jobId"], "RUNNING")
    wait_status(kube, name, "Running", jobStatus="RUNNING")
    kube.delete(kube.ray_path("RayJob", NS, name))
    wait_for("the RayJob to go", lambda: kube.get(kube.ray_path("RayJob", NS, name)) is None)
    assert st["jobId"] in dashboard.stopped


def test_the_standin_process_stops_on_sigterm(kube_api: Any, kube: Kube, tmp_path: Path) -> None:
    log = tmp_path / "standin.log"
    proc = subprocess.Popen([sys.executable, "-m", "tests.kuberay", "--kubeconfig", str(kube_api.kubeconfig()),
                             "--namespace", "nothing-here", "--interval", "0.2"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "w"))  # fmt: skip
    try:
        wait_for("the stand-in to start", lambda: "watching RayJobs" in log.read_text() or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        lines = log.read_text().splitlines()
        assert "watching RayJobs and RayClusters in nothing-here every 0.2s" in lines[0]
        assert "got SIGTERM; stopping" in lines[-2] and lines[-1].endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
