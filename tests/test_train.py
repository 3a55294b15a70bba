"""Training end to end on the real MNIST files, real Ray Train workers and real storage."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from ganops import client, jobdir
from ganops.errors import ResourceError, UserError
from tests.conftest import mnist_job, run
from tests.helpers import JOBS, REPO

pytestmark = pytest.mark.slow


def load_state(ckpt_uri: str) -> dict:
    return torch.load(Path(ckpt_uri) / jobdir.STATE_FILE, map_location="cpu", weights_only=True)


def test_two_workers_train_on_real_mnist_and_keep_the_newest_checkpoints(two_worker_run) -> None:
    job, result = two_worker_run
    jd = jobdir.JobDir(job.spec.storage, job.name)
    assert result.epochs_done == 3 and not result.stopped_early
    # 512 images / 2 workers / 32 per worker = 8 steps per epoch.
    assert result.step == 24
    assert [c.name for c in jd.complete_checkpoints()] == ["epoch_0002", "epoch_0003"]  # keep: 2
    meta = json.loads((Path(result.latest_checkpoint) / jobdir.MARKER).read_text())
    assert meta["world_size"] == 2 and meta["final"] is True
    # DDP keeps both ranks' weights identical; a rank training on its own would drift.
    a, b = meta["rank_checksums"]
    assert a == pytest.approx(b, rel=1e-9, abs=1e-9)


def test_checkpoints_are_self_sufficient(two_worker_run) -> None:
    job, result = two_worker_run
    ckpt = Path(result.latest_checkpoint)
    state = load_state(str(ckpt))
    assert state["position"] == {"epoch": 3, "batch": 0, "step": 24, "rollbacks": 0}
    assert set(state["nets"]) >= {"g", "d", "g_ema", "opt_g", "opt_d"}
    assert state["fixed_z"].shape == (16, 100) and len(state["rng"]) == 2
    saved = client.load_job(ckpt / jobdir.SPEC_FILE)
    assert saved == job  # the resolved spec travels with the weights

    from ganops.nets import build_generator

    g = build_generator(saved.spec.model, (1, 28, 28), None)
    g.load_state_dict(state["nets"]["g"])
    with torch.no_grad():
        x = g.eval()(torch.randn(5, 100))
    assert x.shape == (5, 1, 28, 28) and x.min() >= -1 and x.max() <= 1


def test_grids_every_epoch_and_a_gif_at_the_end(two_worker_run) -> None:
    job, result = two_worker_run
    samples = Path(result.samples_uri)
    assert sorted(p.name for p in samples.glob("epoch_*.png")) == [jobdir.sample_name(e) for e in (1, 2, 3)]
    grid = Image.open(samples / "epoch_0003.png")
    assert grid.size == (4 * 30 + 2, 4 * 30 + 2)  # 16 samples: 4×4 tiles of 28 px, 2 px padding
    gif = Image.open(io.BytesIO((samples / jobdir.GIF_FILE).read_bytes()))
    assert gif.n_frames == 3
    assert (Path(result.job_uri) / jobdir.SPEC_FILE).exists()


def test_a_finished_job_is_not_trained_again(two_worker_run) -> None:
    job, _ = two_worker_run
    t0 = time.time()
    again = run(job)
    assert not again.trained and again.epochs_done == 3
    assert time.time() - t0 < 5  # decided from storage, no workers started


def test_resuming_with_a_different_network_is_refused(two_worker_run, mnist_root: Path) -> None:
    job, _ = two_worker_run
    other = job.model_copy(deep=True)
    other.spec.model.arch = "mlp"
    other.spec.train.epochs = 5
    with pytest.raises(UserError, match=r"spec\.model\.arch.*--restart"):
        run(other)


def test_a_checkpoint_without_its_marker_is_never_resumed_from(two_worker_run, tmp_path: Path) -> None:
    job, result = two_worker_run
    copy = tmp_path / job.name
    shutil.copytree(result.job_uri, copy)
    half = copy / jobdir.CHECKPOINTS / "epoch_0009"
    shutil.copytree(copy / jobdir.CHECKPOINTS / "epoch_0003", half)
    (half / jobdir.MARKER).unlink()  # as if the writer died before finishing
    assert jobdir.JobDir(str(tmp_path), job.name).latest_checkpoint().name == "epoch_0003"


def test_workers_that_cannot_fit_the_cluster_fail_at_once(ray_cluster: None, mnist_root: Path, tmp_path: Path) -> None:
    job = mnist_job(tmp_path, mnist_root, "spec.scaling.num_workers=4", "spec.scaling.resources_per_worker={CPU: 1}")
    t0 = time.time()
    with pytest.raises(ResourceError, match=r"need CPU 4, but the Ray cluster has CPU 2"):
        run(job)
    gpu = mnist_job(tmp_path, mnist_root, "spec.scaling.use_gpu=true")
    with pytest.raises(ResourceError, match=r"need GPU 2.*use_gpu=false"):
        run(gpu)
    assert time.time() - t0 < 30


@pytest.mark.heavy  # an error path that costs a worker group's start (make test ≤ 15 min)
def test_a_truncated_dataset_found_by_a_worker_is_a_user_error(
    ray_cluster: None, tmp_path: Path, mnist_root: Path
) -> None:
    data = tmp_path / "mnist"
    data.mkdir()
    shutil.copy(mnist_root / "t10k-labels-idx1-ubyte.gz", data)
    gz = (mnist_root / "t10k-images-idx3-ubyte.gz").read_bytes()
    # Header intact, stream cut: the pre-flight reads only the header, the workers find the rest.
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    job = mnist_job(tmp_path / "runs", data, "spec.scaling.num_workers=1", "spec.train.epochs=1")
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte"):
        run(job)


def test_conditional_grids_lay_classes_out_in_rows(cgan_run) -> None:
    _, result = cgan_run  # 30 samples a grid, 2 epochs
    grid = Image.open(Path(result.samples_uri) / "epoch_0001.png")
    assert grid.size == (3 * 30 + 2, 10 * 30 + 2)  # ten class rows of three samples


# -- resume is exact ----------------------------------------------------------------------

DETERMINISM = ("spec.scaling.num_workers=1", "spec.data.limit=1024", "spec.train.seed=7")


def _final_state(result) -> dict:
    assert result.epochs_done == 3
    return load_state(result.latest_checkpoint)


def _assert_same_training_state(a: dict, b: dict) -> None:
    for net in ("g", "d"):
        for k, v in a["nets"][net].items():
            assert torch.equal(v, b["nets"][net][k]), f"{net}.{k} differs"
    exp_a = a["nets"]["opt_g"]["state"][0]["exp_avg"]
    assert torch.equal(exp_a, b["nets"]["opt_g"]["state"][0]["exp_avg"])
    assert a["position"] == b["position"]


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster: None, mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    job = mnist_job(tmp_path_factory.mktemp("straight"), mnist_root, *DETERMINISM, "spec.train.epochs=3")
    return _final_state(run(job))


@pytest.fixture(scope="module")
def two_timed_epochs(ray_cluster: None, mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run's first 2 epochs, with a checkpoint at every poll (a tiny
    every_minutes: every 10 steps) and the names of the checkpoints it left. A job of its own:
    ``test_a_job_extended_by_an_epoch...`` trains it on to a third epoch."""
    storage = tmp_path_factory.mktemp("timed")
    result = run(mnist_job(storage, mnist_root, *DETERMINISM, "spec.train.epochs=2",
                           "spec.checkpoint.every_minutes=0.0001", "spec.checkpoint.keep=100"))  # fmt: skip
    names = [c.name for c in jobdir.JobDir(str(storage), "mnist-dcgan").complete_checkpoints()]
    return {"storage": storage, "result": result, "names": names}


