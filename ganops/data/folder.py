"""A folder of PNG/JPEG images: directly in root (unlabelled) or in one sub-folder per class
(labelled; classes sorted by folder name). A root holding only ``train/`` and ``test/``
sub-folders is split by them.

Every image is centre-cropped to a square, resized (LANCZOS) to ``spec.image_size``
(default: the first image's short side) and converted to ``spec.channels`` (default 3).

``load`` reads the whole split into memory; ``iter_images`` gives the same images a chunk
at a time (``ganops data pack``: a folder of millions of JPEGs in bounded memory).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Generator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ganops.data import ArrayDataset, ImageInfo, limited, root_dir
from ganops.errors import UserError

if TYPE_CHECKING:
    from ganops.spec.models import DataSpec

SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_CHANNELS = 3
_SPLITS = {"train", "test"}
# Errors Pillow raises for files that are not (whole) images; SyntaxError comes from some
# broken PNG chunks, DecompressionBombError from absurd dimensions.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Listing:
    """The images of a split, in load order, with their class index when labelled."""

    directory: Path
    files: list[Path]
    labels: list[int] | None
    classes: list[str] | None


def probe(spec: DataSpec) -> ImageInfo:
    listing = list_images(spec)
    return _info(spec, listing, _size(spec, listing))


def load(spec: DataSpec) -> ArrayDataset:
    listing = list_images(spec)
    size = _size(spec, listing)
    info = _info(spec, listing, size)
    n = info.num_images
    mode = "L" if info.shape[0] == 1 else "RGB"
    images = np.empty((n, *info.shape), dtype=np.uint8)

    def read_into(i: int) -> None:
        images[i] = read_image(listing.files[i], mode, size)

    # Pillow releases the GIL while decoding, so threads give a near-linear speed-up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(read_into, range(n)):
            pass
    labels = np.asarray(listing.labels[:n], dtype=np.int64) if listing.labels is not None else None
    return ArrayDataset(images, labels, info)


def describe(spec: DataSpec, listing: Listing) -> ImageInfo:
    """What ``load`` would return for ``listing`` (reads the first image's header at most)."""
    return _info(spec, listing, _size(spec, listing))


def iter_images(
    spec: DataSpec,
    listing: Listing | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    chunk: int = 64,
    workers: int | None = None,
    pool: str = "threads",
) -> Generator[tuple[np.ndarray, np.ndarray | None], None, None]:
    """Images ``start``..``stop`` of what ``load`` returns, pixel for pixel, in order, as
    chunks of (uint8 (k, C, H, W), int64 labels (k,) or None).

    Decoded by ``workers`` (default: one per CPU) threads or processes (``pool``), at most
    two chunks per worker ahead of the consumer: memory stays a few chunks, whatever the
    folder holds. Threads by default: Pillow releases the GIL while it decodes and resizes,
    and on 2 CPUs threads decoded 1.2x faster than processes (bench/pack_throughput.py
    --pools), with no pool to start and no ``if __name__ == "__main__"`` needed in a
    caller's script. Processes may scale further on many cores, where the Python share of
    each image (opening, cropping, copying) would hold the GIL.
    """
    listing = listing if listing is not None else list_images(spec)
    info = describe(spec, listing)
    size = info.shape[1]
    mode = "L" if info.shape[0] == 1 else "RGB"
    stop = info.num_images if stop is None else min(stop, info.num_images)
    workers = workers or os.cpu_count() or 1
    bounds = [(a, min(a + chunk, stop)) for a in range(start, stop, chunk)]
    labels = np.asarray(listing.labels, dtype=np.int64) if listing.labels is not None else None
    with _executor(pool, workers) as ex:
        ahead: deque[tuple[int, int, Future[np.ndarray]]] = deque()
        todo = iter(bounds)
        try:
            while True:
                while len(ahead) < 2 * workers and (b := next(todo, None)) is not None:
                    files = [str(f) for f in listing.files[b[0] : b[1]]]
                    ahead.append((*b, ex.submit(read_images, files, mode, size)))
                if not ahead:
                    return
                a, b, fut = ahead.popleft()
                yield fut.result(), (labels[a:b] if labels is not None else None)
        finally:
            for *_, fut in ahead:
                fut.cancel()


def read_images(files: list[str], mode: str, size: int) -> np.ndarray:
    """``read_image`` of each file, stacked: (k, C, size, size) uint8 (one task of ``iter_images``)."""
    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), channels, size, size), dtype=np.uint8)
    for i, f in enumerate(files):
        out[i] = read_image(Path(f), mode, size)
    return out


