"""One shard: G forward in batches, and best-of-K ranking by the run's discriminator.

``g`` is the MLflow form of the generator (``GeneratorExport``: one float32 input, the class
as an extra last column for conditional models); ``d`` is the run's ``Discriminator``
(``d(x, y=None) -> logits``). Both must already be on ``device``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ganops.generate.latents import shard_latents
from ganops.generate.options import GenerateOptions, ModelInfo
from ganops.train.samples import to_uint8


@dataclass
class ShardResult:
    """What one shard produced: images start..stop-1, in index order."""

    shard: int
    start: int
    stop: int
    images: np.ndarray
    """uint8 [n, C, H, W]."""
    labels: np.ndarray | None
    """int64 [n], None for unconditional models."""
    z: np.ndarray
    """float32 [n, latent_dim]: the vector each kept image was made from."""
    scores: np.ndarray | None = None
    """float32 [n]: D's logit of each kept image (best-of only)."""

    @property
    def count(self) -> int:
        return self.stop - self.start


@contextmanager
def _eval(net: nn.Module) -> Iterator[None]:
    # Eval mode (BatchNorm running statistics, no dropout) makes the output a function of the
    # input alone. Each module's own mode comes back afterwards: a GeneratorExport is a
    # wrapper left in train mode around an eval-mode G, and `.train(True)` on the wrapper
    # would put BatchNorm back on batch statistics.
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.eval()
    except NotImplementedError:
        # A torch.export program (MLflow's default "pt2" format) is frozen in the mode it
        # was exported in, and ganops exports G in eval mode.
        modes = []
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def generator_input(z: np.ndarray, labels: np.ndarray | None, info: ModelInfo) -> np.ndarray:
    """float32 [N, latent_dim (+1)]: z, plus the class as a last column for conditional models."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != info.latent_dim:
        raise ValueError(f"z has shape {z.shape}; the generator takes [N, {info.latent_dim}]")
    if not info.num_classes:
        if labels is not None:
            raise ValueError("labels were given for an unconditional generator")
        return np.ascontiguousarray(z)
    if labels is None or len(labels) != len(z):
        raise ValueError(f"a conditional generator needs one label per vector ({len(z)})")
    return np.concatenate([z, np.asarray(labels, dtype=np.float32)[:, None]], axis=1)


def generate_images(
    g: nn.Module,
    z: np.ndarray,
    labels: np.ndarray | None,
    info: ModelInfo,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """uint8 [N, C, H, W]: ``g`` on ``z`` in batches of ``batch_size``, in eval mode.

    Deterministic for the same inputs and batch size (on CPU; a GPU is as deterministic as
    its kernels).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    x = generator_input(z, labels, info)
    width = getattr(g, "input_width", x.shape[1])
    if width != x.shape[1]:
        raise ValueError(f"the generator takes inputs of width {width}, not {x.shape[1]}: wrong ModelInfo?")
    out = np.empty((len(x), *info.image_shape), dtype=np.uint8)
    with torch.inference_mode(), _eval(g):
        for i in range(0, len(x), batch_size):
            batch = torch.from_numpy(x[i : i + batch_size]).to(device)
            out[i : i + batch_size] = to_uint8(g(batch).float().cpu().numpy())
    return out


def score(
    d: nn.Module,
    images_uint8: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """float32 [N]: D's logits (higher: more real) on the images as D saw data, in [-1, 1]."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    out = np.empty(len(images_uint8), dtype=np.float32)
    with torch.inference_mode(), _eval(d):
        for i in range(0, len(images_uint8), batch_size):
            x = torch.from_numpy(images_uint8[i : i + batch_size]).to(device).float() / 127.5 - 1.0
            y = None if labels is None else torch.from_numpy(np.asarray(labels[i : i + batch_size])).to(device)
            out[i : i + batch_size] = d(x, y).float().reshape(-1).cpu().numpy()
    return out


def best_of(scores: np.ndarray, candidate_labels: np.ndarray | None, labels: np.ndarray | None, n: int) -> np.ndarray:
    """Candidate indices to keep, one per image slot, in candidate order.

    Unconditional: the ``n`` highest-scoring candidates of the shard. Conditional: the same
    within each class (a class with m images keeps its m best candidates), so every image
    index keeps the class it would have without best-of and the classes stay balanced.
    Ties go to the earlier candidate.
    """
    if candidate_labels is None or labels is None:
        return np.sort(np.argsort(-scores, kind="stable")[:n])
    keep = np.empty(n, dtype=np.int64)
    for c in np.unique(labels):
        slots = np.flatnonzero(labels == c)
        cands = np.flatnonzero(candidate_labels == c)
        keep[slots] = np.sort(cands[np.argsort(-scores[cands], kind="stable")[: len(slots)]])
    return keep


def generate_shard(
    g: nn.Module,
    d: nn.Module | None,
    opts: GenerateOptions,
    info: ModelInfo,
    shard: int,
    start: int,
    stop: int,
    device: torch.device,
    z_all: np.ndarray | None = None,
    labels_all: np.ndarray | None = None,
) -> ShardResult:
    """Images start..stop-1. With best_of K > 1: K candidates per image, D keeps the best."""
    k = opts.best_of
    if k > 1 and d is None:
        raise ValueError(f"best_of={k} needs the discriminator to rank candidates")
    z, cand_labels = shard_latents(opts, info, shard, start, stop, z_all, labels_all)
    images = generate_images(g, z, cand_labels, info, opts.batch_size, device)
    if k == 1:
        return ShardResult(shard, start, stop, images, cand_labels, z)
    assert d is not None
    scores = score(d, images, cand_labels, opts.batch_size, device)
    labels = cand_labels[::k] if cand_labels is not None else None  # candidates are image-major
    keep = best_of(scores, cand_labels, labels, stop - start)
    kept_labels = cand_labels[keep] if cand_labels is not None else None  # == labels: chosen per class
    return ShardResult(shard, start, stop, images[keep], kept_labels, z[keep], scores[keep])