def test_timed_checkpoints_are_written_mid_epoch(two_timed_epochs: dict) -> None:
    # every_minutes is checked at every poll (10 steps): a tiny interval saves at each one.
    assert two_timed_epochs["names"] == ["epoch_0000_batch_00010", "epoch_0001", "epoch_0001_batch_00004",
                                         "epoch_0001_batch_00014", "epoch_0002"]  # fmt: skip


def test_a_job_extended_by_an_epoch_ends_with_the_same_weights_as_an_uninterrupted_one(
    uninterrupted: dict, two_timed_epochs: dict, mnist_root: Path
) -> None:
    # A finished job submitted again with more epochs trains on from its last checkpoint; the
    # timed checkpoints it wrote change nothing of the training.
    assert two_timed_epochs["result"].epochs_done == 2
    resumed = run(mnist_job(two_timed_epochs["storage"], mnist_root, *DETERMINISM, "spec.train.epochs=3",
                            "spec.checkpoint.keep=100"))  # fmt: skip
    assert resumed.resumed_from.endswith("epoch_0002")
    _assert_same_training_state(uninterrupted, _final_state(resumed))


@pytest.mark.heavy  # make test resumes mid-epoch exactly in the time-budget test; this one adds every_steps
def test_a_run_resumed_from_a_mid_epoch_step_checkpoint_matches_an_uninterrupted_one(
    uninterrupted: dict, mnist_root: Path, tmp_path: Path
) -> None:
    # spec.checkpoint.every_steps bounds the work a lost worker costs; its mid-epoch
    # checkpoints must resume as exactly as the epoch ones (16 steps an epoch here).
    sets = (*DETERMINISM, "spec.train.epochs=3", "spec.checkpoint.every_steps=5", "spec.checkpoint.keep=100")
    first = run(mnist_job(tmp_path, mnist_root, *sets))
    _assert_same_training_state(uninterrupted, _final_state(first))  # saving changes nothing
    jd = jobdir.JobDir(str(tmp_path), "mnist-dcgan")
    names = [c.name for c in jd.complete_checkpoints()]
    assert {"epoch_0000_batch_00005", "epoch_0001_batch_00004", "epoch_0002_batch_00013"} <= set(names), names
    # As after a crash right after step 20 (epoch 1, batch 4): every later checkpoint gone.
    # Ray Train's own record still names them (Ray would refuse to start): ganops sets it aside.
    for c in jd.complete_checkpoints():
        if (c.epoch, c.batch) > (1, 4):
            shutil.rmtree(c.uri)
    lines: list[str] = []
    resumed = client.submit(mnist_job(tmp_path, mnist_root, *sets), show_progress=False, echo=lines.append)
    assert any("checkpoint record is set aside (it names 7 checkpoint(s) no longer in storage" in x for x in lines)
    assert resumed.resumed_from.endswith("epoch_0001_batch_00004")
    _assert_same_training_state(uninterrupted, _final_state(resumed))


