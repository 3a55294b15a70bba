"""`ganops generate` in bounded memory: what must not grow with --num, --best-of or the
number of shards, the limits refused up front naming their flag, and workers Ray could
never place refused at once.

Real pieces throughout: a generator logged to a real MLflow store (random weights: what is
measured is memory, not quality), real files, the session's real Ray (2 CPUs, no GPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml

from ganops import storage
from ganops.errors import ResourceError, UserError
from ganops.generate import core, job, latents, writer
from ganops.generate.options import ModelInfo
from ganops.generate.source import Source, resolve
from ganops.nets import build_discriminator, build_generator
from ganops.nets.export import GeneratorExport
from ganops.spec.generation import MAX_INTERPOLATE_STEPS, MAX_NUM
from ganops.spec.models import ModelSpec
from tests.helpers import JOBS, REPO, generation

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """mnist_dcgan's generator at random weights, logged as training logs it (the model, the
    run's spec.yaml and its ``ganops.model_uri`` tag) to an embedded MLflow store."""
    from ganops import client
    from ganops.tracking import embedded_store, log_generator, mlflow_client

    root = tmp_path_factory.mktemp("bounded-store")
    uri, artifacts = embedded_store(str(root))
    spec = client.load_job(JOBS / "mnist_dcgan.yaml", [f"spec.storage={root}"])
    mlflow = mlflow_client(uri)
    experiment = mlflow.create_experiment("bounded", artifact_location=artifacts)
    run_id = mlflow.create_run(experiment).info.run_id
    mlflow.log_text(run_id, yaml.safe_dump(spec.to_dict(), sort_keys=False), "spec.yaml")
    torch.manual_seed(0)
    g = build_generator(spec.spec.model, (1, 28, 28), None).eval()

    def fail(message: str) -> None:
        raise AssertionError(message)

    model_uri = log_generator(uri, run_id, g, None, fail)
    mlflow.set_tag(run_id, "ganops.model_uri", model_uri)
    mlflow.set_terminated(run_id)
    return resolve(uri, run_id=run_id)


def _storage_root(source: Source) -> str:
    return source.tracking_uri[len("sqlite:///") :].rsplit("/", 1)[0]


