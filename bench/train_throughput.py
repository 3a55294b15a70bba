"""Training throughput: the main job's step as configured against the plain float32 loop.

Compared, on the same data, networks, initial weights, batch and optimizer, in one process:

(A) ganops:  ``RankBatches`` feeding ``GANStep(..., ddp=False).train_batch`` - what each Ray
    Train worker runs per batch, minus DDP - exactly as the job configures it: its networks,
    its per-worker batch (``batch_size / num_workers``), its precision as resolved on this
    machine (``auto``: bf16 only where the CPU or GPU has bfloat16 units), its EMA.
(B) plain:   the loop of pytorch/examples' ``dcgan/main.py`` (``tests/learning/plain.py``,
    shared with the learning tests, in its textbook mode) in **float32**: a ``DataLoader`` over
    a ``TensorDataset`` of float images in [-1, 1] (shuffle, drop_last, no worker processes)
    and per batch D(real) backward, D(G(z).detach()) backward, D step, D(G(z)) backward, G step,
    with BCE on logits (our D returns logits).

A ratio well below 1 is a default that is slow on this machine: the shipped job asked for
bf16, which runs emulated where the CPU has no bfloat16 units (issue 27: 16 img/s against
~150 in float32 on a 2-core AVX2 CPU). The target is >= 0.95 on every machine.

Both sides are timed in one process, interleaved: after a warm-up of each, every round
times N steps of A and N steps of B in alternating chunks (``--chunk`` steps of one side,
then of the other, the side that goes first swapping from chunk pair to chunk pair), so a
noisy machine slows both alike. On CPU a chunk is one step by default: on a shared 2-core
machine the load changes within seconds, and blocks of N steps per side gave per-round
ratios anywhere from 0.4 to 2.6 on the same code. On CUDA a chunk is the whole round
(N steps of A, then N of B), because the clock needs a device sync at each chunk's ends and
a sync per step would add a host stall that real training does not have. The torch threads
default to a worker's share of the CPUs (the CPUs / the job's workers), as Ray gives each.
A step is fetching the batch plus one D and one G update.

Reading the result: images/s per side per round, their medians, and the ratio
ganops / plain (the median of the per-round ratios, robust to a noisy round). The script
prints a note below the target but always exits 0: this is a measurement, not a gate.

    .venv/bin/python bench/train_throughput.py                       # the main job, ~1 min on 2 idle CPUs
    .venv/bin/python bench/train_throughput.py --set spec.train.precision=bf16   # what the old default did
    .venv/bin/python bench/train_throughput.py --steps 2 --rounds 1 --warmup 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ganops import data as gdata
from ganops import spec as gspec
from ganops.errors import UserError
from ganops.spec.models import GANJobSpec
from ganops.train.batches import RankBatches
from ganops.train.precision import describe as describe_device
from ganops.train.step import GANStep

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))
from tests.learning.plain import PlainGAN  # noqa: E402 - needs the path above

DEFAULT_JOB = REPO / "jobs" / "mnist_dcgan.yaml"
MNIST = (REPO / ".." / "shared" / "datasets" / "mnist").resolve()
# The official test split (10,000 images) is what the shared folder holds.
DEFAULT_SETS = [f"spec.data.root={MNIST}", "spec.data.split=test", "spec.data.download=false"]
TARGET = 0.95


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default=str(DEFAULT_JOB), help="GANJob YAML (default: jobs/mnist_dcgan.yaml)")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
        help="spec override, as in the CLI (repeatable); applied after the benchmark's own: "
        + ", ".join(DEFAULT_SETS),
    )  # fmt: skip
    # Many short rounds beat few long ones on a shared machine: a burst of load then spoils
    # one round's ratio, which the median drops, instead of a large share of the run.
    p.add_argument("--steps", type=int, default=10, help="timed steps per side per round (default 10)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first (default 3)")
    p.add_argument(
        "--chunk", type=int, default=None,
        help="steps of one side before switching to the other (default: 1 on cpu, --steps on cuda)",
    )  # fmt: skip
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: a worker's share)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    for flag in ("steps", "rounds", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1")
    if args.chunk is not None and not 1 <= args.chunk <= args.steps:
        p.error("--chunk must be between 1 and --steps")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    return args


# --- (A) ganops ----------------------------------------------------------------------


def ganops_side(
    spec: GANJobSpec, ds: gdata.ArrayDataset, device: torch.device, batch: int
) -> tuple[GANStep, Callable[[], None]]:
    step = GANStep(spec, ds.info.shape, ds.info.num_classes, device, ddp=False)
    batches = RankBatches(ds.images, ds.labels, batch, seed=spec.train.seed, device=device)

    def stream() -> Iterator[tuple[Tensor, Tensor | None]]:
        epoch = 0
        while True:
            yield from batches.epoch(epoch)
            epoch += 1

    it = stream()

    def one() -> None:
        real, y = next(it)
        step.train_batch(real, y)

    return step, one


# --- (B) plain PyTorch, pytorch/examples dcgan style ---------------------------------


def plain_side(
    spec: GANJobSpec, ds: gdata.ArrayDataset, device: torch.device, step: GANStep, batch: int
) -> Callable[[], None]:
    # The loop itself is shared with the learning tests and bench/quality.py; textbook=True
    # is pytorch/examples as it stands (BCE with hard labels, no clipping), whatever the spec,
    # and in float32 whatever the spec's precision.
    num_classes = ds.info.num_classes if spec.model.conditional else None
    plain = PlainGAN(spec, ds.info.shape, num_classes, device, init=(step.g.state_dict(), step.d.state_dict()),
                     textbook=True, precision="fp32")  # fmt: skip
    images = torch.from_numpy(gdata.to_unit_range(ds.images))
    # Unlabelled data gets dummy labels so the DataLoader yields the same (x, y) pairs.
    labels = torch.zeros(len(images), dtype=torch.long) if ds.labels is None else torch.from_numpy(ds.labels)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels),
        batch_size=batch, shuffle=True, drop_last=True, num_workers=0,
    )  # fmt: skip

    def stream() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield from loader

    it = stream()

    def one() -> None:
        real_cpu, y_cpu = next(it)
        plain.train_batch(real_cpu.to(device), y_cpu.to(device) if num_classes is not None else None)

    return one


# --- timing --------------------------------------------------------------------------


def _timed(one: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps, with the device idle at both ends of the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _not_compared(spec: GANJobSpec) -> list[str]:
    """Spec features the plain loop does not do (the ratio then compares different work)."""
    t = spec.train
    out = []
    if t.loss != "bce":
        out.append(f"loss={t.loss} (plain uses BCE)")
    if t.d_steps != 1:
        out.append(f"d_steps={t.d_steps}")
    if t.ema_decay is not None:
        out.append("ema_decay")
    if t.clip_grad_value is not None or t.clip_grad_norm is not None:
        out.append("gradient clipping")
    if t.label_smoothing:
        out.append("label_smoothing")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    job = gspec.load(args.job, DEFAULT_SETS + args.sets)
    spec = job.spec
    workers = spec.scaling.num_workers
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // workers))
    device = torch.device(args.device)
    ds = gdata.load(spec.data)
    batch = spec.train.batch_size // workers  # what each worker trains on per step
    chunk = args.chunk or (1 if device.type == "cpu" else args.steps)
    if batch > len(ds):
        # Both sides drop the last partial batch: an epoch would hold no batch at all.
        raise UserError(f"spec.train.batch_size: {workers} workers x {batch} is more than the {len(ds)} images")

    torch.manual_seed(spec.train.seed)
    step, run_ganops = ganops_side(spec, ds, device, batch)
    run_plain = plain_side(spec, ds, device, step, batch)
    sides = {"ganops": run_ganops, "plain": run_plain}

    settings = {
        "job": job.name,
        "arch": spec.model.arch,
        "images": len(ds),
        "image_shape": list(ds.info.shape),
        "batch": batch,
        "workers": workers,
        "precision": f"{spec.train.precision} -> {step.precision}",
        "cpu": describe_device(torch.device("cpu")),
        "optimizer": spec.train.optimizer,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "chunk": chunk,
    }
    print(
        f"job {settings['job']} ({settings['arch']}, {settings['images']} images "
        f"{'x'.join(map(str, ds.info.shape))}) | batch {batch} per worker ({workers} workers) | "
        f"precision {settings['precision']} (plain: fp32) | {spec.train.optimizer} | "
        f"device {settings['device']} | threads {settings['threads']} | torch {settings['torch']}"
    )
    print(f"cpu: {settings['cpu']}")
    print(
        f"{args.rounds} rounds x {args.steps} steps per side in chunks of {chunk}, "
        f"after {args.warmup} warm-up steps each"
    )
    skipped = _not_compared(spec)
    if skipped:
        print(f"note: the plain loop does not do {', '.join(skipped)}; the ratio compares different work")

    for one in sides.values():
        _timed(one, args.warmup, device)

    rounds: list[dict[str, float]] = []
    pair = 0  # chunk pairs so far: who goes first alternates across rounds too
    for r in range(args.rounds):
        secs = {"ganops": 0.0, "plain": 0.0}
        done = 0
        while done < args.steps:
            n = min(chunk, args.steps - done)
            order = ("ganops", "plain") if pair % 2 == 0 else ("plain", "ganops")
            for name in order:
                secs[name] += _timed(sides[name], n, device)
            done += n
            pair += 1
        ips = {name: args.steps * batch / s for name, s in secs.items()}
        rounds.append({"ganops": ips["ganops"], "plain": ips["plain"], "ratio": ips["ganops"] / ips["plain"]})
        print(
            f"  round {r + 1}: ganops {ips['ganops']:7.1f} img/s | "
            f"plain {ips['plain']:7.1f} img/s | ratio {rounds[-1]['ratio']:.3f}"
        )

    med = {k: statistics.median(x[k] for x in rounds) for k in ("ganops", "plain", "ratio")}
    print(
        f"ganops {med['ganops']:6.0f} img/s | plain fp32 {med['plain']:6.0f} img/s | ratio {med['ratio']:.2f}x "
        f"(median of {args.rounds} rounds; target >= {TARGET})"
    )
    if med["ratio"] < TARGET:
        slower = (1 - med["ratio"]) * 100
        print(f"note: the job's step is {slower:.1f}% slower than the plain fp32 loop (below the {TARGET} target)")

    result = {"settings": settings, "not_compared": skipped, "rounds": rounds, "median": med}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
