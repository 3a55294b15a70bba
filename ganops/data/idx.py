"""MNIST and Fashion-MNIST in LeCun's IDX format, gzipped or raw.

An IDX file is a 4-byte magic (0, 0, type 0x08 = ubyte, number of dims), one big-endian
uint32 per dim, then the payload in C order. Files live in root itself or in torchvision's
``MNIST/raw/`` / ``FashionMNIST/raw/`` below it.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from ganops.data import ArrayDataset, ImageInfo, limited
from ganops.data.download import Remote, obtain
from ganops.errors import UserError

if TYPE_CHECKING:
    from ganops.spec.models import DataSpec

IMAGES_MAGIC = 0x00000803  # ubyte, 3 dims: N, rows, cols
LABELS_MAGIC = 0x00000801  # ubyte, 1 dim: N
NUM_CLASSES = 10
_PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class Flavour:
    torchvision_dir: str
    class_names: list[str]
    base_urls: tuple[str, ...]
    md5: dict[str, str]


FLAVOURS: dict[str, Flavour] = {
    "mnist": Flavour(
        "MNIST",
        [str(d) for d in range(10)],
        # yann.lecun.com is the original host but often refuses robots; torchvision's S3 mirror first.
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": Flavour(
        "FashionMNIST",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}


def file_names(split: str) -> tuple[str, str]:
    """The (images, labels) file names of a split, without ``.gz``."""
    p = _PREFIX[split]
    return f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte"


def probe(spec: DataSpec) -> ImageInfo:
    flavour = FLAVOURS[spec.dataset]
    images_path, labels_path = _files(spec)
    n, rows, cols = _read_header(images_path, IMAGES_MAGIC, 3)
    (n_labels,) = _read_header(labels_path, LABELS_MAGIC, 1)
    _check_counts(images_path, n, labels_path, n_labels)
    return ImageInfo((1, rows, cols), NUM_CLASSES, limited(spec, n), flavour.class_names)


def load(spec: DataSpec) -> ArrayDataset:
    flavour = FLAVOURS[spec.dataset]
    images_path, labels_path = _files(spec)
    (n, rows, cols), pixels = _read(images_path, IMAGES_MAGIC, 3)
    (n_labels,), labels = _read(labels_path, LABELS_MAGIC, 1)
    _check_counts(images_path, n, labels_path, n_labels)
    if n and labels.max() >= NUM_CLASSES:
        raise UserError(f"{labels_path}: label {labels.max()} is not a class (expected 0-{NUM_CLASSES - 1})")
    k = limited(spec, n)
    info = ImageInfo((1, rows, cols), NUM_CLASSES, k, flavour.class_names)
    # Copy only the kept images: the result must be writable (torch.from_numpy warns on
    # read-only buffers) and need not pin the whole file in memory.
    images = pixels[: k * rows * cols].reshape(k, 1, rows, cols).copy()
    return ArrayDataset(images, labels[:k].astype(np.int64), info)


def _files(spec: DataSpec) -> tuple[Path, Path]:
    flavour = FLAVOURS[spec.dataset]

    def find(root: Path, split: str) -> list[Path] | None:
        for d in (root, root / flavour.torchvision_dir / "raw"):
            found = [_pick(d, name) for name in file_names(split)]
            if all(found):
                return [p for p in found if p is not None]
        return None

    def remotes(split: str) -> list[Remote]:
        names = [f"{n}.gz" for n in file_names(split)]
        return [Remote(n, tuple(base + n for base in flavour.base_urls), flavour.md5[n]) for n in names]

    images, labels = obtain(
        spec,
        find,
        expected=lambda split: [f"{n}.gz" for n in file_names(split)],
        remotes=remotes,
        layout_note=f" (or without .gz; {flavour.torchvision_dir}/raw/ below it also works)",
    )
    return images, labels


def _pick(d: Path, name: str) -> Path | None:
    # Prefer the raw file where both exist (torchvision keeps both): nothing to decompress.
    for path in (d / name, d / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _read_header(path: Path, magic: int, ndim: int) -> tuple[int, ...]:
    """The dims from the header alone: gzip streams, so this decompresses a few bytes only."""
    try:
        with _open(path) as f:
            head = f.read(4 + 4 * ndim)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: {_why(e)}") from None
    dims = _parse_header(path, head, magic, ndim)
    if path.suffix != ".gz":  # a raw file's payload length is a stat away
        _check_payload(path, dims, path.stat().st_size - len(head))
    return dims


def _read(path: Path, magic: int, ndim: int) -> tuple[tuple[int, ...], np.ndarray]:
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: {_why(e)}") from None
    header = 4 + 4 * ndim
    dims = _parse_header(path, data[:header], magic, ndim)
    _check_payload(path, dims, len(data) - header)
    return dims, np.frombuffer(data, dtype=np.uint8, offset=header)


def _parse_header(path: Path, head: bytes, magic: int, ndim: int) -> tuple[int, ...]:
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(head) < 4:
        raise UserError(f"{path}: empty or truncated ({len(head)} bytes), not an IDX {kind} file")
    got = int.from_bytes(head[:4], "big")
    if got != magic:
        raise UserError(f"{path}: not an IDX {kind} file (magic 0x{got:08x}, expected 0x{magic:08x})")
    if len(head) < 4 + 4 * ndim:
        raise UserError(f"{path}: truncated inside the IDX header ({len(head)} of {4 + 4 * ndim} bytes)")
    dims = struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])
    if ndim == 3 and (dims[1] == 0 or dims[2] == 0):
        raise UserError(f"{path}: header says images are {dims[1]}x{dims[2]} pixels")
    return dims


def _check_payload(path: Path, dims: tuple[int, ...], payload: int) -> None:
    want = math.prod(dims)
    if payload != want:
        shape = " x ".join(map(str, dims))
        what = "truncated" if payload < want else "has trailing data"
        raise UserError(f"{path}: {what}: the header says {shape} = {want} bytes of data, the file has {payload}")


def _check_counts(images: Path, n: int, labels: Path, n_labels: int) -> None:
    if n != n_labels:
        raise UserError(f"{images}: {n} images but {labels.name} has {n_labels} labels; the two files must match")


def _why(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return f"truncated gzip file ({e})"
    if isinstance(e, (gzip.BadGzipFile, zlib.error)):
        return f"corrupt gzip file ({e})"
    return f"cannot read ({e})"
