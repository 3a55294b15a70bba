"""The batch-generation library: latents, G/D in batches, shard files, manifest, verify.

Real tiny networks (random weights), real files on a local disk and on a real S3 server.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganops import jobdir, storage
from ganops.errors import UserError
from ganops.generate import core, latents, writer
from ganops.generate.options import ModelInfo
from ganops.generate.source import Source, discriminator_checkpoint, load_discriminator
from ganops.nets import build_discriminator, build_generator
from ganops.nets.export import GeneratorExport
from ganops.spec.generation import GANGenerationSpec
from ganops.spec.models import ModelSpec
from tests.helpers import generation

CPU = torch.device("cpu")


def _opts(**fields: object) -> GANGenerationSpec:
    """A validated generation spec (num resolved, as client.generate leaves it)."""
    return generation(**fields).spec


SHAPE = (1, 28, 28)
LATENT = 16
CLASSES = 10
INFO = ModelInfo(LATENT, None, SHAPE)
INFO_COND = ModelInfo(LATENT, CLASSES, SHAPE)


def _spec(conditional: bool = False) -> ModelSpec:
    return ModelSpec(
        arch="dcgan", g_widths=[32, 16, 8], d_widths=[8, 16], latent_dim=LATENT, conditional=conditional, init="default"
    )


def _generator(seed: int, num_classes: int | None) -> GeneratorExport:
    """Random weights, doubled: an untrained G's images are otherwise a flat grey (127/128),
    which would make pixel round trips and D's ranking weak tests."""
    torch.manual_seed(seed)
    net = build_generator(_spec(num_classes is not None), SHAPE, num_classes)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.mul_(2.0)
    return GeneratorExport(net)


@pytest.fixture(scope="module")
def g() -> GeneratorExport:
    return _generator(0, None)


@pytest.fixture(scope="module")
def g_cond() -> GeneratorExport:
    return _generator(1, CLASSES)


@pytest.fixture(scope="module")
def d() -> torch.nn.Module:
    torch.manual_seed(2)
    return build_discriminator(_spec(), SHAPE, None)


@pytest.fixture(scope="module")
def d_cond() -> torch.nn.Module:
    torch.manual_seed(3)
    return build_discriminator(_spec(True), SHAPE, CLASSES)


# --- latents -----------------------------------------------------------------------------


