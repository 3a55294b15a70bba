"""Runs ``GANStep`` under real DDP: N processes on gloo, each its own rank, no Ray.

Each rank trains on its contiguous slice of one global batch (the DistributedSampler's
split differs, but which images share a step is what BatchNorm sees, and that is kept) and
draws its slice of one global noise batch (z, and WGAN-GP's interpolation weights), so 1 and
N ranks, and a single-process reference, see exactly the same data and noise.

One process group serves many jobs (``train_many``): starting the ranks (spawn, imports)
costs seconds, a job's steps on small nets milliseconds.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ganops.spec.models import GANJob
from tests.helpers import free_port


@dataclass
class Feed:
    """The global batches and noise of a run: one entry per ``train_batch`` call."""

    real: list[torch.Tensor]
    labels: list[torch.Tensor] | None
    z: list[torch.Tensor]
    mix: list[torch.Tensor]
    aug: list[torch.Tensor] | None = None
    """Per step, the augmentation draws ([5, batch, ganops.augment.UNIFORMS]: D's real, D's
    fake, a lazy R1's real, a lazy R2's fake, the G step's fake; each used only on the steps
    that have that pass)."""

    def __len__(self) -> int:
        return len(self.real)


def _train_one(job: dict[str, Any], feed: Feed, num_classes: int | None, rank: int, world: int) -> dict[str, Any]:
    spec = GANJob.model_validate(job).spec
    torch.manual_seed(0)  # same initial weights on every rank, as the Ray loop does
    # The nets in the feed's dtype: float64 makes runs that differ only in summation order
    # agree to ~1e-12 (tests/test_step_equivalence.py says why that matters).
    default = torch.get_default_dtype()
    torch.set_default_dtype(feed.real[0].dtype)
    try:
        return _steps(spec, feed, num_classes, rank, world)
    finally:
        torch.set_default_dtype(default)


def _steps(spec: Any, feed: Feed, num_classes: int | None, rank: int, world: int) -> dict[str, Any]:
    from ganops.train.step import GANStep

    step = GANStep(spec, tuple(feed.real[0].shape[1:]), num_classes, torch.device("cpu"), ddp=world > 1)
    step.run_batches = len(feed)  # the run is the feed (linear lr_decay's length)
    init = {"g": _copy(step.g.state_dict()), "d": _copy(step.d.state_dict())}
    reductions = {"d": 0, "g": 0}
    if world > 1:
        for name, net in (("d", step.d_train), ("g", step.g_train)):
            # No annotations: DDP checks them at run time, and this module's are strings.
            def hook(state, bucket, name=name):  # type: ignore[no-untyped-def]
                reductions[name] += 1
                fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
                return fut.then(lambda f: f.value()[0] / world)

            net.register_comm_hook(None, hook)
    zs = [z.chunk(world)[rank] for z in feed.z]
    mixes = [m.chunk(world)[rank] for m in feed.mix]
    augs: list[torch.Tensor] = []
    t = spec.train
    lazy = t.reg_interval > 1
    for i, a in enumerate(feed.aug or []):
        real_u, fake_u, r1_u, r2_u, g_u = a.chunk(world, dim=1)[rank]
        augs += [real_u, fake_u]
        if lazy and i % t.reg_interval == 0:
            augs += ([r1_u] if t.r1_gamma else []) + ([r2_u] if t.r2_gamma else [])
        augs += [g_u] if (i + 1) % t.d_steps == 0 else []
    step.sample_z = lambda n: zs.pop(0)  # type: ignore[method-assign]
    step.sample_mix = lambda n: mixes.pop(0)  # type: ignore[method-assign]
    step.sample_aug = lambda n: augs.pop(0)  # type: ignore[method-assign]
    for i, real in enumerate(feed.real):
        y = feed.labels[i].chunk(world)[rank] if feed.labels is not None else None
        step.train_batch(real.chunk(world)[rank].clone(), y)
    return {
        "init": init,
        "g": _copy(step.g.state_dict()),
        "d": _copy(step.d.state_dict()),
        "g_ema": _copy(step.g_ema.state_dict()) if step.g_ema is not None else None,
        "reductions": reductions,
        "noise_left": (len(zs), len(mixes)),
        "aug_left": len(augs),
        "augment_p": float(step.augment_p),
        "lr": (step.opt_g.param_groups[0]["lr"], step.opt_d.param_groups[0]["lr"]),
    }


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _rank_main(rank: int, world: int, port: int, jobs: dict[str, tuple[dict[str, Any], Feed, int | None]],
               out: str) -> None:  # fmt: skip
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
        )
    results: dict[str, Any] = {}
    for name, (job, feed, num_classes) in jobs.items():
        try:
            results[name] = _train_one(job, feed, num_classes, rank, world)
        except Exception:  # noqa: BLE001 - reported per job; the test of that job fails with it
            results[name] = {"error": traceback.format_exc()}
    torch.save(results, f"{out}.rank{rank}")
    if world > 1:
        dist.destroy_process_group()


def train_many(jobs: dict[str, tuple[GANJob, Feed, int | None]], world: int, tmp: Path) -> list[dict[str, Any]]:
    """Train each job on its feed on ``world`` ranks of one process group (one job after
    another); per rank, per job: the initial and final nets, the EMA, the DDP reduction
    counts, or the rank's traceback under ``"error"``."""
    out = str(tmp / f"ddp-world{world}")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    payload = {name: (job.to_dict(), feed, classes) for name, (job, feed, classes) in jobs.items()}
    mp.start_processes(_rank_main, args=(world, free_port(), payload, out), nprocs=world, start_method="spawn")
    return [torch.load(f"{out}.rank{r}", weights_only=False) for r in range(world)]
