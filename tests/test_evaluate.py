"""Generative quality end to end: an Inception weights file written here (random weights,
the FID network's exact architecture and key names), loaded from the S3 server and checked
by sha256; training on real MNIST with evaluation, keep_best and a champion alias; the
cached reference statistics; ``ganops evaluate``."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from ganops import jobdir
from ganops.cli import main
from ganops.errors import UserError
from ganops.evaluate import reference as refs
from ganops.evaluate.inception import FIDInceptionV3
from ganops.evaluate.weights import PINNED_SHA256, load_inception
from ganops.tracking import CHAMPION, FID_TAG, SETUP_TAG, embedded_store
from tests.conftest import mnist_job, run

pytestmark = pytest.mark.slow

REGISTERED = "mnist-eval"
NUM_SAMPLES = 16  # Inception at 299×299 costs ~0.1-0.3 s an image on these CPUs


def _random_inception_bytes(seed: int) -> bytes:
    """A state dict of the FID network with random weights that give varied features."""
    torch.manual_seed(seed)
    net = FIDInceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # keeps activations alive 94 layers deep
    torch.nn.init.normal_(net.fc.weight, std=0.05)  # logits spread enough for an Inception score above 1
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data = _random_inception_bytes(seed=7)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def s3_weights(s3_server: str, weights: tuple[Path, str]) -> str:
    import uuid

    import boto3

    bucket = f"weights-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(weights[0]), bucket, "fid/pt_inception-random.pth")
    return f"s3://{bucket}/fid/pt_inception-random.pth"


def _eval_overrides(s3_uri: str, sha: str) -> list[str]:
    return [
        "spec.eval.every_epochs=1", f"spec.eval.num_samples={NUM_SAMPLES}", "spec.eval.batch_size=16",
        f"spec.eval.inception_weights={s3_uri}", f"spec.eval.inception_sha256={sha}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(ray_cluster: None, mnist_root: Path, s3_weights: str, weights: tuple[Path, str],
            tmp_path_factory: pytest.TempPathFactory) -> dict:  # fmt: skip
    """2 workers, 2 epochs scored after each, the best kept; then resumed to a third epoch
    scored every 4 steps instead (eval.every_steps: mid-epoch at step 20, and once at 24, where
    the step and the run's end fall together)."""
    storage = tmp_path_factory.mktemp("eval-train")
    overrides = [*_eval_overrides(s3_weights, weights[1]), "spec.scaling.num_workers=2", "spec.checkpoint.keep=1",
                 "spec.checkpoint.keep_best=fid", f"spec.tracking.register_as={REGISTERED}"]  # fmt: skip
    job = mnist_job(storage, mnist_root, *overrides, "spec.train.epochs=2")
    first = run(job)
    cache = sorted((storage / refs.CACHE_DIR).glob("*.npz"))
    cache_mtime = cache[0].stat().st_mtime_ns if cache else None
    second = run(mnist_job(storage, mnist_root, *overrides, "spec.train.epochs=3", "spec.eval.every_epochs=null",
                           "spec.eval.every_steps=4"))  # fmt: skip
    return {"job": job, "storage": storage, "first": first, "second": second, "cache": cache,
            "cache_mtime": cache_mtime, "uri": embedded_store(str(storage))[0]}  # fmt: skip


def _record(trained: dict, step: int) -> dict:
    path = trained["storage"] / trained["job"].name / jobdir.EVAL / jobdir.eval_record_name(step)
    return json.loads(path.read_text())


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def test_scores_are_logged_per_evaluation_step_with_what_they_were_computed_from(trained) -> None:
    first, second = trained["first"], trained["second"]
    assert second.mlflow_run_id == first.mlflow_run_id and second.epochs_done == 3
    client = _client(trained["uri"])
    for key in ("eval/fid", "eval/kid_mean", "eval/kid_std", "eval/is_mean", "eval/is_std", "eval/precision",
                "eval/recall"):  # fmt: skip
        # 512 images, global batch 64: 8 steps an epoch; scored after epochs 1, 2 (first run), then
        # (resumed) at steps 20 (mid-epoch) and 24, each once.
        assert [m.step for m in client.get_metric_history(first.mlflow_run_id, key)] == [8, 16, 20, 24], key
    fids = [m.value for m in client.get_metric_history(first.mlflow_run_id, "eval/fid")]
    assert all(f > 0 for f in fids)
    assert all(m.value > 1.0 for m in client.get_metric_history(first.mlflow_run_id, "eval/is_mean"))
    record = _record(trained, 16)
    assert record["fid"] == pytest.approx(fids[1]) and record["num_samples"] == NUM_SAMPLES
    assert record["reference"]["dataset"] == "mnist" and record["reference"]["split"] == "test"
    assert record["reference"]["num_images"] == NUM_SAMPLES and record["inception_sha256"]
    assert record["kid"]["subset_size"] == NUM_SAMPLES and record["pr"]["k"] == 3
    artifacts = [a.path for a in client.list_artifacts(first.mlflow_run_id, "eval")]
    assert artifacts == [f"eval/{jobdir.eval_record_name(s)}" for s in (8, 16, 20, 24)]
    tags = client.get_run(first.mlflow_run_id).data.tags
    assert tags["ganops.eval.reference"] == f"mnist test: {NUM_SAMPLES} of 512 images"


def test_reference_statistics_are_computed_once_and_read_from_the_cache_after(trained) -> None:
    cache = trained["cache"]
    assert len(cache) == 1 and cache[0].name.startswith(f"mnist-test-{NUM_SAMPLES}-")
    assert cache[0].stat().st_mtime_ns == trained["cache_mtime"]  # the resumed run did not rewrite it
    assert not _record(trained, 8)["reference"]["cached"] and _record(trained, 24)["reference"]["cached"]


def test_the_best_checkpoint_survives_pruning_and_the_champion_moves_only_on_improvement(trained) -> None:
    first = trained["first"]
    client = _client(trained["uri"])
    fids = {m.step: m.value for m in client.get_metric_history(first.mlflow_run_id, "eval/fid")}
    best_step = min(fids, key=fids.get)
    jd = jobdir.JobDir(str(trained["storage"]), trained["job"].name)

    # keep: 1 leaves one checkpoint in Ray's directory; the best one lives beside it, complete.
    assert [c.name for c in jd.complete_checkpoints()] == ["epoch_0003"]
    best = jd.best_checkpoint()
    assert best is not None and best.step == best_step
    assert best.name == jobdir.checkpoint_name(best_step // 8, best_step % 8)  # mid-epoch at step 20
    assert best.meta["eval"]["fid"] == pytest.approx(fids[best_step])
    assert [p.name for p in (trained["storage"] / trained["job"].name / jobdir.BEST).iterdir()] == [best.name]
    state = torch.load(Path(best.uri) / jobdir.STATE_FILE, map_location="cpu", weights_only=True)
    assert state["position"]["step"] == best_step and set(state["nets"]) >= {"g", "d", "opt_g"}
    assert (Path(best.uri) / jobdir.SPEC_FILE).exists()
    saved = jd.read_best()
    assert saved["fid"] == pytest.approx(fids[best_step]) and saved["checkpoint"] == best.uri
    tags = client.get_run(first.mlflow_run_id).data.tags
    assert tags["ganops.best_checkpoint"] == best.uri
    assert float(tags["ganops.best_fid"]) == pytest.approx(fids[best_step])

    # A version is registered exactly when the FID beat every earlier one (across the resume),
    # and the alias follows it; the final model is registered too, unless it is the champion.
    improvements, so_far = [], float("inf")
    for step in sorted(fids):
        if fids[step] < so_far:
            improvements.append(step)
            so_far = fids[step]
    versions = sorted(client.search_model_versions(f"name='{REGISTERED}'"), key=lambda v: int(v.version))
    scored = [v for v in versions if FID_TAG in v.tags]
    assert [int(v.tags["ganops.eval.step"]) for v in scored] == improvements
    assert [float(v.tags[FID_TAG]) for v in scored] == pytest.approx([fids[s] for s in improvements])
    champion = client.get_model_version_by_alias(REGISTERED, CHAMPION)
    assert champion.version == scored[-1].version and float(champion.tags[FID_TAG]) == pytest.approx(min(fids.values()))
    # Each run's last score: a final model that is already the champion is not logged twice.
    final_unscored = [v for v in versions if FID_TAG not in v.tags]
    expected_finals = sum(1 for last in (16, 24) if last not in improvements)
    assert len(final_unscored) == expected_finals


def test_the_champion_alias_moves_only_when_the_fid_improves(tmp_path: Path) -> None:
    """The alias rule on its own, against a real (SQLite) MLflow store."""
    from ganops.nets import build_generator
    from ganops.spec.models import ModelSpec
    from ganops.tracking import champion_fid, promote_if_better

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = _client(uri)
    run_id = client.create_run(client.create_experiment("alias", str(tmp_path / "art"))).info.run_id
    g = build_generator(ModelSpec(arch="mlp", latent_dim=8, g_widths=[16]), (1, 8, 8), None)
    warnings: list[str] = []

    def promote(fid: float, setup: str = "setup-a", step: int = 1):
        return promote_if_better(uri, run_id, g, "alias-test", fid, setup, step, warnings.append)

    assert champion_fid(uri, "alias-test", "setup-a") is None
    first = promote(5.0)
    assert first is not None
    assert str(client.get_model_version_by_alias("alias-test", CHAMPION).version) == first.version
    assert promote(7.0) is None and promote(5.0) is None  # worse or equal: nothing registered, alias stays
    assert len(client.search_model_versions("name='alias-test'")) == 1
    better = promote(3.0, step=3)
    assert better is not None and int(better.version) == int(first.version) + 1
    champion = client.get_model_version_by_alias("alias-test", CHAMPION)
    assert str(champion.version) == better.version and champion.tags[FID_TAG] == "3.0"
    assert champion.tags[SETUP_TAG] == "setup-a" and champion_fid(uri, "alias-test", "setup-a") == 3.0
    # A score from another setup cannot be compared; the job's own best decides.
    assert champion_fid(uri, "alias-test", "setup-b") is None
    assert promote(50.0, setup="setup-b") is not None and not warnings


def test_ganops_evaluate_reproduces_the_last_training_score_and_records_its_own_run(
    trained, capsys: pytest.CaptureFixture[str]
) -> None:
    first = trained["first"]
    uri = trained["uri"]
    main(["evaluate", "--run-id", first.mlflow_run_id, "--tracking-uri", uri])  # settings from the run's spec
    out = capsys.readouterr().out
    client = _client(uri)
    last_fid = client.get_metric_history(first.mlflow_run_id, "eval/fid")[-1].value
    lines = dict(line.split(None, 1) for line in out.splitlines()[1:] if not line.startswith("("))
    assert set(lines) == {"fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall"}
    # The same latents through the logged (exported) final G: the training run's last score.
    assert float(lines["fid"]) == pytest.approx(last_fid, rel=1e-3)
    assert f"({NUM_SAMPLES} generated vs {NUM_SAMPLES} mnist test images" in out
    runs = client.search_runs([client.get_run(first.mlflow_run_id).info.experiment_id],
                              "tags.`ganops.kind` = 'evaluate'")  # fmt: skip
    assert len(runs) == 1 and runs[0].data.tags["ganops.training_run_id"] == first.mlflow_run_id
    assert runs[0].data.metrics["eval/fid"] == pytest.approx(float(lines["fid"]), rel=1e-5)
    assert runs[0].data.params["num_samples"] == str(NUM_SAMPLES) and runs[0].data.params["reference.split"] == "test"
    # The GANEvaluation the flags stood for, kept with the run.
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"scores.json", "evaluation.yaml"} <= artifacts
    local = client.download_artifacts(runs[0].info.run_id, "evaluation.yaml")
    asked = yaml.safe_load(Path(local).read_text())
    assert asked["kind"] == "GANEvaluation" and asked["spec"]["run_id"] == first.mlflow_run_id


def test_ganops_evaluate_scores_a_registered_model_with_options_from_the_command_line(
    trained, weights: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, sha = weights
    main(["evaluate", "--model", f"models:/{REGISTERED}@{CHAMPION}", "--tracking-uri", trained["uri"],
          "--metrics", "fid,pr", "--num-samples", "8", "--inception-weights", str(path), "--inception-sha256", sha,
          "--no-log"])  # fmt: skip
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:3]] == ["fid", "precision"]
    assert "(8 generated vs 8 mnist test images" in out
    client = _client(trained["uri"])
    assert not client.search_runs([client.get_experiment_by_name("ganops").experiment_id],
                                  "tags.`ganops.kind` = 'evaluate' and params.num_samples = '8'")  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-samples", "1"], "--num-samples: must be >= 2"),
        (["--metrics", "fid,fjd"], "--metrics: must be one of: 'fid', 'kid', 'is', 'pr' (got 'fjd')"),
        (["--metrics", "fid,fid"], "--metrics: lists a metric twice"),
        (["--inception-sha256", "abc"], "--inception-sha256: expected 64 hex digits"),
        (["--device", "gpu7"], "--device: expected cpu, cuda, cuda:N or mps"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(args: list[str], message: str, capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--run-id", "0" * 32, "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_an_unknown_run_a_missing_file_and_a_wrong_sha256_are_clear_errors(
    trained, weights: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, run_id = trained["uri"], trained["first"].mlflow_run_id
    path, sha = weights

    def fails(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", "--tracking-uri", uri, *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err
        return err

    assert "--run-id: no run 0123" in fails("--run-id", "0123" + "0" * 28)
    missing = fails("--run-id", run_id, "--inception-weights", str(tmp_path / "nope.pth"))
    assert "--inception-weights: cannot read" in missing and "no such file" in missing
    assert "pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth" in missing
    # Weights named on the command line are held to the pinned pytorch-fid file by default.
    wrong = fails("--run-id", run_id, "--inception-weights", str(path))
    assert f"--inception-weights: {path} has sha256 {sha}, expected {PINNED_SHA256}" in wrong
    assert "--inception-sha256" in wrong


def test_the_network_has_the_fid_inception_layout_and_input_scaling() -> None:
    """Names and shapes as torchvision's Inception3(num_classes=1008, aux_logits=False), which
    pytorch-fid's weight file is a state dict of; the FID graph's own pooling in the blocks."""
    import torch.nn.functional as F

    from ganops.evaluate.inception import _tf_avg_pool, preprocess

    net = FIDInceptionV3().eval()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3) and shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    assert not any(k.startswith("AuxLogits") for k in shapes) and len(shapes) == 566
    # 23.9 M numbers: 95.5 MB of float32, as the official 95.6 MB file holds.
    assert sum(v.numel() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")) == 23_885_392

    # TensorFlow's average pool ignores the padding (a constant input stays constant at the
    # border, where torchvision's pool would shrink it); Mixed_7c max-pools its pool branch.
    x = torch.ones(1, 2048, 8, 8)
    assert torch.equal(_tf_avg_pool(x), x) and not torch.equal(F.avg_pool2d(x, 3, 1, 1), x)
    assert net.Mixed_7c.max_pool and not net.Mixed_7b.max_pool

    grey = torch.tensor([[[[0, 255], [255, 0]]]], dtype=torch.uint8)
    pre = preprocess(grey)
    assert pre.shape == (1, 3, 299, 299) and pre.min() == -1.0 and pre.max() == 1.0
    assert torch.equal(pre[:, 0], pre[:, 2])  # grey repeated to RGB
    with torch.inference_mode():
        pool3, logits = net(preprocess(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)))
        assert torch.allclose(logits, pool3 @ net.fc.weight.T)  # bias-free logits for IS
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)


def test_the_weights_are_checked_byte_for_byte_wherever_they_come_from(
    weights: tuple[Path, str], s3_weights: str
) -> None:
    path, sha = weights
    net, digest = load_inception(s3_weights, sha)  # from the S3 server
    assert digest == sha and not net.training
    saved = torch.load(path, map_location="cpu", weights_only=True)
    loaded = net.state_dict()
    assert set(saved) == set(loaded) and all(torch.equal(saved[k], loaded[k]) for k in saved)
    with pytest.raises(UserError, match=rf"eval\.inception_weights: .* has sha256 {sha}, expected {PINNED_SHA256}"):
        load_inception(str(path))  # default: the pinned hash
    with pytest.raises(UserError, match=r"eval\.inception_weights: cannot read s3://.* \(no such file\)"):
        load_inception(s3_weights + ".missing", sha)
    other = path.with_name("state.pth")
    torch.save({"fc.weight": torch.zeros(3)}, other)
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(UserError, match=r"not the FID Inception-v3 state dict \(missing: Conv2d_1a_3x3"):
        load_inception(str(other), other_sha)


def test_a_job_with_the_wrong_weights_fails_before_training(
    ray_cluster: None, mnist_root: Path, s3_weights: str, tmp_path: Path
) -> None:
    job = mnist_job(tmp_path, mnist_root, *_eval_overrides(s3_weights, "ab" * 32), "spec.scaling.num_workers=1",
                    "spec.train.epochs=1")  # fmt: skip
    with pytest.raises(UserError, match=r"eval\.inception_weights: s3://.* has sha256 [0-9a-f]{64}, expected (ab){32}"):
        run(job)
    assert not (tmp_path / job.name).exists(), sorted((tmp_path / job.name).rglob("*"))  # nothing started