BATCHNORM_D = (
    "spec.scaling.num_workers=2", "spec.data.limit=512", "spec.train.seed=7", "spec.model.d_norm=batch",
    "spec.scaling.sync_batchnorm=true",
)  # fmt: skip


@pytest.mark.heavy  # two 3-epoch runs; SyncBN's step is exact on 2 ranks in make test-fast
def test_a_batchnorm_discriminator_on_two_workers_resumes_exactly(
    ray_cluster: None, mnist_root: Path, tmp_path: Path
) -> None:
    # BatchNorm's running statistics are state too, and with sync_batchnorm every forward is
    # a collective: a resume must continue both exactly, on every rank. The run is stopped as
    # a crash after epoch 1 would stop it: every later checkpoint gone.
    straight = run(mnist_job(tmp_path, mnist_root, *BATCHNORM_D, "spec.train.epochs=3"))
    a = _final_state(straight)
    jd = jobdir.JobDir(str(tmp_path), "mnist-dcgan")
    for c in jd.complete_checkpoints():
        if c.epoch > 1:
            shutil.rmtree(c.uri)
    resumed = run(mnist_job(tmp_path, mnist_root, *BATCHNORM_D, "spec.train.epochs=3"))
    assert resumed.resumed_from.endswith("epoch_0001")
    assert any(k.endswith("running_var") for k in a["nets"]["d"])  # D really has BatchNorm
    _assert_same_training_state(a, _final_state(resumed))