def _executor(pool: str, workers: int) -> Executor:
    if pool == "threads":
        return ThreadPoolExecutor(max_workers=workers)
    if pool != "processes":
        raise ValueError(f"pool must be 'processes' or 'threads', not {pool!r}")
    # forkserver, not fork: the caller may hold threads (pyarrow's S3 client, a writer) and
    # a forked child would inherit their locks mid-operation.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))


def list_images(spec: DataSpec) -> Listing:
    root = root_dir(spec)
    d = _split_dir(root, spec.split)
    entries = sorted(p for p in d.iterdir() if not p.name.startswith("."))
    top = [p for p in entries if _is_image(p)]
    per_class = [(c.name, _images_below(c)) for c in entries if c.is_dir()]
    per_class = [(name, files) for name, files in per_class if files]  # ignore empty folders
    if per_class and top:
        raise UserError(
            f"{d}: holds both images ({top[0].name}, ...) and class folders ({per_class[0][0]}/, ...); "
            "move the loose images into a class folder or elsewhere"
        )
    if per_class:
        files = [f for _, fs in per_class for f in fs]
        labels = [i for i, (_, fs) in enumerate(per_class) for _ in fs]
        return Listing(d, files, labels, [name for name, _ in per_class])
    if top:
        return Listing(d, top, None, None)
    raise UserError(f"{d}: no {'/'.join(s[1:].upper() for s in SUFFIXES)} images here or in its sub-folders")


def read_image(path: Path, mode: str, size: int) -> np.ndarray:
    """One image as (C, size, size) uint8: centre square crop, LANCZOS resize, mode."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            box = (left, top, left + s, top + s)
            # Crop first: resize(box=...) would let the LANCZOS kernel reach past the box
            # and bleed the cropped-off borders into the edge pixels.
            im = im.convert(mode).crop(box)
            if s != size:
                im = im.resize((size, size), Image.Resampling.LANCZOS)
            pixels = np.asarray(im, dtype=np.uint8)
    except _IMAGE_ERRORS as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _split_dir(root: Path, split: str) -> Path:
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not subdirs or not subdirs <= _SPLITS:
        return root  # not split: the whole folder, whatever spec.split says
    if split in subdirs:
        return root / split
    (other,) = subdirs
    raise UserError(
        f"spec.data.root: {root} has a {other}/ folder but no {split}/: set spec.data.split={other}",
        field="spec.data.split",
    )


def _images_below(d: Path) -> list[Path]:
    # Hidden files are skipped: macOS's "._name.png" resource forks are not images.
    return sorted(
        p for p in d.rglob("*") if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(d).parts)
    )


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in SUFFIXES and p.is_file() and not p.name.startswith(".")


def _size(spec: DataSpec, listing: Listing) -> int:
    if spec.image_size is not None:
        return spec.image_size
    first = listing.files[0]
    try:
        with Image.open(first) as im:  # lazy: reads the header only
            return min(im.size)
    except _IMAGE_ERRORS as e:
        raise UserError(f"{first}: not a readable image ({e})") from None


def _info(spec: DataSpec, listing: Listing, size: int) -> ImageInfo:
    channels = spec.channels or DEFAULT_CHANNELS
    num_classes = len(listing.classes) if listing.classes is not None else None
    return ImageInfo((channels, size, size), num_classes, limited(spec, len(listing.files)), listing.classes)
