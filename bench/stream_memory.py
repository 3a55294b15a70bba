"""Streaming memory: a training worker's peak RSS for a small and a large pack, streamed
(``spec.data.dataset: shards``) and in memory.

Streaming (``ganops.train.stream.StreamBatches``) must hold per worker a few batches (the
prefetch and the local shuffle buffer), whatever the pack's size: Ray Data's read tasks run
in other processes and their blocks wait in Ray's object store, under its backpressure. The
in-memory path (``ganops.data.load`` + ``RankBatches``) holds the whole split per worker, so
its peak grows with the dataset; it is measured alongside to show that growth is visible at
these sizes.

For each size in ``--sizes`` (default 10,000 and 100,000 images), a pack of the ``fake``
dataset (``--image-size`` 32, ``--channels`` 3: 3 KiB an image, ~300 MiB at 100k; shards of
``--shard-mb``) is made with ``ganops data pack`` in ``--dir``. Then each case (streamed or in
memory, per size) runs in a fresh interpreter that does what one training worker does:
connect to the Ray that this script started (the embedded Ray of ``ganops.rayinit``), build
its batches (``StreamBatches`` over the pack, world 1; or ``ganops.data.load`` of the same
fake images + ``RankBatches``), build the ``GANStep`` of ``--job`` (mnist_dcgan's networks,
which build for 32x32x3 too) and train ``--steps`` steps. The default number of steps is one
epoch of the smallest size (156 at batch 64 for 10k), the same for every size: a full pass
over the small pack, and on the large one a pass over as many images drawn from row groups
all over it (the epoch's order is a seeded permutation of every shard's row groups). With
``--full-epochs`` each case trains one full epoch of its own size instead (~10x longer).

Reported per case: the worker's peak RSS (``ru_maxrss``), its parts (after connecting to Ray,
after building the batches, after the networks; the training adds the rest), and, sampled
every ``--sample-s`` from this process, the largest sum of the proportional set size (PSS)
of the Ray worker processes (``ray::*``: the read tasks, the split coordinator, idle
workers; PSS counts object-store pages shared with the training worker once, in shares).
The result is the ratio of the largest size's peak to the smallest's, per path: the goal for
the streamed path is <= 1.2. Exits 0 whatever the ratios: a measurement, not a gate.

    .venv/bin/python bench/stream_memory.py                               # ~3 min on 2 CPUs
    .venv/bin/python bench/stream_memory.py --full-epochs                 # one epoch each: ~10 min
    .venv/bin/python bench/stream_memory.py --sizes 1000,5000 --steps 10  # smoke, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ganops.timings import load_average

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JOB = REPO / "jobs" / "mnist_dcgan.yaml"
GOAL = 1.2
CASES = ("stream", "memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", default="10000,100000", help="pack sizes in images, comma-separated (default 10000,100000)"
    )
    p.add_argument("--image-size", type=int, default=32, help="fake images' square size (default 32)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3, help="fake images' channels (default 3)")
    p.add_argument("--shard-mb", type=float, default=8.0, help="pack shard size (default 8: ~37 shards at 100k)")
    p.add_argument(
        "--job", default=str(DEFAULT_JOB), help="GANJob YAML for the networks (default: jobs/mnist_dcgan.yaml)"
    )
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                   help="spec override (repeatable), e.g. spec.train.batch_size=128")  # fmt: skip
    p.add_argument("--steps", type=int, help="training steps per case (default: one epoch of the smallest size)")
    p.add_argument("--full-epochs", action="store_true", help="one full epoch of each case's own size instead")
    p.add_argument("--cases", default=",".join(CASES), help="stream, memory or both (default stream,memory)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in the worker")
    p.add_argument("--sample-s", type=float, default=0.5, help="how often Ray's processes are sampled (default 0.5)")
    p.add_argument("--dir", default=None, help="where the packs go (default: a temp dir, removed at the end)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    p.add_argument("--child", nargs=3, metavar=("CASE", "SIZE", "GCS"), help=argparse.SUPPRESS)
    p.add_argument("--pack", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.size_list = sorted(int(s) for s in args.sizes.split(","))
    except ValueError:
        p.error("--sizes takes comma-separated whole numbers")
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not args.case_list or set(args.case_list) - set(CASES):
        p.error(f"--cases: choose from {', '.join(CASES)}")
    if min(args.size_list) < 1 or (args.steps is not None and args.steps < 1) or args.threads < 1:
        p.error("--sizes, --steps and --threads must be at least 1")
    if args.steps is not None and args.full_epochs:
        p.error("--steps and --full-epochs exclude each other")
    return args


def _data_sets(args: argparse.Namespace, case: str, size: int, pack: str) -> list[str]:
    """Spec overrides that point the job at the pack (streamed) or at the same fake images."""
    if case == "stream":
        data = ["spec.data.dataset=shards", f"spec.data.root={pack}"]
    else:
        # The pack holds fake.load's images for these settings (same seed): the same bytes.
        data = ["spec.data.dataset=fake", "spec.data.root=null", f"spec.data.limit={size}",
                f"spec.data.image_size={args.image_size}", f"spec.data.channels={args.channels}"]  # fmt: skip
    return [*data, "spec.data.download=false", "spec.data.split=train", *args.sets]


# --- the child: one training worker ----------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """One case in this fresh process; prints its figures as JSON (the last line)."""
    case, size_s, gcs = args.child
    size = int(size_s)
    kib = 1024  # ru_maxrss is in KiB on Linux

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib

    t0 = time.perf_counter()
    import ray
    import torch

    from ganops import data as gdata
    from ganops import spec as gspec
    from ganops.train.batches import RankBatches
    from ganops.train.ranks import Ranks
    from ganops.train.step import GANStep
    from ganops.train.stream import StreamBatches

    torch.set_num_threads(args.threads)
    ray.init(address=gcs, log_to_driver=False)
    marks = {"connected": peak()}
    job = gspec.load(args.job, _data_sets(args, case, size, args.pack))
    spec = job.spec
    device = torch.device("cpu")
    torch.manual_seed(spec.train.seed)
    batches: RankBatches | StreamBatches
    if case == "stream":
        batches = StreamBatches(spec.data, spec.train.batch_size, Ranks(0, 1, device), seed=spec.train.seed)
        info = batches.info
    else:
        ds = gdata.load(spec.data)
        info = ds.info
        batches = RankBatches(ds.images, ds.labels, spec.train.batch_size, seed=spec.train.seed)
    marks["batches"] = peak()
    step = GANStep(spec, info.shape, info.num_classes, device, ddp=False)
    marks["networks"] = peak()
    steps = batches.per_epoch if args.full_epochs else args.steps
    done, epoch, t1 = 0, 0, time.perf_counter()
    while done < steps:
        for real, y in batches.epoch(epoch):
            step.train_batch(real, y)
            done += 1
            if done == steps:
                break
        epoch += 1
    train_s = time.perf_counter() - t1
    marks["peak"] = peak()
    print(json.dumps({
        "case": case, "images": size, "steps": done, "per_epoch": batches.per_epoch, "batch": spec.train.batch_size,
        "trained_images": done * spec.train.batch_size, "train_s": train_s, "total_s": time.perf_counter() - t0,
        "rss": marks,
    }))  # fmt: skip
    sys.stdout.flush()
    # Not ray.shutdown(): the unfinished epoch's iterator still has Ray Data threads that
    # would then fail on a shut-down core worker and exit 1. Ray cleans up after a driver
    # that exits; the measurement is done.
    os._exit(0)


# --- the parent: packs, Ray, one child per case ------------------------------------------


def _ppids() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    # The command name is in parentheses and may hold spaces: split after it.
                    out[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass  # the process ended while we looked
    return out


def _descendants(root: int) -> list[int]:
    ppid = _ppids()
    kids: dict[int, list[int]] = {}
    for pid, parent in ppid.items():
        kids.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def _pss(pid: int) -> int:
    """Proportional set size in bytes (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _is_ray_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"ray::")
    except OSError:
        return False


