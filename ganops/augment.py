"""Differentiable augmentation of what D sees: DiffAugment's policies (Zhao et al. 2020),
each applied to a sample with probability p, and ADA's controller of p (Karras et al. 2020).

The transforms follow `DiffAugment_pytorch.py` (mit-han-lab/data-efficient-gans):
- `color`: brightness x + (u - 0.5); saturation (x - mean over channels) * 2u + that mean;
  contrast (x - mean over the image) * (u + 0.5) + that mean.
- `translation`: shift rows by an integer in [-H/8, H/8] and columns in [-W/8, W/8], zero fill.
- `cutout`: zero an (H/2) x (W/2) square centred on a random pixel (clipped at the borders).

All random numbers of one call are one [N, UNIFORMS] tensor of U(0, 1) draws (`UNIFORMS`
columns, `COLUMNS` names them), taken from the step's noise stream: a run's augmentations
are reproducible, kept in its checkpoints' noise state, and a test can feed them. Every
transform is differentiable in x, so G learns through it (the G step augments too).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

COLUMNS = ("brightness", "saturation", "contrast", "shift_rows", "shift_cols", "cut_row", "cut_col",
           "apply_color", "apply_translation", "apply_cutout")  # fmt: skip
UNIFORMS = len(COLUMNS)
_COL = {name: i for i, name in enumerate(COLUMNS)}


def _per_sample(u: Tensor, x: Tensor) -> Tensor:
    return u.to(x.dtype).view(-1, 1, 1, 1)


def color(x: Tensor, u: Tensor) -> Tensor:
    x = x + (_per_sample(u[:, _COL["brightness"]], x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_per_sample(u[:, _COL["saturation"]], x) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_sample(u[:, _COL["contrast"]], x) + 0.5) + mean


def _uniform_int(u: Tensor, low: int, count: int) -> Tensor:
    """U(0, 1) -> an integer uniform on [low, low + count): what torch.randint draws."""
    return (u * count).floor().long().clamp(max=count - 1) + low


def translation(x: Tensor, u: Tensor) -> Tensor:
    n, _, h, w = x.shape
    sh, sw = h // 8, w // 8
    dy = _uniform_int(u[:, _COL["shift_rows"]], -sh, 2 * sh + 1)
    dx = _uniform_int(u[:, _COL["shift_cols"]], -sw, 2 * sw + 1)
    rows = torch.arange(h, device=x.device)[None, :] + dy[:, None]  # source row of each output row
    cols = torch.arange(w, device=x.device)[None, :] + dx[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Gather (differentiable in x), then zero what came from outside the image.
    out = x[batch, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]  # [n, h, w, c]
    return out.permute(0, 3, 1, 2) * inside[:, None].to(x.dtype)


def cutout(x: Tensor, u: Tensor) -> Tensor:
    _, _, h, w = x.shape
    ch, cw = h // 2, w // 2
    # DiffAugment's offsets: randint(0, size + (1 - cut % 2)), the square from offset - cut // 2.
    top = _uniform_int(u[:, _COL["cut_row"]], 0, h + 1 - ch % 2) - ch // 2
    left = _uniform_int(u[:, _COL["cut_col"]], 0, w + 1 - cw % 2) - cw // 2
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= top[:, None]) & (r < top[:, None] + ch)
    in_cols = (c >= left[:, None]) & (c < left[:, None] + cw)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


POLICIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "color": color,
    "translation": translation,
    "cutout": cutout,
}


def augment(x: Tensor, u: Tensor, policy: list[str], p: Tensor | float) -> Tensor:
    """The policies in order, each on the samples whose `apply_<policy>` draw is below p."""
    for name in policy:
        out = POLICIES[name](x, u)
        if isinstance(p, float) and p >= 1.0:
            x = out
        else:
            chosen = u[:, _COL[f"apply_{name}"]].to(x.dtype) < p
            x = torch.where(chosen.view(-1, 1, 1, 1), out, x)
    return x


def ada_adjust(p: Tensor, r_t: Tensor, target: float, images: int, kimg: float) -> Tensor:
    """StyleGAN2-ADA's step: p + sign(r_t - target) * images / (kimg * 1000), at least 0;
    `images`: the real images seen since the last adjustment (global batch x interval)."""
    return (p + torch.sign(r_t - target) * (images / (kimg * 1000))).clamp(min=0.0)
