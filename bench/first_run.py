"""First run: wall time of a short ``ganops submit`` against a bare Ray Train run of the same work.

Compared, each in a fresh process (``python`` start, imports, Ray start and shutdown
included: a user's first run pays them all), on the same data, networks, workers and batch:

(A) ganops:  ``ganops submit jobs/mnist_dcgan.yaml`` with the benchmark's overrides (1 epoch
    of the first 1,000 images of the local MNIST test split), quiet, on the embedded Ray,
    into a new storage directory per round: a new SQLite MLflow store, as on a first run.
    It writes and logs all it normally does: checkpoint, sample grid, GIF, MLflow metrics,
    the run's note and the generator as an MLflow model.
(B) bare:    this script in ``--bare`` mode: a ``TorchTrainer`` with the same ``ScalingConfig``
    (workers, and the CPUs per worker that ganops gives them on the embedded Ray), on a Ray
    started the way ganops starts it (minus the Ray Train poll interval ganops shortens:
    this side keeps Ray's defaults), whose loop builds the same G and D
    (``ganops.nets``), wraps them with ``ray.train.torch.prepare_model`` (DDP), reads the
    same images into a ``DataLoader`` (``prepare_data_loader``: a distributed sampler) at
    the same per-worker batch, trains one epoch with pytorch/examples' DCGAN step
    (``tests/learning/plain.py``, textbook mode), and writes one checkpoint (``torch.save``
    + ``ray.train.report`` with a ``Checkpoint``). No MLflow, no grids.

Rounds alternate the side that goes first, so a noisy machine slows both alike; the ratio
is A/B seconds per round and the result is the median of the rounds' ratios (target
<= 1.1). Side A runs with ``GANOPS_TIMINGS`` set (see ``ganops.timings``), side B with its
own marks, so the script also prints where each side's time went (per phase, median over
rounds), and the CPU seconds of each side (see ``_run_side``). ``--baseline DIR`` adds a
third side, ``ganops submit`` importing ganops from DIR (another checkout), to measure a
change against the code before it. Exits 0 whatever the ratio: a measurement, not a gate.

    .venv/bin/python bench/first_run.py                    # 5 rounds: ~6 min on 2 idle CPUs
    .venv/bin/python bench/first_run.py --rounds 1 --set spec.data.limit=128   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JOB = REPO / "jobs" / "mnist_dcgan.yaml"
MNIST = (REPO / ".." / "shared" / "datasets" / "mnist").resolve()
DEFAULT_SETS = [
    f"spec.data.root={MNIST}",
    "spec.data.split=test",
    "spec.data.download=false",
    "spec.data.limit=1000",
    "spec.train.epochs=1",
]
TIMINGS_ENV = "GANOPS_TIMINGS"  # ganops.timings.ENV; not imported: (B) must not load ganops on its driver
# How ganops starts an embedded Ray (ganops.rayinit: _EMBEDDED_ENV, init_ray): side B
# starts it the same way, so Ray's own start-up cost is equal on both sides.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120"}

# The split: (phase, mark that ends it); a phase starts where the previous one that was
# recorded ended. "exit" is the process's end, measured by the parent.
GANOPS_PHASES = [
    ("CLI start: imports, spec load + validate, pre-flight", "driver.submit"),
    ("driver imports (ray, torch, the train loop)", "driver.imports"),
    ("MLflow run open (store creation, params, note; a thread while Ray starts)", "driver.mlflow_open"),
    ("Ray start (ray.init; the part the MLflow thread did not cover)", "driver.ray_init"),
    ("worker group start (to the train loop's first line)", "rank0.start"),
    ("worker set-up: rank 0's MLflow logger (imports mlflow), data load", "rank0.data"),
    ("worker set-up: networks, DDP", "rank0.ready"),
    ("training (1 epoch)", "rank0.epoch1"),
    ("sample grid + final checkpoint", "rank0.trained"),
    ("GIF", "rank0.gif"),
    ("model logging to MLflow", "rank0.model"),
    ("MLflow queue flush", "rank0.done"),
    ("fit() return (Ray Train notices, stops workers)", "driver.fit"),
    ("MLflow run close (note, status)", "driver.mlflow_close"),
    ("summary, Ray shutdown, interpreter exit", "exit"),
]
BARE_PHASES = [
    ("python start + imports (ray, torch)", "driver.start"),
    ("Ray start (ray.init)", "driver.ray_init"),
    ("worker group start (to the train loop's first line)", "rank0.start"),
    ("worker set-up: data load", "rank0.data"),
    ("worker set-up: networks, DDP", "rank0.ready"),
    ("training (1 epoch)", "rank0.epoch1"),
    ("final checkpoint", "rank0.trained"),
    ("fit() return (Ray Train notices, stops workers)", "driver.fit"),
    ("Ray shutdown, interpreter exit", "exit"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default=str(DEFAULT_JOB), help="GANJob YAML (default: jobs/mnist_dcgan.yaml)")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
        help="spec override, as in the CLI (repeatable); applied after the benchmark's own: "
        + ", ".join(DEFAULT_SETS),
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=5, help="rounds of one run per side (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    p.add_argument("--keep", metavar="DIR", help="keep each run's storage under DIR (default: removed)")
    p.add_argument(
        "--baseline", metavar="DIR",
        help="also time, as a third side, the ganops package found in DIR (a directory holding a ganops/ "
        "folder, e.g. another checkout): to measure a change against the code before it",
    )  # fmt: skip
    # Internal: side (B) itself, run by the parent in a fresh process.
    p.add_argument("--bare", metavar="STORAGE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.job = str(Path(args.job).resolve())  # the sides may run from other directories
    return args


# --- (B) the bare Ray Train run ----------------------------------------------------------


def _mark(phase: str) -> None:
    """ganops.timings.mark, repeated here so that the bare side imports nothing of ganops on its driver."""
    path = os.environ.get(TIMINGS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"phase": phase, "t": time.time(), "pid": os.getpid()}) + "\n")


def bare_loop(config: dict[str, Any]) -> None:
    """Ray Train loop of side (B): the pytorch/examples DCGAN epoch, DDP, one checkpoint."""
    import shutil

    import ray.train
    import ray.train.torch
    import torch

    rank = ray.train.get_context().get_world_rank()
    _mark(f"rank{rank}.start")
    if config["repo"] not in sys.path:  # the reference loop lives in the repo's tests/
        sys.path.insert(0, config["repo"])
    from ganops import data as gdata
    from ganops.spec import validate
    from tests.learning.plain import PlainGAN

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:  # as ganops' loop does: torch follows the CPUs Ray reserved
        torch.set_num_threads(threads)
    spec = validate(config["job"]).spec
    ds = gdata.load(spec.data)
    _mark(f"rank{rank}.data")
    world = ray.train.get_context().get_world_size()
    torch.manual_seed(spec.train.seed)
    num_classes = ds.info.num_classes if spec.model.conditional else None
    plain = PlainGAN(spec, ds.info.shape, num_classes, torch.device("cpu"), textbook=True)
    plain.netG = ray.train.torch.prepare_model(plain.netG)
    plain.netD = ray.train.torch.prepare_model(plain.netD)
    images = torch.from_numpy(gdata.to_unit_range(ds.images))
    labels = torch.zeros(len(images), dtype=torch.long) if ds.labels is None else torch.from_numpy(ds.labels)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels),
        batch_size=spec.train.batch_size // world, shuffle=True, drop_last=True,
    )  # fmt: skip
    loader = ray.train.torch.prepare_data_loader(loader)
    _mark(f"rank{rank}.ready")
    steps = 0
    for epoch in range(spec.train.epochs):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        for real, y in loader:
            plain.train_batch(real, y if num_classes is not None else None)
            steps += 1
        _mark(f"rank{rank}.epoch{epoch + 1}")
    metrics = {"epoch": spec.train.epochs, "step": steps}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        _mark(f"rank{rank}.trained")
        return
    tmp = tempfile.mkdtemp(prefix="bare-ckpt-")
    try:
        state = {
            "g": plain.netG.module.state_dict() if world > 1 else plain.netG.state_dict(),
            "d": plain.netD.module.state_dict() if world > 1 else plain.netD.state_dict(),
            "opt_g": plain.optimizerG.state_dict(),
            "opt_d": plain.optimizerD.state_dict(),
        }
        torch.save(state, os.path.join(tmp, "state.pt"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _mark(f"rank{rank}.trained")


def bare_main(args: argparse.Namespace) -> None:
    """Side (B)'s driver: what a user of plain Ray Train would write, minus tracking."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ganops.spec import load  # the job, to read the same images and build the same networks

    _mark("driver.start")
    job = load(args.job, DEFAULT_SETS + args.sets)
    scaling = job.spec.scaling
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    _mark("driver.ray_init")
    cpus = float(max(1, (os.cpu_count() or 1) // scaling.num_workers))  # ganops' default_resources
    trainer = TorchTrainer(
        bare_loop,
        train_loop_config={"job": job.to_dict(), "repo": str(REPO)},
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker={"CPU": cpus}
        ),
        run_config=RunConfig(name="checkpoints", storage_path=args.bare, checkpoint_config=CheckpointConfig()),
    )
    result = trainer.fit()
    _mark("driver.fit")
    if result.checkpoint is None:
        raise SystemExit("bare run: no checkpoint reported")


# --- the parent: rounds, split, ratio ------------------------------------------------------


def _run_side(side: str, args: argparse.Namespace, work: Path) -> tuple[float, float, list[dict[str, Any]]]:
    """Seconds from spawn to exit of one side's fresh process, its CPU seconds, and its marks.

    The CPU seconds are those of the processes of the run that were waited for: the driver
    and Ray's head processes, not all of Ray's workers (some are reaped by init), so mostly
    the driver's own work. On a shared machine they move far less than the wall time.
    """
    storage = work / "storage"
    marks = work / "timings.jsonl"
    env = {**os.environ, TIMINGS_ENV: str(marks)}
    sets = DEFAULT_SETS + args.sets
    cwd = REPO
    if side == "baseline":  # the same command, importing ganops from another directory
        cwd = Path(args.baseline).resolve()
        # Ray puts the driver's working directory first on its workers' sys.path: run from the
        # baseline, or the workers would import this checkout's ganops.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), env.get("PYTHONPATH")]))
    if side in ("ganops", "baseline"):
        ganops_cli = Path(sys.executable).parent / "ganops"
        cmd = [str(ganops_cli), "submit", args.job, "-q", *(a for s in sets for a in ("--set", s)),
               "--set", f"spec.storage={storage}"]  # fmt: skip
    else:
        cmd = [sys.executable, __file__, "--bare", str(storage), "--job", args.job,
               *(a for s in args.sets for a in ("--set", s))]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    t1 = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    found = [json.loads(line) for line in marks.read_text().splitlines() if line.strip()] if marks.exists() else []
    found.append({"phase": "exit", "t": t1})
    found.insert(0, {"phase": "spawn", "t": t0})
    return t1 - t0, cpu, found


def split(marks: list[dict[str, Any]], phases: list[tuple[str, str]]) -> dict[str, float]:
    """Seconds per phase, in the order the phases ended: from the previous end (or the spawn).

    Phases that overlap (the MLflow run opens while Ray starts) show as the first to end
    and the remainder of the other, so the rows always add up to the wall time.
    """
    at: dict[str, float] = {}
    for m in marks:
        at.setdefault(m["phase"], float(m["t"]))  # the first time a phase ended
    out: dict[str, float] = {}
    last = at["spawn"]
    for t, name in sorted((at[key], name) for name, key in phases if key in at):
        out[name] = t - last
        last = t
    return out


def _print_split(title: str, splits: list[dict[str, float]], total: float) -> dict[str, float]:
    names = list(dict.fromkeys(n for s in splits for n in s))
    med = {n: statistics.median(s.get(n, 0.0) for s in splits) for n in names}
    print(f"{title} (median of {len(splits)} rounds):")
    for n in names:
        print(f"  {n:<75} {med[n]:6.2f} s")
    print(f"  {'total (median of the rounds)':<75} {total:6.2f} s")
    return med


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.bare:
        bare_main(args)
        return {}
    sides: tuple[str, ...] = ("ganops", "bare") + (("baseline",) if args.baseline else ())
    rounds: list[dict[str, Any]] = []
    splits: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    print(f"job {Path(args.job).name} | overrides {' '.join(DEFAULT_SETS[1:] + args.sets)} | "
          f"{os.cpu_count()} CPUs | load {os.getloadavg()[0]:.1f}")  # fmt: skip
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ganops-first-run-"))
    try:
        for r in range(args.rounds):
            secs: dict[str, float] = {}
            cpu: dict[str, float] = {}
            order = sides[r % len(sides) :] + sides[: r % len(sides)]  # each side goes first in turn
            for side in order:
                work = base / f"round{r + 1}" / side
                work.mkdir(parents=True, exist_ok=True)
                secs[side], cpu[side], marks = _run_side(side, args, work)
                splits[side].append(split(marks, BARE_PHASES if side == "bare" else GANOPS_PHASES))
            ratio = secs["ganops"] / secs["bare"]
            rounds.append(
                {
                    **secs,
                    "ratio": ratio,
                    "cpu_ganops": cpu["ganops"],
                    "cpu_bare": cpu["bare"],
                    "cpu_ratio": cpu["ganops"] / cpu["bare"],
                    "load": os.getloadavg()[0],
                    "first": order[0],
                }
            )
            if args.baseline:
                rounds[-1].update(baseline=secs["baseline"], baseline_ratio=secs["baseline"] / secs["bare"],
                                  cpu_baseline=cpu["baseline"])  # fmt: skip
            extra = (
                f" | baseline {secs['baseline']:6.1f} s ({rounds[-1]['baseline_ratio']:.3f})" if args.baseline else ""
            )
            print(f"  round {r + 1}: ganops {secs['ganops']:6.1f} s | bare {secs['bare']:6.1f} s | "
                  f"ratio {ratio:.3f}{extra} | CPU s {cpu['ganops']:.1f} vs {cpu['bare']:.1f} "
                  f"({rounds[-1]['cpu_ratio']:.3f}) | load {rounds[-1]['load']:.1f}")  # fmt: skip
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    keys = ["ganops", "bare", "ratio", "cpu_ganops", "cpu_bare", "cpu_ratio"]
    keys += ["baseline", "baseline_ratio", "cpu_baseline"] if args.baseline else []
    med = {k: statistics.median(x[k] for x in rounds) for k in keys}
    titles = {"ganops": "ganops submit", "baseline": f"ganops submit from {args.baseline}", "bare": "bare Ray Train"}
    split_med = {side: _print_split(titles[side], splits[side], med[side]) for side in sides}
    if args.baseline:
        print(f"baseline {med['baseline']:.1f} s | ratio to bare {med['baseline_ratio']:.2f}x | "
              f"CPU s {med['cpu_baseline']:.1f}")  # fmt: skip
    print(f"ganops {med['ganops']:.1f} s | bare {med['bare']:.1f} s | ratio {med['ratio']:.2f}x "
          f"(median of {args.rounds} rounds; target <= 1.1) | CPU s {med['cpu_ganops']:.1f} vs "
          f"{med['cpu_bare']:.1f}, ratio {med['cpu_ratio']:.2f}x")  # fmt: skip
    if med["ratio"] > 1.1:
        print(f"note: ganops takes {(med['ratio'] - 1) * 100:.0f}% longer than the bare run (above the 1.1 target)")
    result = {"rounds": rounds, "median": med, "split": split_med, "splits": splits,
              "settings": {"job": args.job, "sets": DEFAULT_SETS + args.sets, "cpus": os.cpu_count()}}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