@pytest.mark.heavy  # a real process, really interrupted (make test-heavy)
def test_ctrl_c_writes_a_checkpoint_and_the_resumed_run_matches_an_uninterrupted_one(
    uninterrupted: dict, mnist_root: Path, tmp_path: Path
) -> None:
    sets = [f"--set={o}" for o in (*DETERMINISM, "spec.train.epochs=3", "spec.data.split=test", "spec.train.batch_size=64",
                                  "spec.train.log_every_steps=2", "spec.samples.num=16", "spec.checkpoint.every_epochs=1",
                                  f"spec.data.root={mnist_root}", f"spec.storage={tmp_path}")]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganops.cli", "submit", str(JOBS / "mnist_dcgan.yaml"), "-q", *sets],
        cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines = []
    try:
        deadline = time.time() + 240
        # Training has begun once the first progress line arrives (-q still prints nothing
        # of progress, so wait for rank 0's first checkpoint instead).
        first = Path(tmp_path) / "mnist-dcgan" / jobdir.CHECKPOINTS / "epoch_0001" / jobdir.MARKER
        while not first.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert first.exists(), "the run never reached its first checkpoint"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
        lines.append(err)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, lines
    assert "stopping: the workers write a checkpoint first" in lines[0]
    assert "stopped early" in lines[0] and "Traceback" not in lines[0]
    latest = jobdir.JobDir(str(tmp_path), "mnist-dcgan").latest_checkpoint()
    assert latest is not None and latest.batch > 0 and latest.epoch < 3  # stopped mid-epoch
    resumed = run(mnist_job(tmp_path, mnist_root, *DETERMINISM, "spec.train.epochs=3"))
    assert resumed.resumed_from == latest.uri
    _assert_same_training_state(uninterrupted, _final_state(resumed))


def test_a_time_budget_stops_with_a_checkpoint_the_gif_and_the_generator_and_the_job_trains_on(
    uninterrupted: dict, mnist_root: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    sets = (*DETERMINISM, "spec.train.epochs=3")
    lines: list[str] = []
    # A budget spent at once: training stops at the first check, 10 steps in (16 an epoch).
    job = mnist_job(tmp_path, mnist_root, *sets, "spec.train.max_minutes=0.0001")
    result = client.submit(job, show_progress=False, echo=lines.append)
    assert result.stopped_early and result.step == 10, lines
    assert any("stopping at step 10: the time budget, spec.train.max_minutes=0.0001 is spent" in x for x in lines)
    latest = jobdir.JobDir(str(tmp_path), job.name).latest_checkpoint()
    assert latest is not None and (latest.epoch, latest.batch) == (0, 10) and result.gif_uri
    # The GIF ends on a grid of where training stopped (no epoch had ended).
    assert jobdir.JobDir(str(tmp_path), job.name).sample_grids() == [jobdir.sample_name(0, 10)]
    run_ = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.mlflow_run_id)
    assert run_.data.tags["ganops.model_uri"] and "max_minutes" in run_.data.tags["ganops.stopped"]
    # The same job without the budget trains on from there, as if it had never stopped.
    resumed = run(mnist_job(tmp_path, mnist_root, *sets))
    assert resumed.resumed_from == latest.uri and resumed.epochs_done == 3
    _assert_same_training_state(uninterrupted, _final_state(resumed))


def test_restart_moves_the_old_run_aside_and_starts_over(two_worker_run, mnist_root: Path, tmp_path: Path) -> None:
    # The old run: a copy of the shared one (3 epochs done), so only the restarted run trains.
    job, _ = two_worker_run
    shutil.copytree(Path(job.spec.storage) / job.name, tmp_path / job.name)
    args = ("spec.scaling.num_workers=1", "spec.data.limit=128", "spec.train.epochs=1")
    again = run(mnist_job(tmp_path, mnist_root, *args), restart=True)
    assert again.trained and again.resumed_from is None and again.epochs_done == 1
    old = Path(again.archived_to)
    assert old.name.startswith("mnist-dcgan.restart-")
    assert (old / jobdir.CHECKPOINTS / "epoch_0003" / jobdir.MARKER).exists()  # nothing lost


