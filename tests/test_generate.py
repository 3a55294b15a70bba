"""``ganops generate`` end to end, from generators trained here and logged to MLflow."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ganops import jobdir
from ganops.errors import UserError
from ganops.generate.job import generate
from ganops.generate.source import Source, load_discriminator, load_generator, resolve
from tests.helpers import generation, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(two_worker_run) -> Source:
    """The generator of the session's main run (tests/runs.py), registered as gen-test."""
    return resolve(two_worker_run.tracking_uri, run_id=two_worker_run.run_id)


@pytest.fixture(scope="module")
def trained_cgan(cgan_run) -> Source:
    return resolve(cgan_run.tracking_uri, run_id=cgan_run.run_id)


@pytest.fixture(scope="module")
def champion(two_worker_run) -> dict:
    """The session's main run (tests/runs.py) with its older kept checkpoint as its best, and
    that checkpoint's G the registered champion: recorded as the trainer records a new best
    (``best/``, ``eval/best.json``, the run's tags, the version and its alias), with real
    functions. Other readers of the run read its final generator, which this leaves alone.

    No FID is computed (Inception is slow here): which epoch scores best would be chance,
    and the case that matters is a best that is not the latest checkpoint.
    """
    import torch

    from ganops.nets import build_generator
    from ganops.tracking import log_generator, promote_if_better
    from ganops.tracking import mlflow_client as _client

    storage, run_id, uri = two_worker_run.storage, two_worker_run.run_id, two_worker_run.tracking_uri
    final = resolve(uri, run_id=run_id)
    jd = jobdir.JobDir(str(storage), final.job.name)
    first, latest = jd.complete_checkpoints()[0], jd.latest_checkpoint()
    assert latest is not None and (first.name, latest.name) == ("epoch_0002", "epoch_0003")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(first.uri, tmp, dirs_exist_ok=True)
        best = jd.replace_best(tmp, first.name)
    state = torch.load(Path(best.uri) / jobdir.STATE_FILE, map_location="cpu", weights_only=True)
    info = final.info
    g = build_generator(final.job.spec.model, info.image_shape, info.num_classes)
    g.load_state_dict(state["nets"]["g_ema"] or state["nets"]["g"])

    def fail(message: str) -> None:
        raise AssertionError(message)

    promo = promote_if_better(uri, run_id, g, "gen-champion", 1.0, "test-setup", best.step, fail)
    assert promo is not None
    jd.write_best({"fid": 1.0, "epoch": best.epoch, "step": best.step, "setup": "test-setup", "checkpoint": best.uri,
                   "model_uri": promo.model_uri, "registered_version": promo.version})  # fmt: skip
    client = _client(uri)
    for key, value in {"ganops.best_fid": "1.0", "ganops.best_step": str(best.step), "ganops.best_checkpoint": best.uri,
                       "ganops.champion_version": promo.version}.items():  # fmt: skip
        client.set_tag(run_id, key, value)
    # A version that no checkpoint of the run is recorded for: its D is unknown.
    torch.manual_seed(0)
    stray = build_generator(final.job.spec.model, info.image_shape, info.num_classes)
    assert log_generator(uri, run_id, stray, "gen-champion", fail)
    stray_version = max(int(v.version) for v in client.search_model_versions("name='gen-champion'"))
    return {"uri": uri, "run_id": run_id, "storage": storage, "best": best.uri, "latest": latest.uri,
            "champion_version": promo.version, "stray_version": str(stray_version)}  # fmt: skip


def _gen(source: Source, out: Path | str, **kw: object):
    """The engine, given ``source``, as client.generate runs it (the --z file read once)."""
    from ganops.generate.latents import read_z_file

    gen = generation(str(out), **{"num": 40, "batch_size": 16, "shard_size": 16, **kw})
    z_file = read_z_file(gen.spec.z_file) if gen.spec.z_file else None
    return generate(source, gen, z_file=z_file, show_progress=False, echo=lambda _m: None)


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("png/*/*.png"))}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("generate", *args, timeout=300)


