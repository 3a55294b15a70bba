"""Dataset readers: the official files of MNIST, Fashion-MNIST, CIFAR-10 and SVHN, a folder
of images, and a fake dataset, all read into uint8 arrays of shape (N, C, H, W).

``probe`` is the cheap pre-flight check the CLI runs before any worker starts; ``load`` is
the full read each worker does. Both raise ``UserError`` for anything the user can fix.

This package imports no torch: the CLI imports it and must stay fast. The readers
themselves are imported on first use, so ``import ganops.data`` costs numpy and nothing else
(PIL and scipy only load for the datasets that need them).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ganops.errors import DataMissingError, UserError

if TYPE_CHECKING:
    from ganops.spec.models import DataSpec

__all__ = [
    "DATASETS", "STREAMED", "ArrayDataset", "ImageInfo", "Reader", "expand_user", "get", "load", "probe", "to_unit_range",
]  # fmt: skip


@dataclass(frozen=True)
class ImageInfo:
    """What a dataset holds, known before (or without) reading its pixels."""

    shape: tuple[int, int, int]
    """(C, H, W) of every image."""
    num_classes: int | None
    """None for unlabelled data."""
    num_images: int
    """Images that ``load`` returns (after ``spec.limit``)."""
    class_names: list[str] | None


@dataclass
class ArrayDataset:
    """A whole split in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,) or None."""

    images: np.ndarray
    labels: np.ndarray | None
    info: ImageInfo

    def __post_init__(self) -> None:
        # The training loop relies on these invariants; a reader breaking one is a bug, so
        # this is a ValueError with a traceback rather than a UserError.
        n = self.info.num_images
        if self.images.dtype != np.uint8 or self.images.shape != (n, *self.info.shape):
            raise ValueError(f"images {self.images.dtype}{self.images.shape} do not match {self.info}")
        if not self.images.flags.c_contiguous:
            raise ValueError("images must be C-contiguous")
        if (self.labels is None) != (self.info.num_classes is None):
            raise ValueError("labels must be given exactly when num_classes is")
        if self.labels is not None:
            if self.labels.dtype != np.int64 or self.labels.shape != (n,):
                raise ValueError(f"labels {self.labels.dtype}{self.labels.shape} must be int64 ({n},)")
            if n and not 0 <= self.labels.min() <= self.labels.max() < (self.info.num_classes or 0):
                raise ValueError(f"labels outside [0, {self.info.num_classes})")

    def __len__(self) -> int:
        return self.info.num_images


@dataclass(frozen=True)
class Reader:
    """A registered dataset: a module with ``probe(spec)`` and ``load(spec)``.

    The module is imported on first use, which keeps ``import ganops.data`` light and lets
    the reader modules import ``ImageInfo`` from here without an import cycle.
    """

    module: str
    description: str

    def probe(self, spec: DataSpec) -> ImageInfo:
        info: ImageInfo = importlib.import_module(self.module).probe(spec)
        return info

    def load(self, spec: DataSpec) -> ArrayDataset:
        ds: ArrayDataset = importlib.import_module(self.module).load(spec)
        return ds


# Keys must equal ganops.spec.models.DATASETS (a test checks): the spec validates the name
# without importing this package.
DATASETS: dict[str, Reader] = {
    "mnist": Reader("ganops.data.idx", "MNIST digits, LeCun's IDX files (gzipped or raw)"),
    "fashion_mnist": Reader("ganops.data.idx", "Fashion-MNIST, Zalando's IDX files (gzipped or raw)"),
    "cifar10": Reader("ganops.data.cifar", "CIFAR-10 'python version' batches or their tarball"),
    "svhn": Reader("ganops.data.svhn", "SVHN cropped digits, train_32x32.mat / test_32x32.mat"),
    "folder": Reader("ganops.data.folder", "PNG/JPEG files, optionally in one sub-folder per class"),
    "fake": Reader("ganops.data.fake", "seeded random images for tests and benchmarks"),
    "shards": Reader("ganops.data.shards", "a pack made by `ganops data pack`, streamed through Ray Data"),
}

# Datasets read where they are (a pack on S3 is streamed, never copied whole to a worker).
STREAMED = frozenset({"shards"})


def get(name: str) -> Reader:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(
            f"spec.data.dataset: unknown dataset {name[:80]!r}; valid: {', '.join(DATASETS)}", field="spec.data.dataset"
        ) from None


def probe(spec: DataSpec) -> ImageInfo:
    """Check that the dataset is there and readable, reading only headers where possible."""
    reader = get(spec.dataset)
    with _local_copy(spec) as local:
        info = reader.probe(local)
    _check_num_classes(spec, info)
    return info


# Datasets small enough (at most 70,000 28x28 digits, ~50 MB) to read whole before a job
# starts: every byte and gzip CRC, the payload lengths and the label range, not the headers only.
READ_WHOLE = frozenset({"mnist", "fashion_mnist"})


def read_whole(spec: DataSpec) -> ImageInfo | None:
    """The split read whole as the workers will read it (what the dry run and the submit check
    before any worker starts), for local copies of the ``READ_WHOLE`` datasets; None where
    only the headers are checked (other datasets, data on S3)."""
    if spec.dataset not in READ_WHOLE or (spec.root or "").startswith("s3://"):
        return None
    return load(spec).info


def load(spec: DataSpec) -> ArrayDataset:
    """Read the split into memory (the first ``spec.limit`` images when set)."""
    reader = get(spec.dataset)
    with _local_copy(spec) as local:
        ds = reader.load(local)
    _check_num_classes(spec, ds.info)
    return ds


@contextmanager
def _local_copy(spec: DataSpec) -> Iterator[DataSpec]:
    """``spec`` with an ``s3://`` root replaced by this machine's downloaded copy of it.

    The readers' messages then name the S3 location rather than the cache directory.
    """
    if not (spec.root or "").startswith("s3://") or spec.dataset in STREAMED:
        yield spec
        return
    if spec.download:
        raise UserError(
            f"spec.data.download: true fetches the official files into a local root, not into {spec.root}; "
            "upload the files there yourself and set download: false",
            field="spec.data.download",
        )
    from ganops.data.remote import local_root  # boto3 only for S3 roots

    local = local_root(spec.root)
    try:
        yield spec.model_copy(update={"root": local})
    except UserError as e:
        # The message names the cache directory, which means nothing to the user: name the
        # S3 location instead, keeping what the error is about (its field).
        if type(e) not in (UserError, DataMissingError) or local not in str(e):
            raise
        raise type(e)(str(e).replace(local, spec.root.rstrip("/")), field=e.field) from None


def to_unit_range(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [-1, 1], the range of G's tanh output."""
    return images_uint8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _check_num_classes(spec: DataSpec, info: ImageInfo) -> None:
    # num_classes configures the fake dataset; for real data it can only disagree.
    if spec.dataset != "fake" and spec.num_classes is not None and spec.num_classes != info.num_classes:
        has = f"{info.num_classes} classes" if info.num_classes else "no labels"
        raise UserError(
            f"spec.data.num_classes: {spec.num_classes}, but the {spec.dataset} data has {has} "
            "(num_classes is only for the fake dataset; leave it unset)",
            field="spec.data.num_classes",
        )


