"""The generated images an evaluation scores: fixed latents, made in batches.

The latents are a function of (seed, num_samples) only, so every evaluation of a run
scores G on the same z (epoch-to-epoch differences are G's, not the noise's), a
distributed evaluation makes exactly the images a single process would, and
``ganops evaluate`` on the final model reproduces the training's last score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ganops.images import to_uint8

# Mixed into the seed so that evaluation noise never coincides with a training stream.
_EVAL_STREAM = 0x4556414C  # "EVAL"

GenerateFn = Callable[[Tensor, Tensor | None], Tensor]
"""(z [n, latent] float32, class [n] int64 or None) → images [n, C, H, W] in [-1, 1]."""


def latents(seed: int, n: int, latent_dim: int, num_classes: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """z float32 [n, latent_dim] and balanced classes (i % num_classes) for conditional models."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([abs(int(seed)), _EVAL_STREAM])))
    z = rng.standard_normal((n, latent_dim), dtype=np.float32)
    labels = np.arange(n, dtype=np.int64) % num_classes if num_classes else None
    return z, labels


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous part of n items (sizes differ by at most one)."""
    return n * rank // world, n * (rank + 1) // world


@torch.inference_mode()
def generate(
    fn: GenerateFn, z: np.ndarray, labels: np.ndarray | None, batch_size: int, device: torch.device
) -> np.ndarray:
    """uint8 [n, C, H, W]: the images quantised as a PNG file would store them (and the real data is)."""
    out: list[np.ndarray] = []
    for i in range(0, len(z), batch_size):
        zb = torch.from_numpy(z[i : i + batch_size]).to(device)
        yb = torch.from_numpy(labels[i : i + batch_size]).to(device) if labels is not None else None
        out.append(to_uint8(fn(zb, yb).float().cpu().numpy()))
    if not out:
        raise ValueError("no latents to generate from")
    return np.concatenate(out)
