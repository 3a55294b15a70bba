"""Runs ``GANStep`` under real DDP: N processes on gloo, each its own rank, no Ray.

Each rank trains on its contiguous slice of one global batch (the DistributedSampler's
split differs, but which images share a step is what BatchNorm sees, and that is kept) and
draws its slice of one global noise batch, so 1 and N ranks see exactly the same data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ganops.spec.models import GANJob
from tests.helpers import free_port


def _rank_main(rank: int, world: int, port: int, job: dict[str, Any], batches: list[torch.Tensor],
               zs: list[torch.Tensor], out: str) -> None:  # fmt: skip
    from ganops.train.step import GANStep

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    spec = GANJob.model_validate(job).spec
    torch.manual_seed(0)  # same initial weights on every rank, as the Ray loop does
    step = GANStep(spec, tuple(batches[0].shape[1:]), None, torch.device("cpu"), ddp=world > 1)
    reductions = {"d": 0, "g": 0}
    if world > 1:
        for name, net in (("d", step.d_train), ("g", step.g_train)):
            # No annotations: DDP checks them at run time, and this module's are strings.
            def hook(state, bucket, name=name):  # type: ignore[no-untyped-def]
                reductions[name] += 1
                fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
                return fut.then(lambda f: f.value()[0] / world)

            net.register_comm_hook(None, hook)
    queue = [z.chunk(world)[rank] for z in zs]
    step.sample_z = lambda n: queue.pop(0)  # type: ignore[method-assign]
    for real in batches:
        step.train_batch(real.chunk(world)[rank].clone(), None)
    if rank == 0:
        torch.save({"g": step.g.state_dict(), "d": step.d.state_dict(), "reductions": reductions}, out)
    if world > 1:
        dist.destroy_process_group()


def train(job: GANJob, batches: list[torch.Tensor], zs: list[torch.Tensor], world: int, tmp: Path) -> dict[str, Any]:
    """Train ``len(batches)`` iterations on ``world`` ranks; rank 0's nets and DDP reduction counts."""
    out = str(tmp / f"rank0-world{world}.pt")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    args = (world, free_port(), job.to_dict(), batches, zs, out)
    mp.start_processes(_rank_main, args=args, nprocs=world, start_method="spawn")
    return torch.load(out, weights_only=True)
