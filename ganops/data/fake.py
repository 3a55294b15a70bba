"""Seeded random images, so the real training loop can run in seconds without any files.

The same spec gives the same images on every worker and every run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ganops.data import ArrayDataset, ImageInfo
from ganops.errors import UserError
from ganops.spec.models import FAKE_CHANNELS, FAKE_IMAGE_SIZE, FAKE_MAX_BYTES, FAKE_NUM_IMAGES

if TYPE_CHECKING:
    from ganops.spec.models import DataSpec

# Defaults live with the spec, which bounds the dataset's size without importing numpy.
NUM_IMAGES = FAKE_NUM_IMAGES
IMAGE_SIZE = FAKE_IMAGE_SIZE
CHANNELS = FAKE_CHANNELS
SEED = 0


def probe(spec: DataSpec) -> ImageInfo:
    n = spec.limit if spec.limit is not None else NUM_IMAGES
    size = spec.image_size or IMAGE_SIZE
    k = spec.num_classes
    # The spec validator bounds this too; a DataSpec built with model_construct skips it.
    channels = spec.channels or CHANNELS
    if n * channels * size * size > FAKE_MAX_BYTES:
        raise UserError(
            f"spec.data.limit: the fake dataset would be {n} images of {size}x{size}, over {FAKE_MAX_BYTES >> 30} GiB",
            field="spec.data.limit",
        )
    return ImageInfo((spec.channels or CHANNELS, size, size), k, n, [str(i) for i in range(k)] if k else None)


def load(spec: DataSpec) -> ArrayDataset:
    info = probe(spec)
    # Separate streams for pixels and labels, so that the labels do not change with the
    # image size or channel count.
    pixel_rng, label_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(SEED).spawn(2))
    images = pixel_rng.integers(0, 256, size=(info.num_images, *info.shape), dtype=np.uint8)
    labels = None
    if info.num_classes is not None:
        labels = label_rng.integers(0, info.num_classes, size=info.num_images, dtype=np.int64)
    return ArrayDataset(images, labels, info)