def test_the_cli_writes_images_shards_a_preview_and_the_manifest_last(trained: Source, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from ganops import storage
    from ganops.generate import writer

    out = tmp_path / "gen"
    storage_root = trained.tracking_uri[len("sqlite:///") :].rsplit("/", 1)[0]
    r = _cli("--run-id", trained.run_id, "--num", "300", "--out", str(out), "--format", "both", "--seed", "3",
             "--shard-size", "128", "--storage", storage_root, "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = writer.verify(storage.locate(str(out)))  # every checksum matches what is on disk
    assert manifest["count"] == 300 and [s["count"] for s in manifest["shards"]] == [128, 128, 44]
    assert manifest["model_uri"] == trained.model_uri and manifest["training_run_id"] == trained.run_id
    assert manifest["seed"] == 3 and manifest["spec"]["spec"]["format"] == "both"
    assert len(_pngs(out)) == 300 and (out / "preview.png").exists()
    shard = np.load(out / "npz" / "shard_00002.npz")
    assert shard["images"].shape == (44, 28, 28, 1) and shard["images"].dtype == np.uint8
    assert list(shard["indices"]) == list(range(256, 300))
    gen_run = MlflowClient(trained.tracking_uri).get_run(manifest["generation_run_id"])
    assert gen_run.data.tags["ganops.training_run_id"] == trained.run_id
    assert gen_run.data.params["num"] == "300" and gen_run.info.status == "FINISHED"
    artifacts = {a.path for a in MlflowClient(trained.tracking_uri).list_artifacts(gen_run.info.run_id)}
    assert {"manifest.json", "preview.png"} <= artifacts  # the manifest and a grid, never the bulk images
    # The resolved GANGeneration the flags stood for: with the output and with the run.
    assert "generation.yaml" in artifacts
    spec = manifest["spec"]
    assert spec["kind"] == "GANGeneration" and spec["spec"]["num"] == 300 and spec["spec"]["format"] == "both"
    assert spec["spec"]["tracking"]["uri"] == trained.tracking_uri


def test_the_same_seed_gives_byte_identical_images(trained: Source, tmp_path: Path) -> None:
    _gen(trained, tmp_path / "a", seed=11)
    _gen(trained, tmp_path / "b", seed=11)
    _gen(trained, tmp_path / "c", seed=12)
    a, b, c = _pngs(tmp_path / "a"), _pngs(tmp_path / "b"), _pngs(tmp_path / "c")
    assert len(a) == 40 and a == b
    assert a != c


def test_ray_workers_shard_the_job_with_no_index_missing_or_duplicated(trained: Source, tmp_path: Path) -> None:
    _gen(trained, tmp_path / "one", seed=5, num=70)
    result = _gen(trained, tmp_path / "two", seed=5, num=70, workers=2)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    covered = sorted(i for s in manifest["shards"] for i in range(s["start"], s["stop"]))
    assert covered == list(range(70)) and result.count == 70
    # Each image depends only on (seed, index): the same bytes whoever made its shard.
    assert _pngs(tmp_path / "two") == _pngs(tmp_path / "one")


def test_best_of_keeps_what_the_discriminator_rates_more_real(trained: Source, tmp_path: Path) -> None:
    import torch

    from ganops.generate import core

    _gen(trained, tmp_path / "plain", seed=2, num=64, shard_size=64, formats=("npz",))
    _gen(trained, tmp_path / "best", seed=2, num=64, shard_size=64, formats=("npz",), best_of=4)
    d = load_discriminator(trained)

    def mean_score(out: Path) -> float:
        images = np.load(out / "npz" / "shard_00000.npz")["images"].transpose(0, 3, 1, 2)
        return float(core.score(d, images, None, 32, torch.device("cpu")).mean())

    assert mean_score(tmp_path / "best") > mean_score(tmp_path / "plain")


@pytest.mark.parametrize("extra", [{"truncation": 0.8}, {"best_of": 3}], ids=["truncation", "best-of"])
def test_the_first_images_of_a_longer_run_are_the_images_of_a_shorter_one_whatever_the_shards(
    trained: Source, tmp_path: Path, extra: dict
) -> None:
    _gen(trained, tmp_path / "ten", seed=6, num=10, **extra)  # one shard of 16
    _gen(trained, tmp_path / "seven", seed=6, num=7, **extra)
    _gen(trained, tmp_path / "threes", seed=6, num=10, shard_size=3, **extra)
    ten = _pngs(tmp_path / "ten")
    assert len(ten) == 10
    assert _pngs(tmp_path / "seven") == {name: ten[name] for name in sorted(ten)[:7]}
    assert _pngs(tmp_path / "threes") == ten


def _discriminator_of(checkpoint: str, source: Source):
    import torch

    from ganops.nets import build_discriminator

    state = torch.load(Path(checkpoint) / jobdir.STATE_FILE, map_location="cpu", weights_only=True)
    d = build_discriminator(source.job.spec.model, source.info.image_shape, source.info.num_classes)
    d.load_state_dict(state["nets"]["d"])
    return d.eval()


def test_best_of_ranks_each_generator_with_the_discriminator_saved_with_it(champion: dict, tmp_path: Path) -> None:
    import torch

    from ganops.generate import core

    opts = {"num": 12, "seed": 8, "shard_size": 12, "batch_size": 16, "best_of": 4}

    def made(source: Source, name: str) -> np.ndarray:
        _gen(source, tmp_path / name, formats=("npz",), **opts)
        return np.load(tmp_path / name / "npz" / "shard_00000.npz")["images"].transpose(0, 3, 1, 2)

    def ranked_by(source: Source, checkpoint: str) -> np.ndarray:
        g, d = load_generator(source), _discriminator_of(checkpoint, source)
        return core.generate_shard(g, d, generation(**opts).spec, source.info, 0, 0, 12, torch.device("cpu")).images

    # The champion (epoch 1, the job's best/) ranks with best/'s D, not with the latest (epoch 2) D.
    for model in ("models:/gen-champion@champion", f"models:/gen-champion/{champion['champion_version']}"):
        source = resolve(champion["uri"], model=model)
        with_best, with_latest = ranked_by(source, champion["best"]), ranked_by(source, champion["latest"])
        assert not np.array_equal(with_best, with_latest)  # the two Ds choose differently: the test can tell
        assert np.array_equal(made(source, model.rsplit("/", 1)[-1]), with_best)
    # The run's final generator (epoch 2) ranks with the latest checkpoint's D.
    final = resolve(champion["uri"], run_id=champion["run_id"])
    assert np.array_equal(made(final, "final"), ranked_by(final, champion["latest"]))


def test_best_of_is_refused_for_a_generator_whose_discriminator_is_unknown(champion: dict, tmp_path: Path) -> None:
    model = f"models:/gen-champion/{champion['stray_version']}"
    r = _cli("--model", model, "--num", "4", "--storage", str(champion["storage"]), "--best-of", "2",
             "--out", str(tmp_path / "refused"))  # fmt: skip
    assert r.returncode == 2 and "--best-of: " in r.stderr and model in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "refused" / "png").exists()
    source = resolve(champion["uri"], model=model)
    assert _gen(source, tmp_path / "plain", num=4).count == 4  # the model itself is fine


def test_output_goes_to_s3_with_a_verifiable_manifest(trained: Source, bucket: str) -> None:
    from ganops import storage
    from ganops.generate import writer

    _gen(trained, f"s3://{bucket}/gen/run1", seed=1, formats=("png", "npz"))
    manifest = writer.verify(storage.locate(f"s3://{bucket}/gen/run1"))
    assert manifest["count"] == 40


def test_a_registered_model_uri_is_a_source(trained: Source, tmp_path: Path) -> None:
    source = resolve(trained.tracking_uri, model="models:/gen-test/1")
    assert source.run_id == trained.run_id
    assert _gen(source, tmp_path / "m", num=8).count == 8


def test_conditional_models_take_a_class_and_lay_interpolations_out_in_rows(
    trained_cgan: Source, tmp_path: Path
) -> None:
    result = _gen(trained_cgan, tmp_path / "sevens", class_index=7, num=20, formats=("npz",))
    shard = np.load(tmp_path / "sevens" / "npz" / "shard_00000.npz")
    assert result.count == 20 and set(shard["labels"].tolist()) == {7}
    walk = _gen(trained_cgan, tmp_path / "walk", num=3, interpolate=6)
    manifest = json.loads((tmp_path / "walk" / "manifest.json").read_text())
    assert manifest["kind"] == "interpolation" and walk.count == 18
    from PIL import Image

    assert Image.open(tmp_path / "walk" / "interpolation.png").size == (6 * 30 + 2, 3 * 30 + 2)
    assert Image.open(tmp_path / "walk" / "interpolation.gif").n_frames == 6


def test_latent_vectors_from_a_file_make_exactly_those_images(trained: Source, tmp_path: Path) -> None:
    # Latent arithmetic: the mean of some vectors, and vectors moved along a direction.
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 100)).astype(np.float32)
    z = np.concatenate([base, base.mean(0, keepdims=True), base[:1] + (base[1] - base[2])]).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    _gen(trained, tmp_path / "arith", num=6, z_file=str(tmp_path / "z.npy"), save_z=True, formats=("npz",))
    shard = np.load(tmp_path / "arith" / "npz" / "shard_00000.npz")
    assert np.array_equal(shard["z"], z)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-id", "0123456789abcdef0123456789abcdef"], "--run-id: no run 0123456789abcdef0123456789abcdef"),
        (["--class", "3"], "--class: "),
        (["--num", "0"], "--num: must be > 0"),
        (["--truncation", "-1"], "--truncation: must be > 0"),
        (["--truncation", "nan"], "--truncation: must be a finite number"),
        (["--truncation", "inf"], "--truncation: must be a finite number"),
        (["--best-of", "0"], "--best-of: must be > 0"),
        (["--seed", "-1"], "--seed: must be >= 0"),
        (["--model", "models:/no-such-model/9"], "--model: models:/no-such-model/9 was not found"),
    ],
)
def test_bad_input_is_refused_before_any_image_is_made(
    trained: Source, tmp_path: Path, args: list[str], message: str
) -> None:
    storage_root = trained.tracking_uri[len("sqlite:///") :].rsplit("/", 1)[0]
    source = [] if "--run-id" in args or "--model" in args else ["--run-id", trained.run_id]
    r = _cli(*source, "--out", str(tmp_path / "out"), "--storage", storage_root, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "png").exists()


