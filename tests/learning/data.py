"""Real MNIST for the learning tier, split once and shaped for each job's networks.

The shared folder holds the official 10,000-image test split. The first ``TRAIN``
images train both the GANs and the judging classifier; the last ``HELD_OUT`` are never
trained on by anyone: they score the classifier and are the real side of every Fréchet
distance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[2]
MNIST = REPO.parent / "shared" / "datasets" / "mnist"
TRAIN = 8000
HELD_OUT = 2000
PAD = 2  # 28 -> 32: two background pixels on each side


@dataclass(frozen=True)
class Digits:
    """uint8 images (N, 1, 28, 28) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@functools.cache
def mnist(root: str = str(MNIST)) -> tuple[Digits, Digits]:
    """(train, held_out), read through ganops' own IDX reader (as a job would read them)."""
    from ganops import data as gdata
    from ganops.spec.models import DataSpec

    ds = gdata.load(DataSpec(dataset="mnist", root=root, split="test", download=False))
    assert ds.labels is not None and len(ds) >= TRAIN + HELD_OUT, f"expected the 10k MNIST test split at {root}"
    train = Digits(ds.images[:TRAIN], ds.labels[:TRAIN])
    held = Digits(ds.images[-HELD_OUT:], ds.labels[-HELD_OUT:])
    return train, held


def shaped(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """MNIST uint8 (N, 1, 28, 28) as a job's (C, H, W): padded to 32, grey repeated to RGB."""
    c, h, w = shape
    if h != w or h not in (28, 32) or c not in (1, 3):
        raise ValueError(f"no MNIST layout for image shape {shape}")
    if h == 32:
        images = np.pad(images, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))  # MNIST's background is 0
    if c == 3:
        images = np.repeat(images, 3, axis=1)
    return np.ascontiguousarray(images)


def to_judged(x: Tensor) -> Tensor:
    """G's output (N, C, H, W) in [-1, 1] as what the classifier reads: 28x28 grey.

    Undoes ``shaped``: the centre 28 of 32 px (the padding) and the mean of RGB.
    """
    x = x.detach().float().cpu()
    if x.size(1) == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.size(-1) == 32:
        x = x[..., PAD:-PAD, PAD:-PAD]
    if x.shape[1:] != (1, 28, 28):
        raise ValueError(f"cannot judge images of shape {tuple(x.shape[1:])} as MNIST digits")
    return x.contiguous()


def unit(images: np.ndarray) -> Tensor:
    """uint8 pixels to float in [-1, 1] (G's tanh range)."""
    return torch.from_numpy(images).float().div_(127.5).sub_(1.0)


def write_folder(root: Path, digits: Digits, size: int = 32) -> Path:
    """The digits as ``size`` px PNGs in one sub-folder per class: the ``folder`` dataset's layout.

    Written as grey PNGs padded to ``size``; the folder reader converts to RGB (``channels: 3``).
    Files are named by index so the reader's sorted order is stable.
    """
    from PIL import Image

    padded = shaped(digits.images, (1, size, size))[:, 0]
    for k in range(10):
        (root / str(k)).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(padded, digits.labels, strict=True)):
        Image.fromarray(img, mode="L").save(root / str(int(y)) / f"{i:05d}.png")
    return root
