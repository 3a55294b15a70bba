"""What a generation job may hold in memory at once, checked against the model before any
image is made.

Memory follows what one process holds at a time, never --num: a shard's images (and its
encoded copies), a batch of G's (and D's) rows, or, for --interpolate, every walk at once
(the grid and the GIF are single images made in memory). --best-of streams its candidates a
batch at a time and --num is planned lazily, so neither is bounded here; the spec caps --num
and --interpolate's steps whatever the model (``ganops.spec.generation``). What cannot fit
the budget below is refused naming the flag, the limit and the largest value that fits.
"""

from __future__ import annotations

import math

from ganops.errors import UserError
from ganops.generate.options import ModelInfo
from ganops.spec.generation import GANGenerationSpec

MEMORY_BUDGET = 4 << 30
"""Bytes one process (the driver, or each Ray worker) may hold for a job's data."""

# A shard's images are held as uint8 three times over at worst: the array, the .npz copy
# laid out [n, H, W, C], and the chunks pickled to the PNG pool.
_SHARD_COPIES = 3
# A batch's G output is float32, and it is copied to the CPU and to numpy before uint8.
_BATCH_COPIES = 2
# An interpolation holds its images, the grid, the GIF's frames and the GIF being encoded.
_WALK_COPIES = 4


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _shape(info: ModelInfo) -> str:
    return "×".join(map(str, info.image_shape))


def check(opts: GANGenerationSpec, info: ModelInfo, budget: int = MEMORY_BUDGET) -> None:
    """A UserError naming the flag when what ``opts`` asks of this model cannot fit ``budget``."""
    pixels = math.prod(info.image_shape)  # bytes of one uint8 image
    z_bytes = 4 * (info.latent_dim + 1)
    per_image = _SHARD_COPIES * pixels + z_bytes
    per_row = _BATCH_COPIES * 4 * pixels + z_bytes
    limit = f"the {_gib(budget)} a process may hold (ganops.generate.limits.MEMORY_BUDGET)"
    if opts.interpolate is not None:
        tiles = opts.count * opts.interpolate
        per_tile = _WALK_COPIES * pixels + 12 * info.latent_dim  # + z, and float64 during slerp
        if tiles * per_tile > budget:
            most = max(1, budget // (per_tile * opts.interpolate))
            raise UserError(
                f"--interpolate: {opts.count:,} walks × {opts.interpolate:,} steps of {_shape(info)} images are made "
                f"in memory at once (~{_gib(tiles * per_tile)}), beyond {limit}; at most {most:,} walks of "
                f"{opts.interpolate:,} steps (--num) for this model",
                field="--interpolate",
            )
        return
    shard = min(opts.shard_size, opts.count)
    if shard * per_image > budget:
        raise UserError(
            f"--shard-size: {shard:,} images of {_shape(info)} in one shard hold ~{_gib(shard * per_image)} at once, "
            f"beyond {limit}; at most {budget // per_image:,} for this model",
            field="--shard-size",
        )
    if opts.batch_size * per_row > budget:
        raise UserError(
            f"--batch-size: {opts.batch_size:,} rows of {_shape(info)} hold ~{_gib(opts.batch_size * per_row)} at "
            f"once (and G's activations more), beyond {limit}; at most {budget // per_row:,} for this model",
            field="--batch-size",
        )
