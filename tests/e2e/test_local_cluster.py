"""The local cluster (cluster/local/up.sh, down.sh) works, and leaves the host as it found it.

One test, in order: snapshot the host; up.sh; the node is Ready; the API server, S3 and MLflow
answer on the 127.0.0.1 ports up.sh printed; a pod of the ganops image reaches S3, MLflow and
the cluster DNS at the addresses the chart gives pods, and what it writes is what the host
reads; deleting its Job garbage-collects the pod; a second up.sh only prints the environment;
down.sh (twice); the host snapshot equals the first one.

    GANOPS_E2E=1 .venv/bin/python -m pytest tests/e2e -m e2e     # as root; ≈10 min cold
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import hoststate
from tests.helpers import REPO

# A cold run builds the image (debootstrap, pip) before the cluster starts.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(4800)]

UP = REPO / "cluster" / "local" / "up.sh"
DOWN = REPO / "cluster" / "local" / "down.sh"
ENV_KEYS = {"KUBECONFIG", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI",
            "GANOPS_NAMESPACE"}  # fmt: skip
STATE = Path(os.environ.get("GANOPS_LOCAL_STATE", "/var/lib/ganops-local"))
NETNS = os.environ.get("GANOPS_LOCAL_NETNS", "ganops-local")
SUBNET_PREFIX = os.environ.get("GANOPS_LOCAL_SUBNET", "10.213.0.0/30").rsplit(".", 1)[0] + "."
PORTS = [os.environ.get(f"GANOPS_LOCAL_{k}_PORT", d) for k, d in (("API", "16443"), ("S3", "19000"),
                                                                   ("MLFLOW", "15000"))]  # fmt: skip


def run(script: Path, log: Path, timeout: float) -> tuple[str, float]:
    """Run a script of cluster/local; its stdout and seconds (stderr goes to ``log``)."""
    start = time.monotonic()
    with log.open("ab") as err:
        out = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, stderr=err, timeout=timeout, check=False)
    took = time.monotonic() - start
    if out.returncode != 0:
        pytest.fail(f"{script.name} exited {out.returncode}; its output: {log}\n{log.read_text()[-4000:]}")
    return out.stdout.decode(), took


def parse_env(stdout: str) -> dict[str, str]:
    """The ``export NAME=value`` lines; anything else on stdout breaks ``eval "$(up.sh)"``."""
    env = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"export ([A-Z_][A-Z0-9_]*)=(\S*)", line)
        assert m, f"up.sh printed a line that is not `export NAME=value`: {line!r}"
        env[m.group(1)] = m.group(2)
    return env


# --- what belongs to the cluster --------------------------------------------------------------


def cluster_process(line: str, host_net: str, host_mnt: str) -> bool:
    """A process line (hoststate.Process.line) of the cluster's: in a namespace other than
    the host's, in the cluster's cgroups, or naming its state directory, node subnet or ports."""
    if f"net={host_net} " not in line or f"mnt={host_mnt} " not in line:
        return True
    if f"/{NETNS}" in line.split(" cgroups=", 1)[1]:
        return True
    args = line.split(" net=", 1)[0]
    return str(STATE) in args or SUBNET_PREFIX in args or any(f"TCP-LISTEN:{p}," in args for p in PORTS)


def comparable(snap: hoststate.Snapshot, host_net: str, host_mnt: str) -> hoststate.Snapshot:
    """The snapshot less what other work on this shared machine changes meanwhile: its
    processes (the test compares the cluster's, see ``cluster_process``) and the listening
    sockets of those processes (only sockets on the cluster's ports, or owned by a cluster
    process, are compared). Everything else (mounts, interfaces, iptables rules, network
    namespaces, cgroups, sysctls) is compared whole."""
    ours = {str(p.pid) for p in snap.process_list if cluster_process(p.line(), host_net, host_mnt)}

    def other_process(line: str) -> bool:
        return not cluster_process(line, host_net, host_mnt)

    def other_socket(line: str) -> bool:
        port = line.split()[1].rsplit(":", 1)[-1]
        owners = {o.rsplit(":", 1)[-1] for o in line.split()[2:]}
        return port not in PORTS and not owners & ours

    return snap.without("processes", other_process).without("listening", other_socket)


# --- checks -------------------------------------------------------------------------------------


def wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f}s")
        time.sleep(1)


def node_ready(core: Any) -> bool:
    nodes = core.list_node().items
    return bool(nodes) and all(
        any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or []) for n in nodes
    )


def operator_env(apps: Any, namespace: str) -> dict[str, str]:
    """The env the chart gives the operator, which passes it on to every Ray pod."""
    dep = apps.read_namespaced_deployment("ganops-operator", namespace)
    return {e.name: e.value for e in dep.spec.template.spec.containers[0].env or [] if e.value is not None}


POD_SCRIPT = """
import os, socket, urllib.request, boto3
key = os.environ["PROBE_KEY"]
boto3.client("s3").put_object(Bucket="ganops", Key=key, Body=b"written by a pod")
print("s3 ok")
with urllib.request.urlopen(os.environ["MLFLOW_TRACKING_URI"] + "/health", timeout=10) as r:
    print("mlflow", r.status)
print("dns", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
"""


def probe_job(name: str, image: str, namespace: str, env: dict[str, str]) -> dict[str, Any]:
    """A Job like the Ray pods: the ganops image, the chart's addresses, the credentials Secret."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "probe", "image": image, "imagePullPolicy": "Never",
                    "command": ["python", "-c", POD_SCRIPT],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "envFrom": [{"secretRef": {"name": "ganops-credentials"}}],
                }],
            }},
        },
    }  # fmt: skip


