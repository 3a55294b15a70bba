"""CIFAR-10, "python version": pickled batches in ``cifar-10-batches-py/`` (or in root
itself), or the official ``cifar-10-python.tar.gz`` read in place without extracting.

Each batch is a pickled dict with bytes keys: ``b"data"`` (N x 3072 uint8: the R, G, B
planes of a 32x32 image, row-major) and ``b"labels"`` (N ints). ``batches.meta`` holds
``b"label_names"`` and ``b"num_cases_per_batch"``.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ganops.data import ArrayDataset, ImageInfo, limited
from ganops.data.download import Remote, obtain
from ganops.errors import UserError

if TYPE_CHECKING:
    from ganops.spec.models import DataSpec

DIR = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
META = "batches.meta"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
NUM_CLASSES = 10
SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32


def probe(spec: DataSpec) -> ImageInfo:
    files = _files(spec)
    batches = BATCHES[spec.split]
    if _is_tarball(files):
        # A gzip stream has no index: listing the members means one pass over the archive
        # (about a second for the real one), still far cheaper than unpickling it.
        members, meta = _scan_tar(files[0], wanted={META}, stop_early=False)
        missing = [b for b in batches if b not in members]
        if missing:
            raise UserError(f"{files[0]}: has no member {DIR}/{missing[0]}; is the download complete?")
        meta_source = f"{files[0]} ({DIR}/{META})"
    else:
        meta = {META: _unpickle_file(files[-1])}
        meta_source = str(files[-1])
    names, per_batch = _parse_meta(meta_source, meta[META])
    return ImageInfo(SHAPE, NUM_CLASSES, limited(spec, per_batch * len(batches)), names)


def load(spec: DataSpec) -> ArrayDataset:
    files = _files(spec)
    batches = BATCHES[spec.split]
    remaining = spec.limit
    if _is_tarball(files):
        # Members are stored out of order (data_batch_4 first), so a limit cannot stop the
        # pass early; reading every batch of the split is one decompression either way.
        _members, objs = _scan_tar(files[0], wanted={META, *batches}, stop_early=True)
        missing = [b for b in [META, *batches] if b not in objs]
        if missing:
            raise UserError(f"{files[0]}: has no member {DIR}/{missing[0]}; is the download complete?")
        sources = {name: f"{files[0]} ({DIR}/{name})" for name in objs}
        loaded: Iterator[tuple[str, Any]] = ((sources[b], objs[b]) for b in batches)
        meta_source, meta = sources[META], objs[META]
    else:
        paths = files[:-1]
        loaded = ((str(p), _unpickle_file(p)) for p in paths)  # lazy: stops at the limit
        meta_source, meta = str(files[-1]), _unpickle_file(files[-1])
    names, _ = _parse_meta(meta_source, meta)

    images, labels = [], []
    for source, obj in loaded:
        if remaining is not None and remaining <= 0:
            break
        x, y = _parse_batch(source, obj)
        if remaining is not None:
            x, y = x[:remaining], y[:remaining]
            remaining -= len(x)
        images.append(x)
        labels.append(y)
    x = np.ascontiguousarray(np.concatenate(images))
    y = np.concatenate(labels)
    return ArrayDataset(x, y, ImageInfo(SHAPE, NUM_CLASSES, len(x), names))


def _files(spec: DataSpec) -> list[Path]:
    """The split's batch files then batches.meta, or ``[tarball]``."""

    def find(root: Path, split: str) -> list[Path] | None:
        # An extracted directory wins over the tarball: no decompression.
        for d in (root / DIR, root):
            paths = [d / name for name in [*BATCHES[split], META]]
            if all(p.is_file() for p in paths):
                return paths
        tarball = root / TARBALL
        return [tarball] if tarball.is_file() else None

    return obtain(
        spec,
        find,
        expected=lambda split: [*BATCHES[split], META],
        remotes=lambda _split: [Remote(TARBALL, (URL,), MD5)],
        layout_note=f" (in {DIR}/ or directly in root), or {TARBALL}",
    )


def _is_tarball(files: list[Path]) -> bool:
    return len(files) == 1 and files[0].name.endswith(".tar.gz")


def _scan_tar(path: Path, wanted: set[str], stop_early: bool) -> tuple[set[str], dict[str, Any]]:
    """One streaming pass over the archive: member base names seen, and the wanted ones unpickled."""
    seen: set[str] = set()
    objs: dict[str, Any] = {}
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                seen.add(name)
                if name in wanted and member.isfile() and name not in objs:
                    f = tar.extractfile(member)
                    if f is None:
                        continue
                    objs[name] = _unpickle(f"{path} ({member.name})", f)
                    if stop_early and len(objs) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: not a readable tar.gz archive ({e or type(e).__name__})") from None
    return seen, objs


def _unpickle_file(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return _unpickle(str(path), f)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


class _Unpickler(pickle.Unpickler):
    """``pickle.load`` would run whatever code a tampered batch names; the official files
    (and numpy's own pickles) only reference numpy's array reconstruction."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(source: str, f: IO[bytes]) -> Any:
    try:
        # encoding="bytes": the batches were pickled by Python 2, whose str keys become bytes.
        return _Unpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - garbage input can fail inside pickle in many ways
        raise UserError(f"{source}: not a CIFAR-10 python pickle ({type(e).__name__}: {e})") from None


def _parse_meta(source: str, meta: Any) -> tuple[list[str], int]:
    if not isinstance(meta, dict) or not isinstance(meta.get(b"label_names"), list):
        raise UserError(f"{source}: not a CIFAR-10 batches.meta (expected a dict with b'label_names')")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    per_batch = meta.get(b"num_cases_per_batch")
    if len(names) != NUM_CLASSES or not isinstance(per_batch, int) or per_batch <= 0:
        raise UserError(
            f"{source}: expected {NUM_CLASSES} label_names and a positive num_cases_per_batch, "
            f"got {len(names)} names and {per_batch!r}"
        )
    return names, per_batch


def _parse_batch(source: str, batch: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserError(f"{source}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{source}: b'data' must be uint8 of shape (N, {_PIXELS}), got {got}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source}: b'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise UserError(f"{source}: labels must be in 0-{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    return data.reshape(len(data), *SHAPE), labels.astype(np.int64)