@pytest.mark.heavy  # each option's step is exact on 2 DDP ranks in make test-fast (test_step_equivalence)
def test_every_training_option_runs_under_ddp(ray_cluster: None, mnist_root: Path, tmp_path: Path) -> None:
    # WGAN-GP's double backward through DDP, several D steps per G step, an EMA of G,
    # RMSprop with clipping and separate learning rates, on two real workers.
    job = mnist_job(
        tmp_path, mnist_root,
        "spec.train.epochs=1", "spec.data.limit=256", "spec.model.d_norm=layer",
        "spec.train.loss=wgan_gp", "spec.train.d_steps=2", "spec.train.ema_decay=0.9",
        "spec.train.optimizer=rmsprop", "spec.train.clip_grad_norm=5.0", "spec.train.g_lr=5e-5", "spec.train.d_lr=2e-4",
        "spec.train.rmsprop_alpha=0.9", "spec.train.eps=1e-7",
    )  # fmt: skip
    result = run(job)
    state = load_state(result.latest_checkpoint)
    g, ema = state["nets"]["g"], state["nets"]["g_ema"]
    assert ema is not None and any(not torch.equal(g[k], ema[k]) for k in g if g[k].is_floating_point())
    assert state["nets"]["opt_g"]["param_groups"][0]["lr"] == 5e-5
    assert "square_avg" in state["nets"]["opt_d"]["state"][0]  # RMSprop's state
    group = state["nets"]["opt_d"]["param_groups"][0]
    assert (group["alpha"], group["eps"]) == (0.9, 1e-7)  # Keras' RMSprop, as the *_deep jobs set
    assert any(k.endswith(".weight") and v.dim() == 1 for k, v in state["nets"]["d"].items())  # layer norm's scale
    meta = json.loads((Path(result.latest_checkpoint) / jobdir.MARKER).read_text())
    assert meta["rank_checksums"][0] == pytest.approx(meta["rank_checksums"][1], rel=1e-9)


@pytest.mark.heavy  # the step is exact on 2 DDP ranks in make test-fast (resnet-*, ada-* variants)
def test_a_conditional_resnet_with_ada_runs_under_ddp_and_logs_p(
    ray_cluster: None, mnist_root: Path, tmp_path: Path
) -> None:
    # BigGAN style (cBN in G, spectral-norm projection D) with DiffAugment, ADA and lazy R1 on
    # two real workers, through checkpoints and MLflow: p is a metric curve and the checkpoint keeps it
    # with the spectral norm's raw weights; the ranks stay in step.
    from mlflow import MlflowClient

    job = mnist_job(
        tmp_path, mnist_root, "spec.model.arch=resnet", "spec.model.d_norm=null", "spec.model.g_widths=[16,8,8]",
        "spec.model.d_widths=[8,16]", "spec.train.loss=hinge", "spec.train.epochs=1", "spec.data.limit=256",
        "spec.augment.policy=[translation,cutout]", "spec.augment.ada_target=0.6", "spec.augment.ada_interval=1",
        "spec.augment.ada_kimg=0.5", "spec.train.r1_gamma=1", "spec.train.reg_interval=2", job="mnist_cgan",
    )  # fmt: skip
    result = run(job)
    state = load_state(result.latest_checkpoint)
    assert state["nets"]["augment"]["ada_steps"] == 4  # 256 images / 64: one adjustment per D step
    assert any(k.endswith("parametrizations.weight.original") for k in state["nets"]["d"])
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(result.mlflow_run_id, "augment_p")
    assert [m.step for m in history] == [2, 4]
    assert history[-1].value == pytest.approx(state["nets"]["augment"]["p"])
    meta = json.loads((Path(result.latest_checkpoint) / jobdir.MARKER).read_text())
    assert meta["rank_checksums"][0] == pytest.approx(meta["rank_checksums"][1], rel=1e-9)


def test_the_embedded_mlflow_store_records_the_run_next_to_the_jobs(two_worker_run) -> None:
    from mlflow import MlflowClient

    job, result = two_worker_run
    db = Path(job.spec.storage) / "mlflow.db"
    assert db.exists() and result.mlflow_run_id
    mlflow = MlflowClient(f"sqlite:///{db}")
    run_ = mlflow.get_run(result.mlflow_run_id)
    assert run_.info.status == "FINISHED" and run_.data.tags["ganops.world_size"] == "2"
    assert [m.step for m in mlflow.get_metric_history(result.mlflow_run_id, "g_loss")] == list(range(2, 25, 2))
    assert (Path(job.spec.storage) / "mlartifacts").is_dir()  # artifacts beside the store


def test_ganops_ui_serves_the_embedded_store(two_worker_run) -> None:
    import socket
    import urllib.request

    job, _ = two_worker_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganops.cli", "ui", "--storage", job.spec.storage, "--port", str(port)],
        cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        deadline, body = time.time() + 90, b""
        while time.time() < deadline and not body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            except OSError:
                time.sleep(0.5)
        assert body.strip() == b"OK"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in err
