"""Streaming throughput: training images/s from a pack through Ray Data against in memory.

The same job (``--job``, default jobs/mnist_dcgan.yaml), the same data (real MNIST's test
split, 10,000 images, packed once with ``ganops data pack --dataset mnist --split test``
into a temp dir or ``--dir``), the same initial weights and batch, in one process with the
embedded Ray a local ``ganops submit`` starts (``ganops.rayinit``), world 1:

(S) streamed:  ``StreamBatches`` over the pack (``spec.data.dataset: shards``): Ray Data's
    read tasks read Parquet row groups in their own processes, ``streaming_split`` hands the
    rows to this process, which shuffles them locally and decodes a batch per step.
(M) in memory: ``ganops.data.load`` of the MNIST split + ``RankBatches`` (an index gather).

Each side feeds its own ``GANStep(..., ddp=False).train_batch`` (what a Ray Train worker runs
per batch, minus DDP); a step is fetching the batch plus one D and one G update. Each side's
batches run on across epochs (a new epoch's dataset, split and first reads are part of S's
time, as in training). After ``--warmup`` untimed steps per side, every round times
``--steps`` steps of S and ``--steps`` of M, the side that goes first alternating per
round, so a noisy machine slows both alike. The default round is 26 steps: an epoch of the
test split is 156 batches of 64, so one round in six holds the start of S's epoch.

Reading the result: per round, images/s of each side and their ratio S/M; the result is the
median of the per-round ratios (goal >= 0.9 on CPU), and next to it the ratio of the totals
(every timed step, including the rounds where an epoch starts). Where the time goes, per side:
milliseconds per step spent waiting on the iterator (``next()``) and in ``train_batch``, this
process's CPU seconds, and the CPU seconds of Ray's ``ray::*`` processes (read tasks, split
coordinator; only the Ray this script started) during that side's timed steps. Ray Data keeps
reading while M runs (up to its prefetch and backpressure), so some of S's reading is done in
M's time: the Ray CPU column shows how much. ``--prefetch``, ``--shuffle-batches`` and
``--read-tasks`` override ``ganops.train.stream``'s PREFETCH_BATCHES, SHUFFLE_BATCHES and
READ_TASKS_PER_RANK for the run, to try other values without editing it. Exits 0 whatever
the ratio: a measurement, not a gate.

    .venv/bin/python bench/stream_throughput.py                          # ~2-3 min on 2 CPUs
    .venv/bin/python bench/stream_throughput.py --threads 1 --prefetch 4  # try settings
    .venv/bin/python bench/stream_throughput.py --steps 3 --rounds 2 --warmup 2   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ganops import data as gdata
from ganops import spec as gspec
from ganops.errors import UserError
from ganops.timings import load_average
from ganops.train import stream
from ganops.train.batches import RankBatches
from ganops.train.ranks import Ranks
from ganops.train.step import GANStep
from ganops.train.stream import StreamBatches

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JOB = REPO / "jobs" / "mnist_dcgan.yaml"
MNIST = (REPO / ".." / "shared" / "datasets" / "mnist").resolve()
GOAL = 0.9
SIDES = ("streamed", "memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default=str(DEFAULT_JOB), help="GANJob YAML (default: jobs/mnist_dcgan.yaml)")
    p.add_argument("--mnist", default=str(MNIST), help=f"MNIST IDX folder (default {MNIST})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                   help="spec override (repeatable), e.g. spec.train.batch_size=128")  # fmt: skip
    p.add_argument("--steps", type=int, default=26, help="timed steps per side per round (default 26)")
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds (default 12)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per side first (default 10)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--shard-mb", type=float, default=None, help="pack shard size (default: ganops data pack's)")
    p.add_argument("--prefetch", type=int, help=f"stream.PREFETCH_BATCHES (now {stream.PREFETCH_BATCHES})")
    p.add_argument("--shuffle-batches", type=int, help=f"stream.SHUFFLE_BATCHES (now {stream.SHUFFLE_BATCHES})")
    p.add_argument("--read-tasks", type=int, help=f"stream.READ_TASKS_PER_RANK (now {stream.READ_TASKS_PER_RANK})")
    p.add_argument("--dir", default=None, help="where the pack goes (default: a temp dir, removed at the end)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    for flag in ("steps", "rounds", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    for flag in ("prefetch", "shuffle_batches", "read_tasks"):
        v = getattr(args, flag)
        if v is not None and v < (0 if flag == "prefetch" else 1):
            p.error(f"--{flag.replace('_', '-')} is too small")
    return args


# --- Ray's processes (this script's Ray only: the machine may run others) --------------


def _ray_workers() -> list[int]:
    """Pids of this process's ``ray::*`` descendants (Ray's worker processes)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    # The command name is in parentheses and may hold spaces: split after it.
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass  # the process ended while we looked
    out, todo = [], [os.getpid()]
    while todo:
        for k in kids.get(todo.pop(), []):
            todo.append(k)
            try:
                with open(f"/proc/{k}/cmdline", "rb") as f:
                    if f.read().startswith(b"ray::"):
                        out.append(k)
            except OSError:
                pass
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                utime, stime = f.read().rsplit(")", 1)[1].split()[11:13]
            out[pid] = (int(utime) + int(stime)) / _TICK
        except (OSError, ValueError):
            pass
    return out


