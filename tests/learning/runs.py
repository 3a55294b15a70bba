"""Train a job's networks on MNIST two ways, side by side: ganops' step and the plain loop.

Both sides start from the same weights, see the same batches in the same order, use the
same optimizer settings and train the same number of steps; only the training step
differs. That makes the plain loop's score a threshold for ganops' on the same budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tests.learning.data import REPO, Digits, mnist, shaped
from tests.learning.plain import PlainGAN

JOBS = REPO / "jobs"
BATCH = 64


def load_spec(job: str | Path, *overrides: str, mnist_root: Path | None = None):
    """A job file (a name in jobs/, or a path) with ``--set`` overrides, pointed at the local MNIST split.

    The overrides come last, so they may change the batch or the data (the submit tests do).
    """
    from ganops import client
    from tests.learning.data import MNIST

    base = [
        f"spec.data.root={mnist_root or MNIST}",
        "spec.data.split=test",
        "spec.data.download=false",
        f"spec.train.batch_size={BATCH}",
    ]
    path = Path(job) if str(job).endswith((".yaml", ".yml")) else JOBS / f"{job}.yaml"
    return client.load_job(path, base + list(overrides))


def image_shape(job_spec) -> tuple[int, int, int]:
    """The (C, H, W) the job's own data would have: MNIST's for MNIST, 32x32 RGB for CIFAR/SVHN
    (and for the 32 px RGB folder the submit tests write)."""
    return (1, 28, 28) if job_spec.data.dataset in ("mnist", "fashion_mnist") else (3, 32, 32)


@dataclass
class Pair:
    """Both generators after training, and each side's training seconds."""

    ganops: nn.Module
    plain: nn.Module | None
    steps: int
    seconds: dict[str, float]


def batches(train: Digits, shape: tuple[int, int, int], batch: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled batches of the training digits in the job's layout, through ganops' RankBatches."""
    from ganops.train.batches import RankBatches

    rb = RankBatches(shaped(train.images, shape), train.labels, batch, seed=seed)
    epoch = 0
    while True:
        for real, y in rb.epoch(epoch):
            assert y is not None
            yield real, y
        epoch += 1


def train_pair(job_spec, steps: int, seed: int = 0, plain: bool = True, device: str = "cpu") -> Pair:
    """``steps`` batches through ``GANStep(ddp=False).train_batch`` and (``plain``) the plain loop."""
    from ganops.train.step import GANStep

    dev = torch.device(device)
    shape = image_shape(job_spec)
    train, _ = mnist()
    torch.manual_seed(seed)
    step = GANStep(job_spec, shape, 10, dev, ddp=False, noise_seed=seed)
    ref = None
    if plain:
        ref = PlainGAN(job_spec, shape, 10, dev, init=(step.g.state_dict(), step.d.state_dict()))
    secs = {"ganops": 0.0, "plain": 0.0}
    for i, (real, y) in enumerate(batches(train, shape, job_spec.train.batch_size, seed)):
        if i == steps:
            break
        real, y = real.to(dev), y.to(dev)
        t0 = time.perf_counter()
        step.train_batch(real, y)
        t1 = time.perf_counter()
        if ref is not None:
            ref.train_batch(real, y)
        secs["ganops"] += t1 - t0
        secs["plain"] += time.perf_counter() - t1
    return Pair(step.sampler, ref.sampler if ref is not None else None, steps, secs)
