"""Real-data reference statistics: computed once per setup, cached in storage.

What the scores compare against is fixed by the dataset (its spec fields, with the
reference split), the number of images, and the Inception weights. Those go into a key;
the statistics live at ``<storage>/_eval_cache/<dataset>-<split>-<n>-<key>.npz`` (pool3
features, their mean and covariance, and a JSON description), written whole or not at
all, so every later evaluation of any job with the same setup reads them instead of
running Inception over the real images again.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ganops import data as gdata
from ganops import storage
from ganops.evaluate.frechet import gaussian_stats
from ganops.spec.models import DataSpec

CACHE_DIR = "_eval_cache"
# Bump when the cached content or its meaning changes (old files are then never read).
FORMAT = 1
# The reference subset is drawn with a fixed seed: the same setup gives the same images.
SUBSET_SEED = 0


@dataclass(frozen=True)
class ReferenceSetup:
    """Everything that decides the reference statistics."""

    data: DataSpec
    split: str
    num_samples: int
    weights_sha256: str

    @property
    def data_spec(self) -> DataSpec:
        """The data spec that reads the reference split (download never: the job already has the files)."""
        return self.data.model_copy(update={"split": self.split, "download": False})

    def describe(self) -> dict[str, Any]:
        d = self.data
        return {
            "format": FORMAT,
            "dataset": d.dataset,
            "root": d.root,
            "split": self.split,
            "image_size": d.image_size,
            "channels": d.channels,
            "limit": d.limit,
            "num_classes": d.num_classes,
            "num_samples": self.num_samples,
            "inception_sha256": self.weights_sha256,
        }

    @property
    def key(self) -> str:
        canonical = json.dumps(self.describe(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:20]

    @property
    def file_name(self) -> str:
        return f"{self.data.dataset}-{self.split}-{self.num_samples}-{self.key}.npz"


@dataclass
class Reference:
    pool3: np.ndarray
    """float32 [n, 2048] features of the reference images (KID, precision/recall)."""
    mu: np.ndarray
    sigma: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    """The setup plus ``num_images`` (used), ``available`` (in the split), ``key``, ``created``."""
    cached: bool = False
    """True when read from the cache (not computed by this process)."""

    @property
    def num_images(self) -> int:
        return len(self.pool3)


def cache_location(storage_root: str, setup: ReferenceSetup) -> storage.Location:
    return storage.locate(storage.join(storage.resolve(storage_root), CACHE_DIR, setup.file_name))


def subset_indices(available: int, num_samples: int) -> np.ndarray:
    """Which images of the split to use: a seeded random subset (all when there are fewer).

    Random rather than the first N: folder datasets come sorted by class.
    """
    if available <= num_samples:
        return np.arange(available)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(available)[:num_samples])


def reference_images(setup: ReferenceSetup, preloaded: gdata.ArrayDataset | None = None) -> tuple[np.ndarray, int]:
    """uint8 [n, C, H, W] reference images and how many the split holds.

    ``preloaded``: the split already in memory (a training worker's own data, when the
    reference split is the training split).
    """
    if preloaded is None and setup.data_spec.dataset in gdata.STREAMED:
        return _pack_subset(setup.data_spec, setup.num_samples)
    ds = preloaded if preloaded is not None else gdata.load(setup.data_spec)
    idx = subset_indices(len(ds), setup.num_samples)
    return ds.images[idx], len(ds)


def _pack_subset(spec: DataSpec, num_samples: int) -> tuple[np.ndarray, int]:
    """A seeded random subset of a pack, reading only the row groups it falls in: whole
    random row groups rather than random images, or a 10,000-image reference would read
    nearly every row group of a pack of millions."""
    from ganops.data import shards

    assert spec.root is not None
    m = shards.read_manifest(spec.root)
    available = min(m.num_images, spec.limit) if spec.limit is not None else m.num_images
    images = shards.read_sample(spec.root, m, available, num_samples, SUBSET_SEED)
    return images, available


def build(setup: ReferenceSetup, pool3: np.ndarray, available: int) -> Reference:
    mu, sigma = gaussian_stats(pool3)
    meta = {**setup.describe(), "num_images": len(pool3), "available": available, "key": setup.key,
            "created": time.time()}  # fmt: skip
    return Reference(pool3.astype(np.float32), mu, sigma, meta)


def load_cached(loc: storage.Location, setup: ReferenceSetup) -> Reference | None:
    """The cached statistics, or None when there are none (or they do not match the setup)."""
    try:
        raw = storage.read_bytes(loc)
    except (FileNotFoundError, OSError):
        return None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            ref = Reference(f["pool3"], f["mu"], f["sigma"], meta, cached=True)
    except (OSError, ValueError, KeyError):
        return None  # unreadable: recompute and overwrite
    # A file of the same name but another setup (a hash collision, or an edited file) is not used.
    return ref if meta.get("key") == setup.key else None


def save(loc: storage.Location, ref: Reference) -> None:
    buf = io.BytesIO()
    np.savez(buf, pool3=ref.pool3, mu=ref.mu, sigma=ref.sigma, meta=np.array(json.dumps(ref.meta)))
    storage.write_bytes(loc, buf.getvalue())  # a temporary name, then a rename (one PUT on S3)