class RayCpu:
    """CPU seconds Ray's worker processes use between ``start`` and ``stop``."""

    def start(self) -> None:
        self._before = _cpu_s(_ray_workers())

    def stop(self) -> float:
        now = _cpu_s(_ray_workers())
        # A worker started in between counts from zero; one that ended is lost (rare: Ray
        # keeps its workers).
        return sum(v - self._before.get(pid, 0.0) for pid, v in now.items())


# --- the sides -------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    step: GANStep
    batches: RankBatches | StreamBatches
    batch: int
    fetch_s: float = 0.0
    train_s: float = 0.0
    epochs: int = 0
    _it: Iterator[tuple[Tensor, Tensor | None]] | None = field(default=None, repr=False)

    def _forever(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        while True:
            yield from self.batches.epoch(self.epochs)
            self.epochs += 1

    def run(self, steps: int) -> None:
        if self._it is None:
            self._it = self._forever()
        for _ in range(steps):
            t0 = time.perf_counter()
            real, y = next(self._it)
            t1 = time.perf_counter()
            self.step.train_batch(real, y)
            self.fetch_s += t1 - t0
            self.train_s += time.perf_counter() - t1

    def close(self) -> None:
        if self._it is not None:
            self._it.close()


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(side: Side, steps: int, ray_cpu: RayCpu) -> dict[str, float]:
    f0, t0, c0 = side.fetch_s, side.train_s, _own_cpu_s()
    ray_cpu.start()
    w0 = time.perf_counter()
    side.run(steps)
    wall = time.perf_counter() - w0
    return {
        "s": wall, "fetch_s": side.fetch_s - f0, "train_s": side.train_s - t0, "cpu_s": _own_cpu_s() - c0,
        "ray_cpu_s": ray_cpu.stop(),
    }  # fmt: skip


def _pack(args: argparse.Namespace, root: str) -> str:
    out = os.path.join(root, "mnist-test")
    if os.path.exists(os.path.join(out, "manifest.json")):  # a --dir kept from an earlier run
        return out
    cmd = [sys.executable, "-c", "from ganops.cli import main; main()", "data", "pack", out, "--dataset", "mnist",
           "--root", args.mnist, "--split", "test", "--quiet"]  # fmt: skip
    if args.shard_mb is not None:
        cmd += ["--shard-mb", str(args.shard_mb)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise UserError(f"ganops data pack failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    for flag, const in (("prefetch", "PREFETCH_BATCHES"), ("shuffle_batches", "SHUFFLE_BATCHES"),
                        ("read_tasks", "READ_TASKS_PER_RANK")):  # fmt: skip
        if getattr(args, flag) is not None:
            setattr(stream, const, getattr(args, flag))  # read by StreamBatches at each epoch
    import ray

    from ganops.rayinit import init_ray

    root = args.dir or tempfile.mkdtemp(prefix="stream-tput-")
    sides: dict[str, Side] = {}
    try:
        t0 = time.perf_counter()
        pack = _pack(args, root)
        pack_s = time.perf_counter() - t0
        mem_sets = [f"spec.data.root={args.mnist}", "spec.data.split=test", "spec.data.download=false"]
        memory_job = gspec.load(args.job, [*mem_sets, *args.sets])
        stream_job = gspec.load(args.job, [*mem_sets, "spec.data.dataset=shards", f"spec.data.root={pack}",
                                           *args.sets])  # fmt: skip
        spec = memory_job.spec
        t0 = time.perf_counter()
        init_ray(None)
        ray_s = time.perf_counter() - t0
        device = torch.device("cpu")
        batch = spec.train.batch_size
        ds = gdata.load(memory_job.spec.data)
        streamed = StreamBatches(stream_job.spec.data, batch, Ranks(0, 1, device), seed=spec.train.seed)
        in_memory = RankBatches(ds.images, ds.labels, batch, seed=spec.train.seed)
        if streamed.per_epoch < 1:
            raise UserError(f"spec.train.batch_size: {batch} is more than the {len(ds)} images")
        for name, b in (("streamed", streamed), ("memory", in_memory)):
            torch.manual_seed(spec.train.seed)  # the same initial weights on both sides
            sides[name] = Side(name, GANStep(spec, ds.info.shape, ds.info.num_classes, device, ddp=False), b, batch)

        print(
            f"job {memory_job.name} ({spec.model.arch}, MNIST test {len(ds):,} images, pack {pack} in "
            f"{pack_s:.0f} s) | batch {batch}, {streamed.per_epoch} per epoch | {spec.train.precision} | "
            f"torch threads {torch.get_num_threads()} | {os.cpu_count()} CPUs | Ray started in {ray_s:.0f} s"
        )
        print(
            f"stream settings: prefetch {stream.PREFETCH_BATCHES} batches, shuffle buffer {stream.SHUFFLE_BATCHES} "
            f"batches, {stream.READ_TASKS_PER_RANK} read tasks | {args.rounds} rounds x {args.steps} steps per side, "
            f"after {args.warmup} warm-up steps each | {load_average()}"
        )
        ray_cpu = RayCpu()
        t0 = time.perf_counter()
        for side in sides.values():
            side.run(args.warmup)
        print(f"warm-up {time.perf_counter() - t0:.1f} s (the streamed side's includes its first epoch's start)")

        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            times = {name: _timed(sides[name], args.steps, ray_cpu) for name in order}
            ips = {name: args.steps * batch / t["s"] for name, t in times.items()}
            rounds.append({"first": order[0], **{f"{n}_ips": ips[n] for n in SIDES}, "times": times,
                           "ratio": ips["streamed"] / ips["memory"], "epoch": sides["streamed"].epochs})  # fmt: skip
            s = times["streamed"]
            print(
                f"  round {r + 1:2}: streamed {ips['streamed']:6.0f} img/s (next {1e3 * s['fetch_s'] / args.steps:5.1f}"
                f" ms/step, ray cpu {s['ray_cpu_s']:4.1f} s) | memory {ips['memory']:6.0f} img/s (ray cpu "
                f"{times['memory']['ray_cpu_s']:4.1f} s) | ratio {rounds[-1]['ratio']:.3f} | {load_average()}"
            )
        # Reported before Ray goes down: a Ray Data thread may end the process at shutdown.
        med = {k: statistics.median(x[f"{k}_ips"] for x in rounds) for k in SIDES}
        med["ratio"] = statistics.median(x["ratio"] for x in rounds)
        tot = {n: {k: sum(x["times"][n][k] for x in rounds) for k in ("s", "fetch_s", "train_s", "cpu_s", "ray_cpu_s")}
               for n in SIDES}  # fmt: skip
        steps = args.steps * args.rounds
        overall = (tot["memory"]["s"]) / tot["streamed"]["s"]
        print(f"\n{'side':9} | {'img/s':>6} | {'next() ms/step':>14} | {'train ms/step':>13} | "
              f"{'own CPU s':>9} | {'ray:: CPU s':>11}")  # fmt: skip
        for n in SIDES:
            t = tot[n]
            print(
                f"{n:9} | {med[n]:6.0f} | {1e3 * t['fetch_s'] / steps:14.1f} | {1e3 * t['train_s'] / steps:13.1f} | "
                f"{t['cpu_s']:9.1f} | {t['ray_cpu_s']:11.1f}"
            )
        print(
            f"streamed / memory: {med['ratio']:.2f}x (median of {args.rounds} rounds; goal >= {GOAL}), "
            f"{overall:.2f}x over all timed steps ({sides['streamed'].epochs} streamed epochs finished) | {load_average()}"
        )
        if med["ratio"] < GOAL:
            print(f"note: streaming is {(1 - med['ratio']) * 100:.1f}% slower than in memory (below the {GOAL} goal)")
        settings = {
            "job": memory_job.name, "batch": batch, "threads": torch.get_num_threads(), "steps": args.steps,
            "rounds": args.rounds, "warmup": args.warmup, "prefetch": stream.PREFETCH_BATCHES,
            "shuffle_batches": stream.SHUFFLE_BATCHES, "read_tasks": stream.READ_TASKS_PER_RANK, "cpus": os.cpu_count(),
        }  # fmt: skip
        result = {"settings": settings, "rounds": rounds, "median": med, "totals": tot, "overall_ratio": overall}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        for side in sides.values():
            side.close()  # Ray Data's iterator reports its stats on close: before Ray goes
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
        if ray.is_initialized():
            ray.shutdown()

    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
