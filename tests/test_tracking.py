"""MLflow tracking and S3 storage, against a real MLflow server backed by a real S3 endpoint."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ganops import tracking
from ganops.errors import UserError
from ganops.spec import dump
from tests.conftest import S3_KEY_ID, S3_SECRET, mnist_job
from tests.helpers import MlflowServer, free_port
from tests.runs import TRACKED_MODEL, s3_keys

pytestmark = pytest.mark.slow

REGISTERED = TRACKED_MODEL


@pytest.fixture
def tracked(tracked_run: dict) -> dict:
    """The session's tracked run (tests/runs.py): 2 epochs, then resumed to 3."""
    return tracked_run


@pytest.fixture(scope="module")
def mlflow_client(mlflow_server: str):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server)


def test_checkpoints_grids_and_the_gif_live_in_the_bucket(tracked) -> None:
    keys = tracked["keys_after_first"]
    assert tracked["job"].spec.data.root.startswith("s3://")
    root = "team/mnist-dcgan/"
    for name in ("state.pt", "spec.yaml", "checkpoint.json"):
        assert f"{root}checkpoints/epoch_0002/{name}" in keys
    for name in ("epoch_0001.png", "epoch_0002.png", "training.gif"):
        assert f"{root}samples/{name}" in keys
    assert f"{root}spec.yaml" in keys and f"{root}{tracking.RUN_FILE}" in keys
    assert tracked["first"].latest_checkpoint == f"s3://{tracked['bucket']}/{root}checkpoints/epoch_0002"


def test_one_mlflow_run_holds_params_tags_and_metrics_by_step(tracked, mlflow_client) -> None:
    run_id = tracked["first"].mlflow_run_id
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["train.lr"] == "0.0002" and params["model.arch"] == "dcgan" and params["data.dataset"] == "mnist"
    assert params["model.g_widths"] == "[128, 64, 32]"
    assert tags["ganops.job"] == "mnist-dcgan" and tags["ganops.world_size"] == "2" and tags["ganops.kind"] == "train"
    assert tags["ganops.dataset"] == "mnist" and tags["ganops.network"] == "dcgan" and tags["ganops.version"]
    for key in ("d_loss", "g_loss", "d_x", "d_g_z", "images_per_s", "lr_g", "lr_d"):
        history = mlflow_client.get_metric_history(run_id, key)
        # 512 images, global batch 64 → 8 steps an epoch; logged every 2 steps over 3 epochs.
        assert [m.step for m in history] == list(range(2, 25, 2)), key
    assert [m.step for m in mlflow_client.get_metric_history(run_id, "epoch_time_s")] == [8, 16, 24]
    lr = mlflow_client.get_metric_history(run_id, "lr_g")
    assert {m.value for m in lr} == {2e-4}


def test_a_short_run_still_has_curves_and_a_critic_reports_raw_scores(cgan_run) -> None:
    from mlflow import MlflowClient

    # The session's conditional run (tests/runs.py): 4 steps an epoch, far fewer than its
    # log_every_steps (50), and a hinge critic. Each epoch's end still adds a point.
    mlflow = MlflowClient(cgan_run.tracking_uri)
    for key in ("d_loss", "g_loss", "critic_real", "critic_fake", "images_per_s"):
        assert [m.step for m in mlflow.get_metric_history(cgan_run.run_id, key)] == [4, 8], key
    # A hinge critic's score is no log-odds: no sigmoid "probabilities" are logged for it.
    assert mlflow.get_metric_history(cgan_run.run_id, "d_x") == []


def test_sample_grids_are_images_keyed_by_step_and_the_gif_and_spec_are_artifacts(tracked, mlflow_client) -> None:
    run_id = tracked["first"].mlflow_run_id
    images = [a.path for a in mlflow_client.list_artifacts(run_id, "images")]
    steps = sorted({int(p.split("+step+")[1].split("+")[0]) for p in images if p.endswith(".png")})
    assert steps == [8, 16, 24]  # one grid per epoch, at the step it was drawn
    # The GIF, and the last grid that the run's description shows.
    assert [a.path for a in mlflow_client.list_artifacts(run_id, "samples")] == [
        "samples/final_grid.png", "samples/training.gif"]  # fmt: skip
    spec_text = Path(mlflow_client.download_artifacts(run_id, "spec.yaml")).read_text()
    assert spec_text == dump(tracked["resumed_job"])
    # The server proxies artifacts into the S3 bucket behind it.
    assert any(run_id in k for k in s3_keys("mlflow", "artifacts/"))


def test_the_generator_is_a_loadable_mlflow_model_and_a_registered_version(
    tracked, mlflow_client, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import torch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # models:/ URIs resolve on the server
    run = mlflow_client.get_run(tracked["second"].mlflow_run_id)
    uri = run.data.tags["ganops.model_uri"]
    g = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        images = g(torch.randn(6, 100))
    assert images.shape == (6, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    served = mlflow.pyfunc.load_model(uri)
    out = served.predict(np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32))
    assert np.asarray(out).shape == (3, 1, 28, 28)
    versions = mlflow_client.search_model_versions(f"name='{REGISTERED}'")
    assert versions and {v.run_id for v in versions} == {run.info.run_id}
    assert run.data.tags["ganops.checkpoint"].endswith("checkpoints/epoch_0003")


def test_a_resumed_job_continues_the_same_run(tracked, mlflow_client) -> None:
    first, second = tracked["first"], tracked["second"]
    assert second.resumed_from.endswith("epoch_0002") and second.epochs_done == 3
    assert second.mlflow_run_id == first.mlflow_run_id
    runs = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name("tracked").experiment_id],
        "tags.`ganops.job` = 'mnist-dcgan' and tags.`ganops.kind` = 'train'",
    )
    assert len(runs) == 1  # never a duplicate training run (generate's runs beside it are kind generate)
    # The change of epochs is recorded (params are immutable in MLflow).
    assert runs[0].data.tags["ganops.resumed.train.epochs"] == "2 -> 3"
    assert any("continuing run" in line for line in tracked["logs"])


