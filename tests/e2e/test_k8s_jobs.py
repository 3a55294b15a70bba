"""GANJob → RayJob → pods → a trained generator, on the real local cluster (cluster/local/up.sh).

What a user of ``--target k8s`` does, through the ``ganops`` CLI with the environment
``up.sh`` printed, judged by what they care about: the pods trained a generator that draws
digits (the learning tier's classifier judges it), and the run landed in S3 and MLflow.
The operator runs in its pod from the chart; KubeRay is the stand-in in tests/kuberay.

    GANOPS_E2E=1 .venv/bin/python -m pytest tests/e2e/test_k8s_jobs.py     # as root (make e2e)

The module starts the cluster once (up.sh) and stops it at the end (down.sh), unless
GANOPS_E2E_KEEP=1 (then a cluster already up is used and left up).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import BUCKET, TERMINAL, Cluster
from tests.helpers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

UP = REPO / "cluster" / "local" / "up.sh"
DOWN = REPO / "cluster" / "local" / "down.sh"
NETNS = os.environ.get("GANOPS_LOCAL_NETNS", "ganops-local")
# The MNIST test split in S3 (up.sh uploads it), 3 epochs of 64-image global batches on two
# worker pods: ~470 steps, enough for the generator to leave noise and draw digits.
TRAIN_SETS = ["spec.data.root=s3://ganops/datasets/mnist", "spec.data.split=test", "spec.data.download=false",
              "spec.storage=s3://ganops/runs", "spec.scaling.num_workers=2", "spec.train.epochs=3",
              "spec.checkpoint.every_epochs=1", "spec.samples.every_epochs=1",
              # The node fits one job's Ray pods: a finished job's go at once (not after 10 min).
              "spec.cluster.ttl_seconds_after_finished=0"]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    keep = os.environ.get("GANOPS_E2E_KEEP") == "1"
    was_up = Path(f"/run/netns/{NETNS}").exists()
    if was_up and not keep:
        pytest.fail(f"a cluster is already up (netns {NETNS}): run cluster/local/down.sh, or set GANOPS_E2E_KEEP=1")
    log = tmp_path_factory.mktemp("e2e") / "cluster.log"
    t0 = time.monotonic()
    with log.open("ab") as err:
        out = subprocess.run(["bash", str(UP)], stdout=subprocess.PIPE, stderr=err, timeout=3600, check=False)
    print(f"  up.sh: {time.monotonic() - t0:.0f} s", flush=True)
    if out.returncode != 0:
        pytest.fail(f"up.sh exited {out.returncode}:\n{log.read_text()[-4000:]}")
    env = dict(re.findall(r"^export ([A-Z_][A-Z0-9_]*)=(\S*)$", out.stdout.decode(), re.M))
    try:
        yield Cluster(env, log)
    finally:
        if not keep:
            with log.open("ab") as err:
                subprocess.run(["bash", str(DOWN)], stdout=err, stderr=err, timeout=600, check=False)


# The trained job stays to the end: later tests read it, the last one deletes it.
TRAINED = "e2e-mnist"


@pytest.fixture(autouse=True)
def frees_the_node(cluster: Cluster) -> Iterator[None]:
    """After each test, its GANJobs and GANGenerations go, and their pods with them.

    The node fits one job's Ray pods: a job a failed test leaves behind (a retry after a
    failure, a timeout) would hold them and starve every test after it.
    """
    yield
    custom = cluster.k8s("custom")
    gone: list[str] = []
    for plural in ("ganjobs", "gangenerations"):
        items = custom.list_namespaced_custom_object("ganops.io", "v1alpha1", cluster.namespace, plural)["items"]
        for item in items:
            name = item["metadata"]["name"]
            if name != TRAINED:
                custom.delete_namespaced_custom_object("ganops.io", "v1alpha1", cluster.namespace, plural, name)
                gone.append(name)
    if gone:
        # Ray pods are named after their RayJob (= the owner's name); the submitter's too.
        cluster.wait(f"the pods of {gone} gone", lambda: not [
            p for p in cluster.pods("") if any(p.metadata.name.startswith(f"{n}-") for n in gone)
        ], timeout=300)  # fmt: skip


def submit(cluster: Cluster, name: str, *sets: str, spec: str = "jobs/mnist_dcgan.yaml") -> None:
    args = ["submit", spec, "--target", "k8s", "-n", cluster.namespace, "-q", "--set", f"metadata.name={name}"]
    for s in [*TRAIN_SETS, *sets]:
        args += ["--set", s]
    cluster.ganops(*args)


def worker_pods(cluster: Cluster, rayjob: str) -> list[str]:
    """Names of the running Ray worker pods of a RayJob's current cluster."""
    return [p.metadata.name for p in cluster.pods("ray.io/node-type=worker")
            if p.metadata.name.startswith(f"{rayjob}-") and p.status.phase == "Running"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(cluster: Cluster) -> dict[str, object]:
    """The main job, trained once for the tests that read its results."""
    name = TRAINED
    submit(cluster, name)
    seen: set[str] = set()

    def done() -> bool:
        seen.update(worker_pods(cluster, name))
        return cluster.phase(name) in TERMINAL

    cluster.wait(f"{name} to finish", done, timeout=1800, every=3)
    st = cluster.status(name)
    logs = cluster.ganops("logs", name, "-n", cluster.namespace, check=False).stdout
    assert st["phase"] == "Succeeded", f"{name}: {st}\n{logs[-3000:]}"
    return {"name": name, "status": st, "workers": seen, "logs": logs}


def test_mnist_dcgan_trains_on_two_worker_pods_and_lands_in_s3_and_mlflow(
    cluster: Cluster, trained: dict[str, object]
) -> None:
    import mlflow
    import torch

    name, st = trained["name"], trained["status"]
    assert isinstance(st, dict)
    assert len(trained["workers"]) == 2, f"worker pods seen running: {trained['workers']}"  # type: ignore[arg-type]

    # S3: one complete checkpoint per epoch, a sample grid per epoch, the GIF.
    keys = cluster.keys(f"runs/{name}/")
    markers = sorted(k for k in keys if k.endswith("/checkpoint.json"))
    assert [m.split("/")[-2] for m in markers if "/checkpoints/" in m][-1] == "epoch_0003", markers
    assert len([k for k in keys if "/samples/" in k and k.endswith(".png")]) >= 3, keys
    assert f"runs/{name}/samples/training.gif" in keys, keys

    # The operator's status ends on the final checkpoint (its MLflow poll after the end).
    def final_checkpoint() -> dict[str, Any] | None:
        now = cluster.status(str(name))
        return now if str(now.get("latest_checkpoint") or "").endswith("/checkpoints/epoch_0003") else None

    final = cluster.wait("the final checkpoint in the status", final_checkpoint, timeout=120, every=5)
    assert final["latest_checkpoint"] == f"s3://{BUCKET}/runs/{name}/checkpoints/epoch_0003"

    # MLflow: a finished run with curves and a generator that loads and draws digits.
    mlflow.set_tracking_uri(cluster.env["MLFLOW_TRACKING_URI"])
    run_id = str(st["mlflow_run_id"])
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    g_loss = client.get_metric_history(run_id, "g_loss")
    assert len(g_loss) >= 3 and g_loss[-1].step >= 400, [(m.step, m.value) for m in g_loss]
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/generator", map_location="cpu")

    from tests.learning.fixtures import CEILING_FRACTION
    from tests.learning.judge import Judge

    judge = Judge.create()
    floor = min(v.fd for k, v in judge.baselines().items() if not k.startswith("real"))
    # The logged generator takes [N, latent] z (ganops.model_input) and draws in [-1, 1].
    z = torch.randn(1000, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        verdict = judge.judge(torch.cat([model(z[i : i + 500]) for i in range(0, len(z), 500)]))
    print(f"\n{name}: generator from MLflow: {verdict.line()} (ceiling {CEILING_FRACTION * floor:.0f})")
    # The pods' training speed, for the README's ratio against the embedded target.
    rates = re.findall(r"epoch \d+/\d+ .*?([0-9]+) img/s", str(trained["logs"]))
    print(f"{name}: img/s on the worker pods, per progress line: {', '.join(rates) or 'none logged'}")
    assert verdict.fd < CEILING_FRACTION * floor, f"the pods' generator draws no digits: {verdict.line()}"


def test_status_list_and_logs_show_the_finished_job(cluster: Cluster, trained: dict[str, object]) -> None:
    name = str(trained["name"])
    table = cluster.ganops("status", name, "-n", cluster.namespace).stdout
    assert "Succeeded" in table and name in table
    rows = json.loads(cluster.ganops("list", "-n", cluster.namespace, "-o", "json").stdout)["items"]
    assert any(r["name"] == name and r["phase"] == "Succeeded" for r in rows), rows
    logs = str(trained["logs"])
    assert "epoch 3/3" in logs or "epoch 3" in logs, logs[-2000:]


def test_generate_on_the_cluster_writes_images_and_a_manifest_to_s3(
    cluster: Cluster, trained: dict[str, object]
) -> None:
    st = trained["status"]
    assert isinstance(st, dict)
    out = "s3://ganops/generated/e2e-mnist"
    name = "e2e-generate"
    cluster.ganops("generate", "--run-id", str(st["mlflow_run_id"]), "--num", "40", "-o", out, "--target", "k8s",
                   "-n", cluster.namespace, "--name", name, "-q")  # fmt: skip
    final = cluster.wait_phase(name, TERMINAL, timeout=900)
    assert final["phase"] == "Succeeded", final
    keys = cluster.keys("generated/e2e-mnist/")
    assert "generated/e2e-mnist/manifest.json" in keys, keys
    manifest = json.loads(
        cluster.s3().get_object(Bucket=BUCKET, Key="generated/e2e-mnist/manifest.json")["Body"].read()
    )
    assert manifest.get("count", manifest.get("num")) == 40, manifest
    assert len([k for k in keys if k.endswith(".png")]) >= 40, keys
    # Its Ray head would stay for ttlSecondsAfterFinished (600 s): frees_the_node deletes it.


def _checkpoints(cluster: Cluster, name: str) -> list[str]:
    """Complete checkpoints (marker written) of a job in S3, oldest first."""
    keys = cluster.keys(f"runs/{name}/checkpoints/")
    return sorted(k.split("/")[-2] for k in keys if k.endswith("/checkpoint.json"))


def test_cancel_checkpoints_and_the_same_submit_resumes_to_the_end(cluster: Cluster) -> None:
    name = "e2e-cancel"
    # Checkpoints only at the end of the run: any checkpoint before it is the cancel's own.
    # 4,096 images an epoch: the test is about stopping and resuming, not what G learns.
    sets = ["spec.train.epochs=6", "spec.checkpoint.every_epochs=6", "spec.data.limit=4096"]
    submit(cluster, name, *sets)
    cluster.wait(f"{name} training", lambda: cluster.phase(name) == "Running"
                 and len(worker_pods(cluster, name)) == 2, timeout=900)  # fmt: skip
    # Into the first epoch: the driver's log shows steps (each `ganops logs` is a CLI start).
    cluster.wait("training steps in the log", lambda: "img/s" in cluster.ganops("logs", name, "-n", cluster.namespace,
                                                                               check=False).stdout, timeout=600, every=5)  # fmt: skip
    assert _checkpoints(cluster, name) == []
    cluster.ganops("cancel", name, "-n", cluster.namespace)
    st = cluster.wait_phase(name, {"Cancelled"}, timeout=300)
    saved = _checkpoints(cluster, name)
    assert saved, f"the cancel left no checkpoint: {st}"
    cluster.wait("the Ray pods gone", lambda: not worker_pods(cluster, name), timeout=300)

    submit(cluster, name, *sets)
    final = cluster.wait_phase(name, TERMINAL, timeout=1800)
    logs = cluster.ganops("logs", name, "-n", cluster.namespace, check=False).stdout
    assert final["phase"] == "Succeeded", f"{final}\n{logs[-3000:]}"
    assert f"resuming {name} from {saved[-1]}" in logs, logs[-3000:]
    assert _checkpoints(cluster, name)[-1] == "epoch_0006"


def test_a_worker_pod_deleted_mid_run_is_survived_from_the_checkpoint(cluster: Cluster) -> None:
    """A lost node: the Ray worker pod goes (KubeRay makes a new one); Ray Train restarts
    the workers (spec.scaling.max_failures) and resumes from the newest checkpoint."""
    name = "e2e-lost-pod"
    # 4,096 images an epoch (~20 s at the pods' measured 186-215 img/s): three epochs are
    # left after the first checkpoint, time enough for Ray to notice the lost node mid-run.
    submit(cluster, name, "spec.train.epochs=4", "spec.checkpoint.every_epochs=1", "spec.data.limit=4096")
    cluster.wait("the first checkpoint", lambda: _checkpoints(cluster, name), timeout=1200)
    (victim, *_) = worker_pods(cluster, name)
    cluster.k8s().delete_namespaced_pod(victim, cluster.namespace, grace_period_seconds=0)
    final = cluster.wait_phase(name, TERMINAL, timeout=1800)
    logs = cluster.ganops("logs", name, "-n", cluster.namespace, check=False).stdout
    assert final["phase"] == "Succeeded", f"{final}\n{logs[-3000:]}"
    assert "recovered:" in logs or "resuming" in logs, logs[-3000:]
    assert _checkpoints(cluster, name)[-1] == "epoch_0004"


def test_a_spec_that_fails_validation_never_creates_a_pod_and_says_why(cluster: Cluster) -> None:
    """Created past the CLI (as `kubectl apply` would), the operator refuses it."""
    name = "e2e-invalid"
    body = {
        "apiVersion": "ganops.io/v1alpha1", "kind": "GANJob",
        "metadata": {"name": name, "namespace": cluster.namespace},
        "spec": {"data": {"dataset": "mnist", "root": "s3://ganops/datasets/mnist"},
                 "model": {"arch": "dcgan"}, "train": {"epochs": 1, "batch_size": 3, "loss": "wgan_gp"},
                 "scaling": {"num_workers": 2}, "storage": "s3://ganops/runs"},
    }  # fmt: skip
    cluster.k8s("custom").create_namespaced_custom_object("ganops.io", "v1alpha1", cluster.namespace, "ganjobs", body)
    st = cluster.wait_phase(name, {"Failed"}, timeout=120)
    assert "spec.train.batch_size" in str(st.get("message")), st
    assert not [p for p in cluster.pods("") if p.metadata.name.startswith(f"{name}-")]


# Verbs an API client can ask for on a resource; "exactly what its Role allows" is checked
# over all of them, on the Role's own resources and on neighbours it must not touch.
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
NEIGHBOURS = [("", "pods"), ("", "secrets"), ("", "configmaps"), ("", "services"), ("", "pods/exec"),
              ("ray.io", "rayclusters"), ("ray.io", "rayjobs/status"), ("batch", "jobs"),
              ("rbac.authorization.k8s.io", "roles"), ("", "namespaces")]  # fmt: skip


def test_the_operator_runs_from_the_chart_as_its_service_account_with_exactly_its_roles_rights(
    cluster: Cluster,
) -> None:
    from kubernetes import client as k

    from ganops.k8s.rbac import NAMESPACED

    ns = cluster.namespace
    pods = cluster.pods("app.kubernetes.io/component=operator")
    assert len(pods) == 1, [p.metadata.name for p in pods]
    pod = pods[0]
    ready = {c.type: c.status for c in pod.status.conditions or []}
    assert pod.status.phase == "Running" and ready.get("Ready") == "True", pod.status
    c = pod.spec.containers[0]
    assert c.readiness_probe is not None and c.liveness_probe is not None  # the probes it passed
    sa = pod.spec.service_account_name
    assert sa and sa != "default", sa
    # No credentials but its token: no kube config handed in, and the S3 secret key (which
    # it reads MLflow and S3 with) only through the Secret, never as a plain value.
    assert "KUBECONFIG" not in {e.name for e in c.env or []}
    secret = cluster.env["AWS_SECRET_ACCESS_KEY"]
    assert not [e.name for e in c.env or [] if e.value and secret in e.value]
    assert [ref.secret_ref.name for ref in c.env_from or [] if ref.secret_ref], "no Secret ref for the S3 keys"
    assert pod.status.container_statuses[0].restart_count == 0

    authz = k.AuthorizationV1Api(cluster.k8s("core").api_client)
    user = f"system:serviceaccount:{ns}:{sa}"

    def allowed(group: str, resource: str, verb: str, namespace: str = ns) -> bool:
        res, _, sub = resource.partition("/")
        review = k.V1SubjectAccessReview(spec=k.V1SubjectAccessReviewSpec(
            user=user, groups=["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            resource_attributes=k.V1ResourceAttributes(
                group=group, resource=res, subresource=sub or None, verb=verb, namespace=namespace),
        ))  # fmt: skip
        return bool(authz.create_subject_access_review(review).status.allowed)

    resources = sorted({(g, r) for g, r, _ in NAMESPACED} | set(NEIGHBOURS))
    wrong = [
        (g, r, v, want) for g, r in resources for v in VERBS
        if allowed(g, r, v) != (want := (g, r, v) in NAMESPACED)
    ]  # fmt: skip
    assert not wrong, f"rights that differ from ganops.k8s.rbac (group, resource, verb, expected): {wrong}"
    # Namespaced mode: nothing in another namespace.
    assert not [rule for rule in NAMESPACED if allowed(*rule, namespace="default")]


def test_a_job_streams_a_pack_from_s3_on_the_worker_pods(cluster: Cluster, tmp_path: Path) -> None:
    """Issue 16 on Kubernetes: `ganops data pack` into the cluster's S3, `dataset: shards`."""
    name = "e2e-shards"
    pack = f"s3://{BUCKET}/packs/mnist"
    cluster.ganops("data", "pack", pack, "-q", "--dataset", "mnist", "--root", str(REPO.parent / "shared/datasets/mnist"),
                   "--split", "test", "--limit", "4096", "--shard-mb", "1")  # fmt: skip
    submit(cluster, name, "spec.data.dataset=shards", f"spec.data.root={pack}", "spec.train.epochs=1",
           "spec.samples.gif=false")  # fmt: skip
    st = cluster.wait_phase(name, TERMINAL, timeout=900)
    assert st["phase"] == "Succeeded", st
    # 4,096 images, global batch 64: 64 steps, all trained on the pods from the streamed pack.
    assert f"{name}/checkpoints/epoch_0001/" in " ".join(cluster.keys(f"runs/{name}/checkpoints/"))
    logs = cluster.ganops("logs", name, "-n", cluster.namespace).stdout
    assert "64 steps" in logs or "1/1 epochs" in logs, logs[-3000:]


def test_deleting_the_ganjob_garbage_collects_its_rayjob_cluster_and_pods(
    cluster: Cluster, trained: dict[str, object]
) -> None:
    """Last: the finished job's RayJob (and its submitter pod) go with the GANJob."""
    name = str(trained["name"])
    custom = cluster.k8s("custom")
    assert custom.get_namespaced_custom_object("ray.io", "v1", cluster.namespace, "rayjobs", name)
    custom.delete_namespaced_custom_object("ganops.io", "v1alpha1", cluster.namespace, "ganjobs", name)

    def gone() -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            custom.get_namespaced_custom_object("ray.io", "v1", cluster.namespace, "rayjobs", name)
            return False
        except ApiException as e:
            return e.status == 404

    cluster.wait("the RayJob garbage-collected", gone, timeout=180)
    cluster.wait("its pods gone", lambda: not [p for p in cluster.pods("") if p.metadata.name.startswith(f"{name}-")],
                 timeout=180)  # fmt: skip
