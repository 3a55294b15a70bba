"""Image utilities shared by training, generation and evaluation: uint8 conversion, grids, PNG and GIF bytes (numpy and Pillow only; no torchvision)."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats (N, C, H, W) → uint8 (N, C, H, W), rounding like torchvision's save_image."""
    return np.clip(images * 127.5 + 127.5 + 0.5, 0, 255).astype(np.uint8)


def grid(images: np.ndarray, ncols: int | None = None, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile uint8 (N, C, H, W) images into one (H', W', C) array, row-major."""
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    out = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        out[y : y + h, x : x + w] = images[i].transpose(1, 2, 0)
    return out


def png_bytes(tile: np.ndarray) -> bytes:
    img = Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def gif_bytes(frames_png: list[bytes], frame_ms: int = 250, hold_last_ms: int = 1500) -> bytes:
    """Animate PNG frames (the per-epoch grids) into a looping GIF; the last frame lingers."""
    frames = [Image.open(io.BytesIO(b)).convert("RGB") for b in frames_png]
    durations = [frame_ms] * len(frames)
    durations[-1] = hold_last_ms
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return buf.getvalue()