def test_local_cluster_runs_ganops_pods_and_leaves_the_host_as_it_found_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    assert not Path(f"/run/netns/{NETNS}").exists(), f"a cluster is already up (netns {NETNS}): run down.sh first"
    me = os.getpid()
    host_net, host_mnt = os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/mnt")
    before = hoststate.snapshot(hoststate.descendants(me))
    log = tmp_path / "cluster.log"
    timings: dict[str, float] = {}
    try:
        stdout, timings["up"] = run(UP, log, timeout=3600)
        env = parse_env(stdout)
        assert ENV_KEYS <= env.keys()
        check_cluster(env, tmp_path)
        again, timings["up again"] = run(UP, log, timeout=300)
        assert again == stdout, "a second up.sh printed another environment"
        assert timings["up again"] < 60, "a second up.sh should only print the environment"
    finally:
        _, timings["down"] = run(DOWN, log, timeout=600)
    _, timings["down again"] = run(DOWN, log, timeout=120)
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), file=sys.stderr)
    after = hoststate.snapshot(hoststate.descendants(me))
    left = hoststate.difference(comparable(before, host_net, host_mnt), comparable(after, host_net, host_mnt))
    assert not left, f"the host differs after down.sh:\n{left}"
    assert not STATE.exists(), f"down.sh left {STATE}"


def check_cluster(env: dict[str, str], tmp_path: Path) -> None:
    import boto3
    from kubernetes import client, config, utils

    api = config.new_client_from_config(config_file=env["KUBECONFIG"])
    assert api.configuration.host.startswith("https://127.0.0.1:")
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    ns = env["GANOPS_NAMESPACE"]
    wait("the node Ready", lambda: node_ready(core), 60)

    # The host's side: S3 and MLflow on the printed 127.0.0.1 addresses.
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")  # fmt: skip
    assert "ganops" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    with urllib.request.urlopen(env["MLFLOW_TRACKING_URI"] + "/health", timeout=10) as r:
        assert r.status == 200

    # The pods' side: the addresses the chart gives the operator (and so the Ray pods).
    pod_env = operator_env(apps, ns)
    assert not pod_env["AWS_ENDPOINT_URL"].startswith("http://127."), "pods cannot reach the host's loopback"
    key = f"e2e/{uuid.uuid4().hex}"
    name = f"probe-{uuid.uuid4().hex[:8]}"
    job_env = {k: pod_env[k] for k in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION")}
    utils.create_from_dict(api, probe_job(name, pod_env["GANOPS_IMAGE"], ns, {**job_env, "PROBE_KEY": key}))

    def finished() -> bool:
        st = batch.read_namespaced_job_status(name, ns).status
        if st.failed:
            pods = core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items
            logs = [core.read_namespaced_pod_log(p.metadata.name, ns) for p in pods]
            pytest.fail(f"the probe pod failed:\n{logs}")
        return bool(st.succeeded)

    wait("the probe Job", finished, 300)
    pod = core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items[0]
    out = core.read_namespaced_pod_log(pod.metadata.name, ns)
    svc_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert "s3 ok" in out and "mlflow 200" in out and f"dns {svc_ip}" in out, out
    # What the pod wrote through the node IP is what the host reads through 127.0.0.1.
    assert s3.get_object(Bucket="ganops", Key=key)["Body"].read() == b"written by a pod"
    secret = core.read_namespaced_secret("ganops-credentials", ns).data
    assert base64.b64decode(secret["AWS_ACCESS_KEY_ID"]).decode() == env["AWS_ACCESS_KEY_ID"]

    # The garbage collector: the Job's pod goes with the Job.
    batch.delete_namespaced_job(name, ns, propagation_policy="Background")
    wait("the probe pod garbage-collected",
         lambda: not core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items, 120)  # fmt: skip