def _cli(source: Source | None, *args: str, limit_gib: int = 8) -> subprocess.CompletedProcess[str]:
    """``ganops generate`` in a child process whose address space is capped: the old
    behaviour (allocating for every image or candidate at once) then fails as a MemoryError
    rather than taking the shared machine's memory."""
    given = ["--run-id", source.run_id, "--storage", _storage_root(source)] if source else ["--run-id", "nope"]
    code = (
        "import resource, sys, runpy; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit_gib << 30}, {limit_gib << 30})); "
        "sys.argv = ['ganops', *sys.argv[1:]]; runpy.run_module('ganops.cli', run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k != "GANOPS_DEBUG"}
    cmd = [sys.executable, "-c", code, "generate", *given, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


# --- planning: lazy, whatever --num ---------------------------------------------------------


def test_planning_the_largest_job_fits_in_a_few_hundred_megabytes_of_address_space() -> None:
    # The largest --num in shards of one image: 10^8 shards. A list of their ranges alone
    # is ~10 GB; the plan must be arithmetic.
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))
        from ganops.generate import latents
        from ganops.generate.options import ModelInfo
        from tests.helpers import generation
        plan = latents.shard_ranges({MAX_NUM}, 1)
        assert len(plan) == {MAX_NUM} and plan[-1] == ({MAX_NUM - 1}, {MAX_NUM}) and plan[12345] == (12345, 12346)
        assert list(zip(range(3), plan)) == [(0, (0, 1)), (1, (1, 2)), (2, (2, 3))]
        opts = generation(num={MAX_NUM}, shard_size=1).spec
        z, _ = latents.shard_latents(opts, ModelInfo(100, None, (1, 28, 28)), {MAX_NUM - 1}, *plan[-1])
        assert z.shape == (1, 100)
        print("ok")
    """)
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# --- best-of: candidates a batch at a time --------------------------------------------------


def test_best_of_holds_one_batch_of_candidates_not_every_candidate_of_the_shard() -> None:
    spec = ModelSpec(arch="dcgan", g_widths=[16, 8, 4], d_widths=[4, 8], latent_dim=2048, init="default")
    torch.manual_seed(1)
    g = GeneratorExport(build_generator(spec, (1, 28, 28), None))
    d = build_discriminator(spec, (1, 28, 28), None)
    info = ModelInfo(2048, None, (1, 28, 28))
    n, k = 2, 1500  # 3,000 candidates: 24 MB of latents if they were drawn at once
    opts = generation(num=n, best_of=k, batch_size=64, truncation=2.0).spec
    core.generate_shard(g, d, generation(num=1, best_of=2, batch_size=64).spec, info, 0, 0, 1, CPU)  # imports
    tracemalloc.start()
    try:
        result = core.generate_shard(g, d, opts, info, 0, 0, n, CPU)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    all_at_once = n * k * info.latent_dim * 4
    assert peak < all_at_once / 10, f"peak {peak} bytes for {all_at_once} bytes of candidates"
    # Each kept vector is one of that image's own candidates, as drawn all at once.
    reference, _ = latents.shard_latents(opts, info, 0, 0, n)
    for i in range(n):
        own = reference[i * k : (i + 1) * k]
        assert (own == result.z[i]).all(axis=1).any()
    assert result.images.shape == (n, 1, 28, 28) and result.scores is not None


# --- the driver: nothing per shard ----------------------------------------------------------


@pytest.mark.slow  # 2,200 images generated and written (~20 s: too long for make test-fast)
@pytest.mark.timeout(300)
def test_the_drivers_memory_does_not_grow_with_the_number_of_shards(
    logged: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The manifest then goes to MLflow as its summary only: what is left is the driver.
    monkeypatch.setattr(job, "MLFLOW_MANIFEST_MAX", 0, raising=False)

    def peak(num: int, out: Path) -> int:
        gen = generation(str(out), run_id=logged.run_id, num=num, shard_size=2, batch_size=2)
        tracemalloc.start()
        try:
            job.generate(logged, gen, show_progress=False, echo=lambda _m: None)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(20, tmp_path / "warm")  # imports, the model's first load, the pool's first start
    few, many = peak(200, tmp_path / "few"), peak(2000, tmp_path / "many")
    # Measured here: 1.6-1.7 MB whatever the shards (within 0.15 MB); holding a record per
    # shard and the manifest's text made it 1.8 MB at 100 shards and 3.2 MB at 1,000.
    assert many - few < 512 << 10, f"100 shards: peak {few:,} B; 1,000 shards: {many:,} B"
    manifest = writer.verify(storage.locate(str(tmp_path / "many")))
    assert manifest["count"] == 2000 and len(manifest["shards"]) == 1000
    assert [s["start"] for s in manifest["shards"]] == list(range(0, 2000, 2))


def test_a_streamed_manifest_takes_shards_in_any_order_and_refuses_a_gap(tmp_path: Path) -> None:
    out = storage.locate(str(tmp_path / "m"))
    stream = writer.ManifestStream(out, {"seed": 1})
    for shard in (1, 0, 3, 2):
        stream.add({"shard": shard, "start": shard * 4, "stop": shard * 4 + 4, "count": 4, "files": {}})
    stream.finish({"count": 16})
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert [s["shard"] for s in manifest["shards"]] == [0, 1, 2, 3] and manifest["count"] == 16
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["manifest.json"]  # the spool was renamed
    gap = writer.ManifestStream(storage.locate(str(tmp_path / "g")), {})
    gap.add({"shard": 1, "start": 4, "stop": 8, "count": 4, "files": {}})
    with pytest.raises(ValueError, match="shard 0 never did"):
        gap.finish({"count": 8})
    gap.abort()
    assert not (tmp_path / "g" / "manifest.json").exists()


# --- refusals: at once, naming the flag -----------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num", "1000000000000"], f"--num: at most {MAX_NUM:,} images per job"),
        (["--num", "8", "--interpolate", "1000000"], f"--interpolate: at most {MAX_INTERPOLATE_STEPS:,} steps"),
    ],
)
def test_limits_whatever_the_model_are_refused_before_anything_is_looked_up(
    tmp_path: Path, args: list[str], message: str
) -> None:
    t0 = time.monotonic()
    r = _cli(None, "--out", str(tmp_path / "out"), *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 60
    assert not (tmp_path / "out").exists()


# slow: logging the model to MLflow (~9 s) and a ganops process per flag (~4 s each).
@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--num", "100000", "--interpolate", "1000"], "--interpolate: 100,000 walks × 1,000 steps"),
        (["--num", "100000000", "--shard-size", "100000000"], "--shard-size: 100,000,000 images of 1×28×28"),
        (["--num", "64", "--batch-size", "100000000"], "--batch-size: 100,000,000 rows of 1×28×28"),
    ],
)
def test_what_cannot_fit_the_memory_budget_for_this_model_is_refused_naming_the_flag(
    logged: Source, tmp_path: Path, args: list[str], message: str
) -> None:
    r = _cli(logged, "--out", str(tmp_path / "out"), "-q", *args)
    assert r.returncode == 2 and message in r.stderr and "GiB" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


# --- workers Ray could never place ----------------------------------------------------------


def _fails_within(seconds: float, fn) -> BaseException:
    """The exception ``fn`` raises, which it must raise within ``seconds`` (on a thread:
    the old behaviour waits on Ray forever)."""
    box: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still waiting after {seconds} s"
    assert box, "did not fail"
    return box[0]


def _runs(source: Source) -> int:
    from ganops.tracking import mlflow_client

    return len(mlflow_client(source.tracking_uri).search_runs([source.experiment_id]))


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "fields,flag,what",
    [
        ({"workers": 4}, "--workers", "need CPU 4 in all, but the Ray cluster has CPU "),
        ({"workers": 2, "gpus_per_worker": 1}, "--gpus-per-worker", "need GPU 2 in all, but the Ray cluster has GPU 0"),
        ({"workers": 1, "gpus_per_worker": 1}, "--gpus-per-worker", "need GPU 1 in all, but the Ray cluster has GPU 0"),
    ],
)
@pytest.mark.slow  # the session's Ray
def test_workers_that_can_never_be_placed_fail_at_once_naming_the_flag_and_what_the_cluster_has(
    ray_cluster: None, logged: Source, tmp_path: Path, fields: dict, flag: str, what: str
) -> None:
    gen = generation(str(tmp_path / "out"), run_id=logged.run_id, num=64, shard_size=8, **fields)
    before = _runs(logged)
    t0 = time.monotonic()
    err = _fails_within(60, lambda: job.generate(logged, gen, show_progress=False, echo=lambda _m: None))
    assert isinstance(err, ResourceError) and isinstance(err, UserError), repr(err)
    assert str(err).startswith(f"{flag}: ") and what in str(err) and err.field == flag, str(err)
    assert time.monotonic() - t0 < 30
    assert _runs(logged) == before  # refused before the generation's run was opened
    assert not (tmp_path / "out" / "png").exists()


@pytest.mark.timeout(300)
@pytest.mark.slow  # the session's Ray
def test_workers_that_fit_are_reported_and_make_every_image_once(
    ray_cluster: None, logged: Source, tmp_path: Path
) -> None:
    gen = generation(str(tmp_path / "out"), run_id=logged.run_id, num=50, shard_size=8, workers=2, seed=3)
    said: list[str] = []
    result = job.generate(logged, gen, show_progress=False, echo=said.append)
    assert "workers: 2 Ray workers (1 CPU each) for 7 shards" in said
    manifest = writer.verify(storage.locate(str(tmp_path / "out")))
    assert result.count == 50 and result.shards == 7 == len(manifest["shards"])
    covered = [i for s in manifest["shards"] for i in range(s["start"], s["stop"])]
    assert covered == list(range(50)) and len(list((tmp_path / "out").glob("png/*/*.png"))) == 50
