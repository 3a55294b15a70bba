"""Sample quality: the ganops step against the plain PyTorch DCGAN loop, on real MNIST.

Both sides train a job's own networks from the same initial weights with the same
optimizer settings and batch, on the same batches of the shared MNIST split (its first
8,000 images; 32 px jobs get them padded, RGB jobs repeated to 3 channels):

(A) ganops: ``GANStep(..., ddp=False).train_batch`` — what each Ray Train worker runs.
(B) plain:  pytorch/examples' dcgan loop (``tests/learning/plain.py``) with the spec's loss.

Each side is then judged by the learning tier's MNIST classifier (``tests/learning/judge.py``,
trained on first use and cached): the Fréchet distance of its features between 1,000 samples
and the 2,000 held-out digits (lower is better; noise scores ~1,000) and the classes holding
at least 5% of the samples. Two budgets:

(a) equal steps: both sides train ``--steps`` batches (interleaved, so machine load hits
    both alike), and
(b) equal wall time: both sides start afresh from the same weights and each trains for
    ``--seconds`` of its own clock, taking turns in ~1 s slices (default: the time the plain
    side took in (a); 0 skips (b)). The faster side gets more steps.

Prints FD and coverage of each side and the ratio FD ganops / FD plain (<= 1: ganops is at
least as good). A measurement, not a gate: it always exits 0.

    .venv/bin/python bench/quality.py                                  # mnist_dcgan, ~4 min on 2 idle CPUs (200 steps)
    .venv/bin/python bench/quality.py --job jobs/cifar_dcgan.yaml --steps 300 --seconds 0
    .venv/bin/python bench/quality.py --set spec.train.loss=hinge --set spec.model.d_norm=batch
    .venv/bin/python bench/quality.py --steps 2 --seconds 1 --samples 200   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from ganops.errors import UserError  # noqa: E402
from tests.learning import runs  # noqa: E402 - needs the path above
from tests.learning.data import mnist  # noqa: E402
from tests.learning.judge import Judge, Verdict  # noqa: E402
from tests.learning.plain import PlainGAN  # noqa: E402

DEFAULT_JOB = REPO / "jobs" / "mnist_dcgan.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default=str(DEFAULT_JOB), help="GANJob YAML (default: jobs/mnist_dcgan.yaml)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                   help="spec override, as in the CLI (repeatable); the data is always the local MNIST split, "
                   f"the batch {runs.BATCH} unless set here")  # fmt: skip
    p.add_argument("--steps", type=int, default=200, help="steps per side for (a) equal steps (default 200)")
    p.add_argument("--seconds", type=float, default=None,
                   help="seconds per side for (b) equal time (default: the plain side's time in (a); 0 skips)")  # fmt: skip
    p.add_argument("--samples", type=int, default=1000, help="samples judged per side (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.seconds is not None and args.seconds < 0:
        p.error("--seconds must be at least 0")
    if args.samples < 20:
        p.error("--samples must be at least 20 (a covariance needs samples)")
    return args


def _sides(spec: Any, seed: int) -> dict[str, Any]:
    from ganops.train.step import GANStep

    shape = runs.image_shape(spec)
    torch.manual_seed(seed)
    step = GANStep(spec, shape, 10, torch.device("cpu"), ddp=False, noise_seed=seed)
    plain = PlainGAN(spec, shape, 10, torch.device("cpu"), init=(step.g.state_dict(), step.d.state_dict()))
    return {"ganops": step, "plain": plain}


def _generator(side: Any) -> torch.nn.Module:
    return side.sampler if hasattr(side, "sampler") else side.netG


def equal_steps(spec: Any, steps: int, seed: int) -> tuple[dict[str, Any], dict[str, float]]:
    sides = _sides(spec, seed)
    secs = {"ganops": 0.0, "plain": 0.0}
    train, _ = mnist()
    it = runs.batches(train, runs.image_shape(spec), spec.train.batch_size, seed)
    for i in range(steps):
        real, y = next(it)
        # Alternate who goes first, so a burst of machine load hits both alike.
        for name in ("ganops", "plain") if i % 2 == 0 else ("plain", "ganops"):
            t0 = time.perf_counter()
            sides[name].train_batch(real, y)
            secs[name] += time.perf_counter() - t0
    return sides, secs


def equal_time(spec: Any, seconds: float, seed: int) -> tuple[dict[str, Any], dict[str, int]]:
    """Each side trains for ``seconds`` of its own clock; returns the sides and their step counts.

    The sides take turns in slices of ~1 s each, so both see the same machine load.
    """
    sides = _sides(spec, seed)
    train, _ = mnist()
    its = {n: runs.batches(train, runs.image_shape(spec), spec.train.batch_size, seed) for n in sides}
    spent = {n: 0.0 for n in sides}
    steps = {n: 0 for n in sides}
    while any(spent[n] < seconds for n in sides):
        for name in sides:
            slice_end = min(seconds, spent[name] + 1.0)
            while spent[name] < slice_end:
                real, y = next(its[name])
                t0 = time.perf_counter()
                sides[name].train_batch(real, y)
                spent[name] += time.perf_counter() - t0
                steps[name] += 1
    return sides, steps


def _report(title: str, verdicts: dict[str, Verdict], extra: dict[str, str]) -> dict[str, Any]:
    g, p = verdicts["ganops"], verdicts["plain"]
    ratio = g.fd / p.fd
    print(title)
    for name, v in verdicts.items():
        print(f"  {name:7s} {v.line()} | {extra[name]}")
    print(f"  FD ratio ganops / plain: {ratio:.2f} (<= 1: ganops at least as good)")
    return {
        name: {"fd": v.fd, "classes": v.classes, "shares": v.shares, "detail": extra[name]}
        for name, v in verdicts.items()
    } | {"fd_ratio": ratio}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # The training steps are compared: both sides sample their raw G (the job's EMA is off
    # unless --set turns it back on; the plain loop keeps none).
    job = runs.load_spec(args.job, "spec.train.ema_decay=null", *args.sets)
    spec = job.spec
    if spec.data.dataset not in ("mnist", "cifar10", "svhn", "fashion_mnist"):
        raise UserError(f"spec.data.dataset: {spec.data.dataset}: quality is measured on MNIST, shaped as "
                        "MNIST (28 px grey) or CIFAR/SVHN (32 px RGB) jobs")  # fmt: skip
    judge = Judge.create(log=True)
    print(f"job {job.name} ({spec.model.arch}, loss {spec.train.loss}, {spec.train.optimizer}, "
          f"batch {spec.train.batch_size}, {'x'.join(map(str, runs.image_shape(spec)))}) | torch {torch.__version__} "
          f"| threads {torch.get_num_threads()} | classifier {judge.accuracy:.1%} on held-out digits")  # fmt: skip

    sides, secs = equal_steps(spec, args.steps, args.seed)
    verdicts = {n: judge.judge_generator(_generator(s), args.samples) for n, s in sides.items()}
    extra = {n: f"{args.steps} steps in {secs[n]:.1f} s ({args.steps / secs[n]:.2f} steps/s)" for n in sides}
    result: dict[str, Any] = {"job": job.name, "steps": args.steps,
                              "equal_steps": _report(f"(a) equal steps: {args.steps}", verdicts, extra)}  # fmt: skip

    seconds = secs["plain"] if args.seconds is None else args.seconds
    if seconds > 0:
        sides, steps = equal_time(spec, seconds, args.seed)
        verdicts = {n: judge.judge_generator(_generator(s), args.samples) for n, s in sides.items()}
        extra = {n: f"{steps[n]} steps in {seconds:.1f} s" for n in sides}
        result["equal_time"] = _report(f"(b) equal wall time: {seconds:.1f} s per side", verdicts, extra)
        result["seconds"] = seconds
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
