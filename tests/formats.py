"""Writers for tiny datasets in the official file formats, for tests that need real files.

Each writer returns exactly what a reader should give back: images as uint8 (N, C, H, W)
and labels as int64 (N,) (None when unlabelled), in the order the reader yields them.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
IDX_PREFIX = {"train": "train", "test": "t10k"}
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def random_labels(n: int, num_classes: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, size=n, dtype=np.int64)


# --- MNIST / Fashion-MNIST ---------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file: magic (0, 0, 0x08 ubyte, ndim), big-endian uint32 dims, C-order payload."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = magic if magic is not None else 0x00000800 | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_idx(
    directory: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True
) -> tuple[Path, Path]:
    """``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]``; images (N, H, W)
    or (N, 1, H, W)."""
    directory.mkdir(parents=True, exist_ok=True)
    images = images.reshape(len(images), *images.shape[-2:])
    p = IDX_PREFIX[split]
    paths = []
    for name, array in ((f"{p}-images-idx3-ubyte", images), (f"{p}-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        path = directory / (f"{name}.gz" if gz else name)
        # mtime=0: byte-identical files for identical input, like a fixture should be.
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        paths.append(path)
    return paths[0], paths[1]


# --- CIFAR-10 ----------------------------------------------------------------------------


def write_cifar10(
    directory: Path, n_per_batch: int, *, tar: bool = False, splits: Sequence[str] = ("train", "test"), seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``cifar-10-batches-py/`` with data_batch_1..5, test_batch and batches.meta, pickled
    with bytes keys like the official (Python 2) files; or, with ``tar``, only
    ``cifar-10-python.tar.gz`` holding them. Returns {split: (images, labels)}."""
    out = directory / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    _pickle(out / "batches.meta", {
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [n.encode() for n in CIFAR_LABEL_NAMES],
        b"num_vis": 3072,
    })  # fmt: skip
    written = {}
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for split in splits:
        all_images, all_labels = [], []
        for j, name in enumerate(batches[split]):
            images = random_images(n_per_batch, (3, 32, 32), seed=seed + 10 * j + (split == "test"))
            labels = random_labels(n_per_batch, seed=seed + 10 * j + 5 + (split == "test"))
            _pickle(out / name, {
                b"batch_label": f"{name} of 5".encode(),
                b"labels": [int(v) for v in labels],
                b"data": images.reshape(n_per_batch, 3072),
                b"filenames": [f"img_{j}_{i}.png".encode() for i in range(n_per_batch)],
            })  # fmt: skip
            all_images.append(images)
            all_labels.append(labels)
        written[split] = (np.concatenate(all_images), np.concatenate(all_labels))
    if tar:
        with tarfile.open(directory / "cifar-10-python.tar.gz", "w:gz") as t:
            t.add(out, arcname=out.name)
        shutil.rmtree(out)
    return written


def _pickle(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are protocol 2


# --- SVHN --------------------------------------------------------------------------------


def write_svhn(directory: Path, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``<split>_32x32.mat``: X as 32 x 32 x 3 x N uint8, y as N x 1 doubles with 10 for the
    digit 0, as in the official files. Returns (images, digits 0-9)."""
    import scipy.io

    directory.mkdir(parents=True, exist_ok=True)
    images = random_images(n, (3, 32, 32), seed=seed)
    digits = np.arange(n, dtype=np.int64) % 10  # every digit, 0 included, when n >= 10
    y = np.where(digits == 0, 10, digits).astype(np.float64).reshape(n, 1)
    scipy.io.savemat(directory / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": y})
    return images, digits


# --- image folders -----------------------------------------------------------------------


def write_image_folder(
    directory: Path,
    classes: Sequence[str],
    n_per_class: int,
    size: int | tuple[int, int],
    *,
    fmt: str = "png",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB images in ``directory/<class>/`` (or directly in ``directory`` when ``classes`` is
    empty). ``size`` is a side or (width, height). Returns (images, labels) in the reader's
    order; for JPEG the pixels are what was encoded, not what decodes."""
    width, height = (size, size) if isinstance(size, int) else size
    images, labels = [], []
    for k, name in enumerate(classes or [""]):
        d = directory / name if name else directory
        d.mkdir(parents=True, exist_ok=True)
        batch = random_images(n_per_class, (height, width, 3), seed=seed + k)
        for i, pixels in enumerate(batch):
            Image.fromarray(pixels, "RGB").save(d / f"{i:04d}.{fmt}")
        images.append(batch.transpose(0, 3, 1, 2))
        labels += [k] * n_per_class
    return np.concatenate(images), (np.asarray(labels, dtype=np.int64) if classes else None)