def test_secrets_never_reach_specs_logs_params_or_tags(tracked, mlflow_client) -> None:
    import boto3

    run = mlflow_client.get_run(tracked["first"].mlflow_run_id)
    s3 = boto3.client("s3")
    stored = [
        s3.get_object(Bucket=tracked["bucket"], Key=f"team/mnist-dcgan/{name}")["Body"].read().decode()
        for name in ("spec.yaml", tracking.RUN_FILE, "checkpoints/epoch_0003/spec.yaml")
    ]
    texts = [*run.data.params.values(), *run.data.tags.values(), *tracked["logs"], *stored]
    for secret in (S3_SECRET, S3_KEY_ID):
        assert not any(secret in t for t in texts)


def test_an_unreachable_tracking_server_fails_before_any_worker_starts(
    ray_cluster: None, mnist_root: Path, tmp_path: Path
) -> None:
    from ganops import client

    job = mnist_job(tmp_path, mnist_root, f"spec.tracking.uri=http://127.0.0.1:{free_port()}")
    t0 = time.time()
    with pytest.raises(UserError, match=r"spec\.tracking\.uri: cannot reach the MLflow tracking server"):
        client.submit(job, show_progress=False, echo=lambda _m: None)
    assert time.time() - t0 < 30
    assert not list((tmp_path / "mnist-dcgan" / "checkpoints").glob("epoch_*"))


def test_a_missing_bucket_fails_before_any_worker_starts(ray_cluster: None, mnist_root: Path) -> None:
    from ganops import client

    job = mnist_job(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/runs", mnist_root)
    with pytest.raises(UserError, match=r"spec\.storage: .*does not exist"):
        client.submit(job, show_progress=False, echo=lambda _m: None)


# -- a tracking server that drops out ---------------------------------------------------


def test_metrics_logged_while_the_server_is_down_are_buffered_and_written_when_it_returns(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    server = MlflowServer(tmp_path)
    server.start()
    uri = server.uri
    try:
        run_id = MlflowClient(uri).create_run("0").info.run_id
        warnings: list[str] = []
        logger = tracking.RunLogger(uri, run_id, warn=warnings.append, flush_interval_s=0.2)
        logger.log_metrics({"d_loss": 1.0}, step=1)
        deadline = time.time() + 20
        while logger.pending() and time.time() < deadline:
            time.sleep(0.1)
        assert logger.pending() == 0
        server.stop()  # SIGKILL to the whole group: connections are refused at once

        t0 = time.time()
        for step in (2, 3, 4):
            logger.log_metrics({"d_loss": float(step)}, step=step)  # never blocks training
        assert time.time() - t0 < 0.5
        deadline = time.time() + 30
        while not warnings and time.time() < deadline:
            time.sleep(0.1)
        assert warnings and "unreachable" in warnings[0] and "retried" in warnings[0]
        assert logger.pending() == 3

        server.start()
        assert logger.close(timeout_s=60)
        history = MlflowClient(uri).get_metric_history(run_id, "d_loss")
        assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
        assert any("reachable again" in w for w in warnings)
    finally:
        server.stop()


def test_tracking_uris_are_stored_and_printed_without_credentials() -> None:
    assert tracking.redact("https://alice:s3cret@mlflow.example.com:5000/x") == "https://mlflow.example.com:5000/x"
    assert tracking.redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_the_spec_is_flattened_into_params() -> None:
    flat = tracking.flatten({"train": {"lr": 0.1, "betas": [0.5, 0.9]}, "tracking": {"uri": None}, "x": {}})
    assert flat == {"train.lr": "0.1", "train.betas": "[0.5, 0.9]", "tracking.uri": "null", "x": "{}"}
    assert json.loads(flat["train.betas"]) == [0.5, 0.9]


def test_a_run_on_kubernetes_is_tagged_with_its_ganjob(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator finds the run of a GANJob by the uid its pods carry (GANOPS_K8S_UID)."""
    from ganops import jobdir

    job = mnist_job(tmp_path / "runs", mnist_root, f"spec.tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("GANOPS_K8S_UID", "5a1b-uid")
    monkeypatch.setenv("GANOPS_K8S_NAMESPACE", "team-a")
    ref = tracking.open_run(job, jobdir.JobDir(job.spec.storage, job.name), warn=lambda _m: None)
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(ref.tracking_uri).get_run(ref.run_id).data.tags
    assert (tags["ganops.k8s_uid"], tags["ganops.k8s_namespace"]) == ("5a1b-uid", "team-a")
    monkeypatch.delenv("GANOPS_K8S_UID")
    assert "ganops.k8s_uid" not in tracking._tags(job, 1)


def test_the_run_description_follows_a_resumed_job_to_its_end(tracked, mlflow_client) -> None:
    run = mlflow_client.get_run(tracked["second"].mlflow_run_id)
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("### mnist-dcgan: finished, 3/3 epochs\n")
    assert f"`s3://{tracked['bucket']}/team/mnist-dcgan/checkpoints/epoch_0003`" in note
    assert f"`{run.data.tags['ganops.model_uri']}`, registered as `{REGISTERED}` version" in note
    assert "on 2 workers" in note and "![samples after epoch 3](get-artifact?path=samples%2Ffinal_grid.png" in note
