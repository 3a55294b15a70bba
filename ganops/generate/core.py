"""One shard: G forward in batches, and best-of-K ranking by the discriminator saved with G.

``g`` is the MLflow form of the generator (``GeneratorExport``: one float32 input, the class
as an extra last column for conditional models); ``d`` is the ``Discriminator``
(``d(x, y=None) -> logits``) from the checkpoint G came from. Both must already be on
``device``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ganops.generate.latents import CandidateStream, image_labels, shard_latents
from ganops.generate.options import ModelInfo
from ganops.images import to_uint8
from ganops.model_input import join_class_np
from ganops.spec.generation import GANGenerationSpec


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
    return join_class_np(z, labels)


def _grid(n: int, batch_size: int, offset: int) -> Iterator[tuple[int, int, int]]:
    """(j, pos, take): rows j..j+take-1 of an input whose row 0 is global row ``offset`` sit
    at positions pos..pos+take-1 of one batch of the global grid (batch b holds global rows
    b*batch_size .. (b+1)*batch_size-1).

    Why a global grid: a network's output for one row does not depend on the other rows of
    its batch, but it does depend on the batch's shape and on the row's place in it (on CPU,
    a row at place 4 of a batch of 5 differs from the same row at place 0 by ~1e-6, enough
    to flip a uint8 now and then). Feeding every batch at exactly ``batch_size`` rows, each
    global row at place ``row % batch_size``, makes image i a function of (seed, i) and the
    options whatever --num and --shard-size cut the work into. The cost: a shard whose
    bounds are not multiples of ``batch_size`` pads its first and last batch.
    """
    j = 0
    while j < n:
        pos = (offset + j) % batch_size
        take = min(batch_size - pos, n - j)
        yield j, pos, take
        j += take


def _batch(rows: np.ndarray, pos: int, batch_size: int) -> np.ndarray:
    """``rows`` at ``pos`` of a batch of exactly ``batch_size`` rows, the rest zeros."""
    if pos == 0 and len(rows) == batch_size:
        return np.ascontiguousarray(rows)
    batch = np.zeros((batch_size, *rows.shape[1:]), dtype=rows.dtype)
    batch[pos : pos + len(rows)] = rows
    return batch


def generate_images(
    g: nn.Module,
    z: np.ndarray,
    labels: np.ndarray | None,
    info: ModelInfo,
    batch_size: int,
    device: torch.device,
    offset: int = 0,
) -> np.ndarray:
    """uint8 [N, C, H, W]: ``g`` on ``z`` in batches of ``batch_size``, in eval mode.

    ``offset`` is the global row of ``z[0]`` (the image index; with best-of, the candidate
    index): rows go through the batches of the global grid (see ``_grid``), so a row's
    image is the same however the rows around it were cut (on CPU; a GPU is as
    deterministic as its kernels).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    x = generator_input(z, labels, info)
    width = getattr(g, "input_width", x.shape[1])
    if width != x.shape[1]:
        raise ValueError(f"the generator takes inputs of width {width}, not {x.shape[1]}: wrong ModelInfo?")
    out = np.empty((len(x), *info.image_shape), dtype=np.uint8)
    with torch.inference_mode(), _eval(g):
        for j, pos, take in _grid(len(x), batch_size, offset):
            batch = torch.from_numpy(_batch(x[j : j + take], pos, batch_size)).to(device)
            out[j : j + take] = to_uint8(g(batch)[pos : pos + take].float().cpu().numpy())
    return out


def score(
    d: nn.Module,
    images_uint8: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    device: torch.device,
    offset: int = 0,
) -> np.ndarray:
    """float32 [N]: D's logits (higher: more real) on the images as D saw data, in [-1, 1].

    Batched on the global grid like ``generate_images`` (``offset``: the global row of
    ``images_uint8[0]``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    out = np.empty(len(images_uint8), dtype=np.float32)
    with torch.inference_mode(), _eval(d):
        for j, pos, take in _grid(len(images_uint8), batch_size, offset):
            x = torch.from_numpy(_batch(images_uint8[j : j + take], pos, batch_size)).to(device).float() / 127.5 - 1.0
            y = None
            if labels is not None:
                y = torch.from_numpy(_batch(np.asarray(labels[j : j + take], dtype=np.int64), pos, batch_size))
                y = y.to(device)
            out[j : j + take] = d(x, y).float().reshape(-1)[pos : pos + take].cpu().numpy()
    return out


def generate_shard(
    g: nn.Module,
    d: nn.Module | None,
    opts: GANGenerationSpec,
    info: ModelInfo,
    shard: int,
    start: int,
    stop: int,
    device: torch.device,
    z_all: np.ndarray | None = None,
    labels_all: np.ndarray | None = None,
) -> ShardResult:
    """Images start..stop-1. With best_of K > 1: K candidates per image, D keeps the best.

    Image i keeps the best of its own K candidates (ties: the earlier one), never a pick
    from the shard's pool: what it keeps depends on (seed, i) alone, and every candidate
    carries the image's class, so a conditional image keeps its class. Candidates go
    through G and D a batch at a time, so memory follows the batch, not K × the shard.
    """
    k = opts.best_of
    if k > 1 and d is None:
        raise ValueError(f"best_of={k} needs the discriminator to rank candidates")
    if k == 1:
        z, labels = shard_latents(opts, info, shard, start, stop, z_all, labels_all)
        images = generate_images(g, z, labels, info, opts.batch_size, device, offset=start)
        return ShardResult(shard, start, stop, images, labels, z)
    assert d is not None
    # The candidates are drawn a batch at a time (CandidateStream): memory follows the shard's
    # kept images and one batch, never (stop - start) x K vectors.
    n, base = stop - start, start * k  # candidate c of image i is global row i*k + c
    stream = CandidateStream(opts, info, start, stop)
    images = np.empty((n, *info.image_shape), dtype=np.uint8)
    scores = np.full(n, -np.inf, dtype=np.float32)
    kept_z = np.empty((n, info.latent_dim), dtype=np.float32)
    for j, _pos, take in _grid(n * k, opts.batch_size, base):
        z, labels = stream.take(take)
        cands = generate_images(g, z, labels, info, opts.batch_size, device, offset=base + j)
        cand_scores = score(d, cands, labels, opts.batch_size, device, offset=base + j)
        # An image's candidates may span two batches: keep a running best (ties: the earlier).
        for r in range(take):
            image, c = divmod(j + r, k)
            if c == 0 or cand_scores[r] > scores[image]:
                images[image], scores[image], kept_z[image] = cands[r], cand_scores[r], z[r]
    kept_labels = image_labels(opts, info, start, stop)  # every candidate carries its image's class
    return ShardResult(shard, start, stop, images, kept_labels, kept_z, scores)
