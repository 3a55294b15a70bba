"""How big a job's networks are, computed before anything is allocated.

G and D are built on PyTorch's meta device (shapes only, no memory), by the same builders the
workers use, and run forward once on a meta batch: the parameter counts are exact, and the
activations are what every layer outputs. ``training_bytes`` turns them into an estimate of a
worker's memory for a training step, so that a spec asking for a network no worker can hold
(``latent_dim: 1e13``) is refused before any worker starts, naming the fields, instead of the
workers dying one after another and Ray reporting them "lost".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ganops.errors import UserError
from ganops.nets import build_discriminator, build_generator
from ganops.spec.models import GANJob, ModelSpec, TrainSpec

FLOAT_BYTES = 4  # fp32 weights, gradients and optimizer state (bf16 autocast keeps fp32 masters)
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "rmsprop": 1, "sgd": 1}
# Whatever the machine, no worker holds more than this (a typo like latent_dim: 1e13 asks for
# petabytes); where the memory a worker has is known, that is the bound.
MAX_WORKER_BYTES = 2**40


@dataclass(frozen=True)
class ModelSize:
    g_params: int
    d_params: int
    g_activations: int
    """Floats G outputs across its layers for one image."""
    d_activations: int
    """Floats D outputs across its layers for one image."""

    def training_bytes(self, train: TrainSpec, per_worker_batch: int) -> int:
        """An estimate of one worker's memory for a training step (within ~2x): weights,
        gradients and optimizer state of G and D (and the EMA of G), plus the activations
        autograd keeps (G on the batch, D on real and fake, D again in the G step) and as
        much again for the backward pass."""
        states = OPTIMIZER_STATES.get(train.optimizer, 2)
        per_param = 1 + 1 + states
        params = per_param * (self.g_params + self.d_params) + (self.g_params if train.ema_decay else 0)
        activations = 2 * per_worker_batch * (self.g_activations + 3 * self.d_activations)
        return FLOAT_BYTES * (params + activations)


def measure(model: ModelSpec, image_shape: tuple[int, int, int], num_classes: int | None) -> ModelSize:
    """Parameter counts and per-image activations of G and D, allocating nothing."""
    with torch.device("meta"):
        g = build_generator(model, image_shape, num_classes)
        d = build_discriminator(model, image_shape, num_classes)
    counts = {"g": 0, "d": 0}

    def counter(key: str) -> object:
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                counts[key] += out.numel()

        return hook

    hooks = [m.register_forward_hook(counter(key)) for key, net in (("g", g), ("d", d))
             for m in net.modules() if not any(True for _ in m.children())]  # fmt: skip
    try:
        z = torch.empty(2, model.latent_dim, device="meta")  # 2: BatchNorm's training mode wants > 1
        y = torch.zeros(2, dtype=torch.long, device="meta") if num_classes else None
        d(g(z, y), y)
    finally:
        for h in hooks:
            h.remove()
    return ModelSize(
        g_params=sum(p.numel() for p in g.parameters()),
        d_params=sum(p.numel() for p in d.parameters()),
        g_activations=counts["g"] // 2,
        d_activations=counts["d"] // 2,
    )


MEMINFO = "/proc/meminfo"
# A container's limit and use (cgroup v2, then v1): a pod's memory, which /proc/meminfo, the
# host's, does not show.
CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def available_memory() -> int | None:
    """Bytes of memory available here: Linux's MemAvailable, or less where this process's
    cgroup (a Kubernetes pod's limit) leaves less; None if unknown."""
    available = None
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in CGROUP_FILES:
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" (v2) or a huge number (v1): no limit
            left = max(int(limit) - usage, 0)
            available = left if available is None else min(available, left)
        break
    return available


def check_fits(
    model: ModelSpec,
    train: TrainSpec,
    image_shape: tuple[int, int, int],
    num_classes: int | None,
    *,
    workers: int,
    memory: tuple[int, int] | None,
) -> ModelSize:
    """``measure``, then a ``UserError`` naming the fields when a worker cannot hold a
    training step. ``memory``: (bytes available, workers sharing them) where known."""
    try:
        sized = measure(model, image_shape, num_classes)
    except (RuntimeError, OverflowError, MemoryError) as e:  # sizes past what torch can index
        raise UserError(
            f"spec.model: the networks are too big to build ({str(e).splitlines()[0][:160]}); narrow "
            "spec.model.latent_dim, g_widths or d_widths",
            field="spec.model",
        ) from None
    batch = max(train.batch_size // workers, 1)
    need = sized.training_bytes(train, batch)
    have, where = MAX_WORKER_BYTES, "any worker (1 TiB)"
    if memory is not None:
        available, sharing = memory
        have = available // max(sharing, 1)
        where = f"a worker here ({sharing} worker(s) share the {available / 2**30:.1f} GiB available)"
    if need > have:
        raise UserError(
            f"spec.model: G has {sized.g_params:,} parameters and D {sized.d_params:,}; a training step needs "
            f"~{_bytes(need)} per worker (weights, gradients, {train.optimizer}'s state and the activations "
            f"of a per-worker batch of {batch}), more than {where} has. Narrow spec.model.latent_dim, "
            "g_widths or d_widths, or lower spec.train.batch_size",
            field="spec.model",
        )
    return sized


def _bytes(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**50 else f"{n:.2e} bytes"


class DataShape(Protocol):
    """What sizing needs of a dataset's ``ImageInfo`` (ganops.data, a layer beside this one)."""

    shape: tuple[int, int, int]
    num_classes: int | None


def check_job(job: GANJob, info: DataShape, address: str | None) -> ModelSize:
    """``check_fits`` for a job about to run (``info``: its data's ``ImageInfo``): with no
    ``address`` every worker runs on this machine and gets its share of the memory available
    here; on a cluster the bound is 1 TiB here and each worker checks its own node's."""
    spec = job.spec
    workers = spec.scaling.num_workers
    available = available_memory() if address is None else None
    classes = info.num_classes if spec.model.conditional else None
    memory = None if available is None else (available, workers)
    return check_fits(spec.model, spec.train, info.shape, classes, workers=workers, memory=memory)