# --- helpers shared by the readers -------------------------------------------------------


ROOT_FIELD = "spec.data.root"


def root_dir(spec: DataSpec, *, create: bool = False) -> Path:
    """``spec.root`` as a directory that exists (created when ``create``, for downloads)."""
    if not spec.root:
        raise UserError(
            f"spec.data.root: required for dataset '{spec.dataset}' (the directory holding its files)",
            field=ROOT_FIELD,
        )
    root = expand_user(spec.root, ROOT_FIELD)
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"spec.data.root: cannot create {root} ({e.strerror or e})", field=ROOT_FIELD) from None
    if not root.exists():
        raise DataMissingError(f"spec.data.root: {root} does not exist", field=ROOT_FIELD)
    if not root.is_dir():
        raise UserError(f"spec.data.root: {root} is not a directory", field=ROOT_FIELD)
    return root


def expand_user(path: str, field: str) -> Path:
    """``path`` with ``~`` / ``~user`` expanded; the path is checked as a string first.

    ``Path.expanduser`` raises RuntimeError for an unknown user and ``os.stat`` ValueError
    for a NUL byte: both become a ``UserError`` naming ``field``.
    """
    shown = path if len(path) <= 80 else path[:77] + "..."
    if "\0" in path:
        raise UserError(f"{field}: {shown!r} contains a NUL byte", field=field)
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = path[1:].split("/", 1)[0]
        raise UserError(f"{field}: {shown}: no user {user[:40]!r} to expand '~{user[:40]}' for", field=field) from None


def limited(spec: DataSpec, n: int) -> int:
    """How many of ``n`` available images to use under ``spec.limit``."""
    return min(n, spec.limit) if spec.limit is not None else n