@pytest.mark.parametrize("num,size", [(0, 4), (3, 10), (10, 10), (30, 10), (31, 10), (7, 1), (1000, 64)])
def test_shard_ranges_cover_every_index_exactly_once(num: int, size: int) -> None:
    ranges = latents.shard_ranges(num, size)
    covered = [i for start, stop in ranges for i in range(start, stop)]
    assert covered == list(range(num))
    assert all(0 < stop - start <= size for start, stop in ranges)
    assert len(ranges) == -(-num // size)


def test_a_shards_latents_are_the_same_whatever_order_the_shards_are_made_in() -> None:
    opts = _opts(num=50, seed=7, shard_size=20)
    ranges = latents.shard_ranges(opts.count, opts.shard_size)
    forward = [latents.shard_latents(opts, INFO, s, *r)[0] for s, r in enumerate(ranges)]
    backward = [latents.shard_latents(opts, INFO, s, *r)[0] for s, r in reversed(list(enumerate(ranges)))][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    assert [len(z) for z in forward] == [20, 20, 10]
    assert not np.array_equal(forward[0][:10], forward[2])  # shards draw from their own streams
    other_seed = latents.shard_latents(_opts(num=50, seed=8, shard_size=20), INFO, 0, 0, 20)[0]
    assert not np.allclose(other_seed, forward[0])


def test_truncation_bounds_every_entry_and_resamples_rather_than_clips() -> None:
    t = 0.5
    opts = _opts(num=200, truncation=t)
    z, _ = latents.shard_latents(opts, INFO, 0, 0, 200)
    assert z.shape == (200, LATENT)
    assert np.abs(z).max() <= t
    # Clipping would pile ~62% of the entries onto ±t; resampling leaves the inside spread out.
    assert np.mean(np.abs(z) == np.float32(t)) < 0.001
    hist, _ = np.histogram(z, bins=10, range=(-t, t))
    assert hist.min() > 0.05 * z.size
    assert np.array_equal(z, latents.shard_latents(opts, INFO, 0, 0, 200)[0])
    with pytest.raises(UserError, match="truncation"):  # refused by the spec, before any latent
        _opts(num=4, truncation=0.0)


def test_class_index_gives_every_image_that_class() -> None:
    _, labels = latents.shard_latents(_opts(num=30, class_index=4), INFO_COND, 1, 10, 30)
    assert labels is not None and labels.dtype == np.int64
    assert labels.tolist() == [4] * 20


def test_classes_cycle_with_the_image_index_by_default_and_unconditional_models_get_none() -> None:
    _, labels = latents.shard_latents(_opts(num=30), INFO_COND, 1, 7, 30)
    assert labels.tolist() == [i % CLASSES for i in range(7, 30)]
    assert latents.shard_latents(_opts(num=30), INFO, 0, 0, 30)[1] is None


def test_best_of_candidates_carry_their_images_label() -> None:
    opts = _opts(num=12, best_of=3)
    z, labels = latents.shard_latents(opts, INFO_COND, 0, 5, 12)
    assert z.shape == (7 * 3, LATENT)
    assert labels.tolist() == [i % CLASSES for i in range(5, 12) for _ in range(3)]
    # Each image's first candidate is the vector best-of-1 uses: best-of only adds choices.
    assert np.array_equal(z[::3], latents.shard_latents(_opts(num=12), INFO_COND, 0, 5, 12)[0])
    # and candidate c of an image is the same whatever K (> c) is, with --truncation too.
    for t in (None, 0.9):
        two = latents.shard_latents(_opts(num=12, best_of=2, truncation=t), INFO, 0, 5, 12)[0]
        five = latents.shard_latents(_opts(num=12, best_of=5, truncation=t), INFO, 0, 5, 12)[0]
        assert np.array_equal(two.reshape(7, 2, LATENT), five.reshape(7, 5, LATENT)[:, :2])


def test_vectors_from_a_z_file_are_used_as_they_are() -> None:
    z_all = np.random.default_rng(0).standard_normal((9, LATENT)).astype(np.float32)
    labels_all = np.arange(9) % 3
    z, labels = latents.shard_latents(_opts(num=9), INFO_COND, 1, 4, 9, z_all, labels_all)
    assert np.array_equal(z, z_all[4:9]) and labels.tolist() == labels_all[4:9].tolist()
    with pytest.raises(UserError, match="best_of"):  # the spec refuses best-of with given vectors
        _opts(num=9, best_of=2, z_file="z.npy")


# --- interpolation -----------------------------------------------------------------------


def test_interpolation_walks_start_and_end_on_anchors_that_consecutive_walks_share() -> None:
    opts = _opts(num=4, interpolate=6, seed=3)
    z, labels = latents.interpolation_latents(opts, INFO)
    assert z.shape == (4, 6, LATENT) and z.dtype == np.float32 and labels is None
    anchors = latents.shard_latents(_opts(num=5, seed=3), INFO, 0, 0, 5)[0]  # images 0..4 of seed 3
    for i in range(4):
        assert np.array_equal(z[i, 0], anchors[i]) and np.array_equal(z[i, -1], anchors[i + 1])
    assert np.array_equal(z[:-1, -1], z[1:, 0])
    assert np.array_equal(z, latents.interpolation_latents(opts, INFO)[0])
    assert not np.allclose(z, latents.interpolation_latents(_opts(num=4, interpolate=6, seed=4), INFO)[0])


def test_slerp_keeps_the_norm_between_the_anchors_norms_where_a_straight_line_would_sag() -> None:
    z, _ = latents.interpolation_latents(_opts(num=8, interpolate=9), INFO)
    for walk in z.astype(np.float64):
        norms = np.linalg.norm(walk, axis=1)
        lo, hi = sorted((norms[0], norms[-1]))
        assert np.all(norms >= lo * 0.97) and np.all(norms <= hi * 1.03)
        straight_middle = np.linalg.norm((walk[0] + walk[-1]) / 2)
        assert norms[4] > straight_middle  # not a linear interpolation


def test_interpolation_gives_each_walk_one_class() -> None:
    _, labels = latents.interpolation_latents(_opts(num=12, interpolate=3), INFO_COND)
    assert labels.tolist() == [i % CLASSES for i in range(12)]
    _, labels = latents.interpolation_latents(_opts(num=3, interpolate=3, class_index=2), INFO_COND)
    assert labels.tolist() == [2, 2, 2]
    with pytest.raises(UserError, match="interpolate"):
        _opts(num=3, interpolate=1)


# --- --z files ---------------------------------------------------------------------------


def _load_z(path: str, info: ModelInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """A --z file as generate reads it: once (read_z_file), then checked against the model."""
    return latents.check_z(latents.read_z_file(path), path, info)


def _save_npy(path: Path, a: np.ndarray) -> str:
    np.save(path, a)
    return str(path)


def test_a_npy_z_file_round_trips(tmp_path: Path) -> None:
    z = np.random.default_rng(1).standard_normal((5, LATENT))
    got, labels = _load_z(_save_npy(tmp_path / "z.npy", z), INFO)
    assert got.dtype == np.float32 and np.array_equal(got, z.astype(np.float32)) and labels is None


def test_a_npz_z_file_round_trips_with_its_labels(tmp_path: Path) -> None:
    z = np.random.default_rng(2).standard_normal((6, LATENT)).astype(np.float32)
    np.savez(tmp_path / "z.npz", z=z, labels=np.array([0, 9, 3, 3, 1, 2]))
    got, labels = _load_z(str(tmp_path / "z.npz"), INFO_COND)
    assert np.array_equal(got, z) and labels.tolist() == [0, 9, 3, 3, 1, 2] and labels.dtype == np.int64


def test_a_z_file_may_carry_the_class_as_its_last_column_like_the_mlflow_model_input(tmp_path: Path) -> None:
    x = GeneratorExport(build_generator(_spec(True), SHAPE, CLASSES)).example_input(4)
    got, labels = _load_z(_save_npy(tmp_path / "x.npy", x), INFO_COND)
    assert np.array_equal(got, x[:, :LATENT]) and labels.tolist() == [0, 1, 2, 3]


@pytest.mark.slow  # the S3 server
def test_a_z_file_is_read_from_s3(bucket: str) -> None:
    z = np.random.default_rng(3).standard_normal((3, LATENT)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, z)
    storage.write_bytes(storage.locate(f"s3://{bucket}/in/z.npy"), buf.getvalue())
    got, _ = _load_z(f"s3://{bucket}/in/z.npy", INFO)
    assert np.array_equal(got, z)


@pytest.mark.parametrize(
    "name,content,info,message",
    [
        ("wrong-width.npy", np.zeros((4, LATENT + 3)), INFO, "width 19"),
        ("nan.npy", np.full((4, LATENT), np.nan), INFO, "NaN"),
        ("cube.npy", np.zeros((2, 4, LATENT)), INFO, "3-D"),
        ("class-column.npy", np.zeros((4, LATENT + 1)), INFO, "width 17"),  # unconditional: no class column
        ("bad-class.npy", np.hstack([np.zeros((2, LATENT)), [[1], [10]]]), INFO_COND, "class 10 out of range"),
        ("labels.npz", {"z": np.zeros((2, LATENT)), "labels": np.array([3, -1])}, INFO_COND, "class -1 out of range"),
        ("half-label.npz", {"z": np.zeros((2, LATENT)), "labels": np.array([0.5, 1])}, INFO_COND, "whole numbers"),
        ("no-z.npz", {"latents": np.zeros((2, LATENT))}, INFO, "no array named 'z'"),
        ("labels-unconditional.npz", {"z": np.zeros((2, LATENT)), "labels": np.array([0, 1])}, INFO, "not class"),
        ("text.npy", None, INFO, "cannot read"),
    ],
)
def test_a_bad_z_file_is_a_user_error_naming_the_flag(
    tmp_path: Path, name: str, content: object, info: ModelInfo, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, dict):
        np.savez(path, **content)
    elif content is None:
        path.write_text("not numpy")
    else:
        np.save(path, content)
    with pytest.raises(UserError, match=f"^--z: .*{message}"):
        _load_z(str(path), info)


def test_a_missing_z_file_is_a_user_error_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="^--z: no such file"):
        _load_z(str(tmp_path / "absent.npy"), INFO)


# --- G and D -----------------------------------------------------------------------------


def test_generated_images_are_uint8_and_byte_identical_for_the_same_seed_and_batch_size(g: GeneratorExport) -> None:
    opts = _opts(num=40, seed=5)
    z, labels = latents.shard_latents(opts, INFO, 0, 0, 40)
    a = core.generate_images(g, z, labels, INFO, 16, CPU)
    b = core.generate_images(g, latents.shard_latents(opts, INFO, 0, 0, 40)[0], None, INFO, 16, CPU)
    assert a.shape == (40, *SHAPE) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert a.min() < 50 and a.max() > 200  # real pixel values, not a constant
    assert not np.array_equal(a[0], a[1])


def test_a_conditional_generator_gets_the_class_as_its_last_input_column(g_cond: GeneratorExport) -> None:
    z = latents.shard_latents(_opts(num=4), INFO, 0, 0, 4)[0]
    same_z = np.repeat(z[:1], 2, axis=0)
    images = core.generate_images(g_cond, same_z, np.array([1, 7]), INFO_COND, 8, CPU)
    assert not np.array_equal(images[0], images[1])  # the class changes the image
    direct = g_cond(torch.from_numpy(core.generator_input(z, np.array([0, 1, 2, 3]), INFO_COND))).detach().numpy()
    assert np.array_equal(core.generate_images(g_cond, z, np.array([0, 1, 2, 3]), INFO_COND, 3, CPU),
                          core.to_uint8(direct))  # fmt: skip
    with pytest.raises(ValueError, match="label"):
        core.generate_images(g_cond, z, None, INFO_COND, 8, CPU)
    # The export wrapper stays as it was (train mode) around its eval-mode G: BatchNorm
    # must not be switched to batch statistics by restoring the wrapper's mode.
    assert g_cond.training and not any(m.training for m in g_cond.g.modules())


def test_scores_are_the_discriminators_logits_in_eval_mode(d: torch.nn.Module) -> None:
    images = np.random.default_rng(0).integers(0, 256, (10, *SHAPE), dtype=np.uint8)
    d.train()
    s = core.score(d, images, None, 4, CPU)
    assert d.training  # the caller's mode is restored
    d.eval()
    with torch.no_grad():
        expected = d(torch.from_numpy(images).float() / 127.5 - 1).numpy()
    assert s.dtype == np.float32 and s.shape == (10,)
    np.testing.assert_allclose(s, expected, rtol=1e-5, atol=1e-7)


def test_best_of_four_keeps_images_the_discriminator_rates_higher_than_best_of_one(
    g: GeneratorExport, d: torch.nn.Module
) -> None:
    one = core.generate_shard(g, d, _opts(num=64, seed=11), INFO, 0, 0, 64, CPU)
    four = core.generate_shard(g, d, _opts(num=64, seed=11, best_of=4), INFO, 0, 0, 64, CPU)
    assert one.scores is None and four.images.shape == (64, *SHAPE) and four.z.shape == (64, LATENT)
    baseline = core.score(d, one.images, None, 256, CPU)
    assert four.scores.mean() > baseline.mean()
    # What was kept: for each image, the best of its own four candidates, with its z and score.
    cands, _ = latents.shard_latents(_opts(num=64, seed=11, best_of=4), INFO, 0, 0, 64)
    all_scores = core.score(d, core.generate_images(g, cands, None, INFO, 256, CPU), None, 256, CPU).reshape(64, 4)
    best = all_scores.argmax(axis=1)
    assert set(best.tolist()) == {0, 1, 2, 3}  # not always the first: D did choose
    np.testing.assert_array_equal(four.z, cands.reshape(64, 4, LATENT)[np.arange(64), best])
    np.testing.assert_array_equal(four.scores, all_scores.max(axis=1))
    np.testing.assert_array_equal(one.z, cands[::4])  # best-of-1 makes each image's first candidate


def test_best_of_keeps_every_images_class_for_conditional_models(
    g_cond: GeneratorExport, d_cond: torch.nn.Module
) -> None:
    r = core.generate_shard(g_cond, d_cond, _opts(num=30, best_of=3), INFO_COND, 1, 10, 30, CPU)
    assert r.labels.tolist() == [i % CLASSES for i in range(10, 30)]
    assert len(r.scores) == 20


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize(
    "extra",
    [{"truncation": 0.7}, {"best_of": 3}, {"best_of": 3, "truncation": 0.7}],
    ids=["truncation", "best-of", "both"],
)
def test_image_i_depends_only_on_the_seed_and_i_whatever_num_and_shard_size(
    extra: dict, conditional: bool, g: GeneratorExport, d: torch.nn.Module,
    g_cond: GeneratorExport, d_cond: torch.nn.Module,
) -> None:  # fmt: skip
    gen, disc, info = (g_cond, d_cond, INFO_COND) if conditional else (g, d, INFO)

    def run(num: int, shard_size: int) -> tuple[np.ndarray, np.ndarray]:
        opts = _opts(num=num, seed=4, shard_size=shard_size, batch_size=5, **extra)
        parts = [core.generate_shard(gen, disc, opts, info, s, *r, CPU)
                 for s, r in enumerate(latents.shard_ranges(num, shard_size))]  # fmt: skip
        return np.concatenate([p.images for p in parts]), np.concatenate([p.z for p in parts])

    ten, z_ten = run(10, 10)
    seven, z_seven = run(7, 10)
    threes, z_threes = run(10, 3)
    assert np.array_equal(z_ten[:7], z_seven) and np.array_equal(z_ten, z_threes)
    assert np.array_equal(ten[:7], seven) and np.array_equal(ten, threes)
    if "truncation" in extra:
        assert np.abs(z_ten).max() <= extra["truncation"]


def test_best_of_without_a_discriminator_is_refused(g: GeneratorExport) -> None:
    with pytest.raises(ValueError, match="discriminator"):
        core.generate_shard(g, None, _opts(num=4, best_of=2), INFO, 0, 0, 4, CPU)


# --- which D ranks: the one saved with G ---------------------------------------------------


def test_best_of_takes_d_from_the_checkpoint_saved_with_the_generator_and_checks_its_weights(tmp_path: Path) -> None:
    """What a job records (see ganops.train.loop): its final G next to the latest checkpoint
    (run tags), a champion next to best/ (eval/best.json). Real files, real networks."""
    from tests.conftest import MNIST, mnist_job

    job = mnist_job(tmp_path, MNIST)
    info = ModelInfo(job.spec.model.latent_dim, None, SHAPE)
    torch.manual_seed(0)
    g_best, g_final = (build_generator(job.spec.model, SHAPE, None) for _ in range(2))
    d_best, d_final = (build_discriminator(job.spec.model, SHAPE, None) for _ in range(2))

    def save(where: str, g: torch.nn.Module, d: torch.nn.Module) -> str:
        path = tmp_path / job.name / where
        path.mkdir(parents=True)
        torch.save({"nets": {"g": g.state_dict(), "g_ema": None, "d": d.state_dict()}}, path / jobdir.STATE_FILE)
        return str(path)

    best, latest = save("best/epoch_0001", g_best, d_best), save("checkpoints/epoch_0002", g_final, d_final)
    jobdir.JobDir(str(tmp_path), job.name).write_best({"fid": 3.0, "checkpoint": best, "model_uri": "models:/m-best"})

    def source(logged: str, final: str = "models:/m-final") -> Source:
        return Source(model_uri="models:/gan@champion", run_id="r1", tracking_uri="sqlite://", experiment_id="0",
                      job=job, info=info, checkpoint=latest, logged_model=logged, final_model=final,
                      storage=str(tmp_path))  # fmt: skip

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    for logged, g, d, checkpoint in (("models:/m-best", g_best, d_best, best),
                                     ("models:/m-final", g_final, d_final, latest)):  # fmt: skip
        assert discriminator_checkpoint(source(logged)) == checkpoint
        assert same(load_discriminator(source(logged), GeneratorExport(g)), d)
    # A final G that is also the champion: best/ (the same step as the latest checkpoint).
    assert discriminator_checkpoint(source("models:/m-best", final="models:/m-best")) == best
    # An older champion (best/ has moved on) or a version logged by hand: no D is known.
    with pytest.raises(UserError, match=r"^--best-of: models:/gan@champion was saved neither with run r1"):
        load_discriminator(source("models:/m-older"))
    # The records point at a checkpoint whose own G is another one: refused, not used.
    with pytest.raises(UserError, match=r"^--best-of: the checkpoint .*epoch_0001 .* holds another generator"):
        load_discriminator(source("models:/m-best"), GeneratorExport(g_final))


# --- files -------------------------------------------------------------------------------


def _run(
    g: torch.nn.Module, info: ModelInfo, out: storage.Location, opts: GANGenerationSpec, pool: Executor | None = None
) -> tuple[list[core.ShardResult], dict]:
    results, records = [], []
    for shard, (start, stop) in enumerate(latents.shard_ranges(opts.count, opts.shard_size)):
        results.append(core.generate_shard(g, None, opts, info, shard, start, stop, CPU))
        records.append(writer.write_shard(out, results[-1], opts.formats, opts.save_z, pool))
    manifest = {"count": opts.count, "seed": opts.seed, "spec": opts.model_dump(), "shards": records}
    return results, manifest


def _png(out: storage.Location, name: str) -> Image.Image:
    return Image.open(io.BytesIO(storage.read_bytes(out.child(name))))


@pytest.mark.parametrize("formats", [("png",), ("npz",), ("png", "npz")], ids=["png", "npz", "both"])
@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.slow)])  # s3: the S3 server
def test_shards_manifest_and_verify_round_trip(
    where: str, formats: tuple[str, ...], g_cond: GeneratorExport, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    uri = str(tmp_path / "gen") if where == "local" else f"s3://{request.getfixturevalue('bucket')}/gen"
    out = storage.locate(uri)
    assert writer.existing_output(out) is None
    opts = _opts(num=23, seed=2, shard_size=10, formats=formats, save_z=True)
    with ThreadPoolExecutor(2) as pool:  # processes are tested below; threads start faster
        results, manifest = _run(g_cond, INFO_COND, out, opts, pool)
    assert writer.existing_output(out) == "partial"
    preview = writer.write_preview(out, np.concatenate([r.images for r in results]))
    writer.write_manifest(out, manifest)
    assert writer.existing_output(out) == "complete"

    assert preview == "preview.png" and _png(out, preview).size == (5 * 30 + 2, 5 * 30 + 2)
    assert writer.verify(out) == json.loads(json.dumps(manifest))
    assert json.loads(storage.read_bytes(out.child("manifest.json"))) == json.loads(json.dumps(manifest))
    records = manifest["shards"]
    assert [(r["shard"], r["start"], r["stop"], r["count"]) for r in records] == [
        (0, 0, 10, 10), (1, 10, 20, 10), (2, 20, 23, 3)
    ]  # fmt: skip
    for result, record in zip(results, records, strict=True):
        expected = set()
        if "png" in formats:
            expected |= {f"png/{result.shard:05d}/{i:07d}.png" for i in range(result.start, result.stop)}
            for i, name in enumerate(sorted(n for n in record["files"] if n.startswith("png/"))):
                img = _png(out, name)
                assert img.mode == "L" and np.array_equal(np.asarray(img), result.images[i, 0])
        if "npz" in formats:
            expected.add(f"npz/shard_{result.shard:05d}.npz")
            with np.load(io.BytesIO(storage.read_bytes(out.child(f"npz/shard_{result.shard:05d}.npz")))) as npz:
                assert npz["images"].dtype == np.uint8
                assert np.array_equal(npz["images"], result.images.transpose(0, 2, 3, 1))
                assert npz["indices"].tolist() == list(range(result.start, result.stop))
                assert np.array_equal(npz["labels"], result.labels) and np.array_equal(npz["z"], result.z)
        else:
            expected.add(f"z/shard_{result.shard:05d}.npy")
            z = np.load(io.BytesIO(storage.read_bytes(out.child(f"z/shard_{result.shard:05d}.npy"))))
            assert np.array_equal(z, result.z)
        assert set(record["files"]) == expected

    victim = sorted(records[1]["files"])[0]
    storage.write_bytes(out.child(victim), b"not what was written")
    with pytest.raises(ValueError, match=f"{victim}: checksum mismatch"):
        writer.verify(out)


def test_a_deleted_file_fails_verification(g: GeneratorExport, tmp_path: Path) -> None:
    out = storage.locate(str(tmp_path / "gen"))
    _, manifest = _run(g, INFO, out, _opts(num=5, formats=("png",)))
    writer.write_manifest(out, manifest)
    writer.verify(out)
    (tmp_path / "gen" / "png" / "00000" / "0000003.png").unlink()
    with pytest.raises(ValueError, match="0000003.png: missing"):
        writer.verify(out)


def test_an_output_without_a_manifest_does_not_verify(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no manifest.json"):
        writer.verify(storage.locate(str(tmp_path)))


def test_rgb_images_are_written_as_rgb_pngs_with_exact_pixels() -> None:
    images = np.random.default_rng(4).integers(0, 256, (5, 3, 8, 6), dtype=np.uint8)
    for (data, sha), img in zip(writer.encode_pngs(images), images, strict=True):
        decoded = Image.open(io.BytesIO(data))
        assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), img.transpose(1, 2, 0))
        assert len(sha) == 64


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.slow)])  # s3: the S3 server
def test_worker_processes_threads_and_no_pool_write_the_same_files(
    where: str, g: GeneratorExport, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('bucket')}"
    opts = _opts(num=30, shard_size=30, formats=("png", "npz"))
    with writer.make_pool(2) as pool:
        _, procs = _run(g, INFO, storage.locate(f"{root}/p"), opts, pool)
    with ThreadPoolExecutor(2) as pool:
        _, threads = _run(g, INFO, storage.locate(f"{root}/t"), opts, pool)
    _, inline = _run(g, INFO, storage.locate(f"{root}/s"), opts, None)
    assert procs == threads == inline
    assert len(procs["shards"][0]["files"]) == 31
    for sub in ("p", "t", "s"):
        out = storage.locate(f"{root}/{sub}")
        writer.write_manifest(out, procs)
        writer.verify(out)  # every file is there, with the checksum the record says


def test_the_throughput_benchmark_times_both_sides_and_reports_their_ratio(tmp_path: Path) -> None:
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("generate_throughput", REPO / "bench" / "generate_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--images", "24", "--rounds", "2", "--warmup", "0", "--batch-size", "16", "--shard-size", "10",
                      "--pool", "threads", "--dir", str(tmp_path), "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(out))
    assert len(out["rounds"]) == 2
    for r in out["rounds"]:
        assert r["ganops"] > 0 and r["plain"] > 0 and r["ratio"] == pytest.approx(r["ganops"] / r["plain"])
        assert all(r["split_s"][side]["forward_s"] > 0 for side in ("ganops", "plain"))
    assert list(tmp_path.iterdir()) == [tmp_path / "r.json"]  # the images were cleaned up