class RaySampler:
    """The largest sum of PSS of this process's ``ray::`` descendants while it runs: only the
    Ray this script started, never another one on a shared machine."""

    def __init__(self, every_s: float, skip: int) -> None:
        self.every_s, self.skip = every_s, skip
        self.peak = 0
        self.first: int | None = None  # idle workers left from earlier cases, mostly
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RaySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            pids = [p for p in _descendants(os.getpid()) if p != self.skip and _is_ray_worker(p)]
            now = sum(_pss(p) for p in pids)
            self.first = now if self.first is None else self.first
            self.peak = max(self.peak, now)
            self.samples += 1
            if self._stop.wait(self.every_s):
                return


def _pack(args: argparse.Namespace, size: int, root: str) -> str:
    out = os.path.join(root, f"fake-{size}")
    ganops = [sys.executable, "-c", "from ganops.cli import main; main()"]
    cmd = [*ganops, "data", "pack", out, "--dataset", "fake", "--limit", str(size), "--image-size",
           str(args.image_size), "--channels", str(args.channels), "--shard-mb", str(args.shard_mb), "--quiet"]  # fmt: skip
    if not os.path.exists(os.path.join(out, "manifest.json")):  # a --dir kept from an earlier run is reused
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0:
            raise RuntimeError(f"ganops data pack failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return out


def _run_case(args: argparse.Namespace, case: str, size: int, pack: str, gcs: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", case, str(size), gcs, "--pack", pack, "--job", args.job,
           "--threads", str(args.threads)]  # fmt: skip
    cmd += [f"--set={s}" for s in args.sets]
    cmd += ["--full-epochs"] if args.full_epochs else ["--steps", str(args.steps)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    with RaySampler(args.sample_s, proc.pid) as sampler:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{case} {size} failed (exit {proc.returncode}):\n{err[-3000:]}")
    row: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    row["ray_workers_pss"] = sampler.peak
    row["ray_workers_pss_start"] = sampler.first or 0
    row["ray_samples"] = sampler.samples
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    if args.steps is None and not args.full_epochs:
        from ganops import spec as gspec

        batch = gspec.load(args.job, args.sets).spec.train.batch_size
        args.steps = max(1, args.size_list[0] // batch)  # one epoch of the smallest pack
    import ray

    from ganops.rayinit import init_ray

    mib = 1 << 20
    root = args.dir or tempfile.mkdtemp(prefix="stream-mem-")
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        packs = {n: _pack(args, n, root) for n in args.size_list}
        print(
            f"packs of fake {args.channels}x{args.image_size}x{args.image_size} in {root}: "
            + ", ".join(f"{n:,} images {_du(p) / mib:.0f} MiB in {_shards(p)} shards" for n, p in packs.items())
            + f" ({time.perf_counter() - t0:.0f} s)"
        )
        init_ray(None)  # the embedded Ray a local `ganops submit` starts
        gcs = ray.get_runtime_context().gcs_address
        steps = "one full epoch each" if args.full_epochs else f"{args.steps} steps each"
        print(
            f"job {Path(args.job).name} | {steps} | torch threads {args.threads} | {os.cpu_count()} CPUs | {load_average()}"
        )
        for n in args.size_list:
            for case in args.case_list:
                row = _run_case(args, case, n, packs[n], gcs)
                rows.append(row)
                r = row["rss"]
                print(
                    f"  {case:6} {n:>8,}: peak RSS {r['peak'] / mib:7.1f} MiB (peak so far after Ray {r['connected'] / mib:.0f},"
                    f" batches {r['batches'] / mib:.0f}, networks {r['networks'] / mib:.0f}) | {row['steps']} steps, "
                    f"{row['trained_images']:,} images in {row['train_s']:.1f} s | ray:: PSS "
                    f"{row['ray_workers_pss_start'] / mib:.0f} -> peak {row['ray_workers_pss'] / mib:.0f} MiB | {load_average()}"
                )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    ratios = {}
    print(f"\n{'case':8} | {'images':>8} | {'peak RSS MiB':>12} | {'ratio':>5} | ray:: PSS MiB")
    for case in args.case_list:
        mine = [r for r in rows if r["case"] == case]
        first = mine[0]["rss"]["peak"]
        for r in mine:
            ratio = r["rss"]["peak"] / first
            print(
                f"{case:8} | {r['images']:>8,} | {r['rss']['peak'] / mib:12.1f} | {ratio:5.2f} | "
                f"{r['ray_workers_pss'] / mib:.0f}"
            )
        ratios[case] = mine[-1]["rss"]["peak"] / first
    big, small = args.size_list[-1], args.size_list[0]
    label = f"{big // 1000}k/{small // 1000}k" if small >= 1000 else f"{big}/{small}"
    print(", ".join(f"{c} {label} {ratio:.2f}" for c, ratio in ratios.items()) + f" (goal for stream <= {GOAL})")
    if "stream" in ratios and ratios["stream"] > GOAL:
        print(f"note: the streamed worker's peak grew {ratios['stream']:.2f}x with the pack (over the {GOAL} goal)")
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "pack")}, "rows": rows,
              "ratios": ratios}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir())


def _shards(path: str) -> int:
    return sum(1 for f in Path(path).glob("shard-*.parquet"))


if __name__ == "__main__":
    main()