def test_a_class_out_of_range_and_a_run_without_a_generator_are_refused(trained_cgan: Source, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    with pytest.raises(UserError, match=r"--class: 10 is out of range; the model has 10 classes \(0-9\)"):
        _gen(trained_cgan, tmp_path / "o", class_index=10)
    bare = MlflowClient(trained_cgan.tracking_uri).create_run(trained_cgan.experiment_id).info.run_id
    with pytest.raises(UserError, match="has no generator"):
        resolve(trained_cgan.tracking_uri, run_id=bare)


def test_a_finished_output_is_never_overwritten_and_an_unwritable_one_is_refused(
    trained: Source, tmp_path: Path
) -> None:
    _gen(trained, tmp_path / "done", num=8)
    before = (tmp_path / "done" / "manifest.json").read_bytes()
    with pytest.raises(UserError, match="--out: .* already holds a finished generation"):
        _gen(trained, tmp_path / "done", num=8, seed=99)
    assert (tmp_path / "done" / "manifest.json").read_bytes() == before
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="--out"):
        _gen(trained, blocker / "out", num=8)
    # The user's own files in --out (before: shards written over them, exit 0); an unfinished
    # generation's own files are resumed over, as before.
    theirs = tmp_path / "theirs"
    (theirs / "png").mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"--out: .*theirs holds files a generation does not write \(notes\.txt\)"):
        _gen(trained, theirs, num=8)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt", "png"] and not any((theirs / "png").iterdir())
    (theirs / "notes.txt").unlink()
    _gen(trained, theirs, num=8)
    assert (theirs / "manifest.json").exists()


def test_an_output_on_an_unreachable_s3_endpoint_is_a_clear_error(
    trained: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: pyarrow's OSError traceback from the look for an earlier manifest.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(UserError, match=r"--out: cannot look into s3://nobucket/x \(.*NETWORK_CONNECTION"):
        _gen(trained, "s3://nobucket/x", num=8)
