"""z (and class labels) for every image index, reproducible from the seed whatever the sharding.

Image ``i`` draws from its own generator, ``PCG64(SeedSequence(seed, spawn_key=(i,)))``: its
vector, the entries redrawn for --truncation and its --best-of candidates are a function of
``(seed, i)`` (and the options) only, never of --num, --shard-size, the worker or the order
in which shards are made. A generator costs ~15 µs to set up, nothing next to G's forward
pass. numpy only: the Ray driver and the CLI can plan and check without importing torch.
Latents are made a shard at a time, so memory follows --shard-size, not --num, and
--best-of candidates a batch at a time (``CandidateStream``), so it does not follow K either.

Layout of a shard's latents with best-of-K: candidate ``j`` belongs to image
``start + j // K`` (image-major), and carries that image's class. Candidate ``c`` of image
``i`` is the same for every K > c; candidate 0 is the vector best-of-1 uses.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from ganops import storage
from ganops.errors import UserError
from ganops.generate.options import ModelInfo
from ganops.model_input import split_class_np
from ganops.spec.generation import GANGenerationSpec

# Rejection sampling for --truncation draws at most this many values per pass (16 MiB of
# float32): enough that any sensible threshold finishes in one or two passes, bounded so a
# tiny one costs time rather than memory.
_MAX_DRAW = 1 << 22

ZFile = tuple[np.ndarray, np.ndarray | None]
"""A --z file's arrays as stored: (z, labels or None), from ``read_z_file``."""


class ShardPlan(Sequence[tuple[int, int]]):
    """[start, stop) of each shard, covering 0..num exactly once; the last may be short.

    Computed on demand (shard i is ``i * shard_size`` onwards), never listed: the plan of a
    100-million-image job in shards of one costs what a plan of ten does.
    """

    def __init__(self, num: int, shard_size: int) -> None:
        if num < 0 or shard_size < 1:
            raise ValueError(f"shard_ranges: need num >= 0 and shard_size >= 1 (got {num}, {shard_size})")
        self.num, self.shard_size = num, shard_size

    def __len__(self) -> int:
        return -(-self.num // self.shard_size)

    @overload
    def __getitem__(self, i: int) -> tuple[int, int]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, int]]: ...
    def __getitem__(self, i: int | slice) -> tuple[int, int] | list[tuple[int, int]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"shard {i} of {n}")
        start = i * self.shard_size
        return start, min(start + self.shard_size, self.num)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self.num, self.shard_size):
            yield start, min(start + self.shard_size, self.num)


def shard_ranges(num: int, shard_size: int) -> ShardPlan:
    """[start, stop) of each shard (see ``ShardPlan``)."""
    return ShardPlan(num, shard_size)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: a function of (seed, index) only."""
    if seed < 0:  # the spec refuses it (Seed); SeedSequence would too, less clearly
        raise ValueError(f"image_rng: seed must be >= 0 (got {seed})")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


def image_latents(seed: int, index: int, k: int, latent_dim: int, truncation: float | None) -> np.ndarray:
    """float32 [k, latent_dim]: the k candidate vectors of image ``index``, drawn in turn
    from its own generator (each one finished, truncation included, before the next)."""
    rng = image_rng(seed, index)
    if truncation is None:
        return rng.standard_normal((k, latent_dim), dtype=np.float32)  # row by row, like the loop below
    return np.concatenate([sample_z(rng, 1, latent_dim, truncation) for _ in range(k)])


def sample_z(rng: np.random.Generator, n: int, latent_dim: int, truncation: float | None) -> np.ndarray:
    """float32 [n, latent_dim] standard normal; with ``truncation`` t, every |z| <= t.

    Entries beyond t are redrawn from the same generator (not clipped), so the values keep
    the shape of a normal distribution cut at ±t.
    """
    z = rng.standard_normal((n, latent_dim), dtype=np.float32)
    if truncation is None:
        return z
    t = float(truncation)
    if not (t > 0 and math.isfinite(t)):  # the spec refuses it; here it would never finish
        raise ValueError(f"sample_z: truncation must be > 0 and finite (got {truncation})")
    flat = z.reshape(-1)
    bad = np.flatnonzero(np.abs(flat) > t)
    # P(|N(0,1)| <= t): draw enough per pass to refill every rejected entry at once.
    p_keep = max(math.erf(t / math.sqrt(2.0)), 1e-12)
    while bad.size:
        want = min(_MAX_DRAW, math.ceil(bad.size / p_keep * 1.2) + 16)
        draw = rng.standard_normal(want, dtype=np.float32)
        fill = draw[np.abs(draw) <= t][: bad.size]
        flat[bad[: fill.size]] = fill
        bad = bad[fill.size :]
    return z


def image_labels(opts: GANGenerationSpec, info: ModelInfo, start: int, stop: int) -> np.ndarray | None:
    """int64 class of images start..stop-1: --class, else index % num_classes (balanced)."""
    if not info.num_classes:
        return None
    if opts.class_index is not None:
        return np.full(stop - start, opts.class_index, dtype=np.int64)
    return np.arange(start, stop, dtype=np.int64) % info.num_classes


class CandidateStream:
    """The best-of candidates of images start..stop-1 (image-major, as ``shard_latents`` lays
    them out), handed out a few rows at a time: memory follows the rows taken, not
    (stop-start) × best_of. Each image's generator carries on from one call to the next, so
    the rows are exactly those of ``shard_latents``.
    """

    def __init__(self, opts: GANGenerationSpec, info: ModelInfo, start: int, stop: int) -> None:
        self.seed, self.k, self.dim, self.truncation = opts.seed, opts.best_of, info.latent_dim, opts.truncation
        self.start, self.stop = start, stop
        self.num_classes, self.class_index = info.num_classes, opts.class_index
        self._image, self._drawn = start, 0  # the next candidate: `_drawn` of image `_image`
        self._rng: np.random.Generator | None = None

    def take(self, m: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The next ``m`` candidates: z float32 [m, latent_dim], labels int64 [m] (or None)."""
        z = np.empty((m, self.dim), dtype=np.float32)
        images = np.empty(m, dtype=np.int64)
        row = 0
        while row < m:
            if self._image >= self.stop:
                raise ValueError(f"candidates of images {self.start}..{self.stop} are exhausted")
            if self._rng is None:
                self._rng = image_rng(self.seed, self._image)
            n = min(self.k - self._drawn, m - row)
            if self.truncation is None:
                # One draw of n rows continues the stream exactly as n draws of one row.
                z[row : row + n] = self._rng.standard_normal((n, self.dim), dtype=np.float32)
            else:
                for r in range(row, row + n):
                    z[r] = sample_z(self._rng, 1, self.dim, self.truncation)[0]
            images[row : row + n] = self._image
            row, self._drawn = row + n, self._drawn + n
            if self._drawn == self.k:
                self._image, self._drawn, self._rng = self._image + 1, 0, None
        if not self.num_classes:
            return z, None
        if self.class_index is not None:  # every candidate carries its image's class (image_labels)
            return z, np.full(m, self.class_index, dtype=np.int64)
        return z, images % self.num_classes


def shard_latents(
    opts: GANGenerationSpec,
    info: ModelInfo,
    shard: int,
    start: int,
    stop: int,
    z_all: np.ndarray | None = None,
    labels_all: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """z float32 [(stop-start) * best_of, latent_dim] and int64 labels (None: unconditional).

    With ``z_all`` (from --z) the shard's rows of it are used as they are (and the rows of
    ``labels_all`` when given, which take precedence over --class).
    """
    n = stop - start
    if n < 0:
        raise ValueError(f"shard {shard}: stop {stop} < start {start}")
    k = opts.best_of  # >= 1, and 1 with z_all: GANGenerationSpec's rules
    if z_all is not None:
        if stop > len(z_all):
            raise ValueError(f"shard {shard}: images {start}..{stop} but --z holds {len(z_all)} vectors")
        z = np.ascontiguousarray(z_all[start:stop], dtype=np.float32)
        if info.num_classes and labels_all is not None:
            return z, np.asarray(labels_all[start:stop], dtype=np.int64)
        return z, image_labels(opts, info, start, stop)
    z = np.empty((n * k, info.latent_dim), dtype=np.float32)
    for j, index in enumerate(range(start, stop)):
        z[j * k : (j + 1) * k] = image_latents(opts.seed, index, k, info.latent_dim, opts.truncation)
    labels = image_labels(opts, info, start, stop)
    if labels is not None and k > 1:
        labels = np.repeat(labels, k)
    return z, labels


def read_z_file(path: str) -> ZFile:
    """The arrays of a --z file (local or s3://), checked to be a non-empty 2-D array of
    numbers (z as stored, labels unchecked): what can be said before the model is known."""
    if not path or "\0" in path:
        raise UserError(f"--z: {path[:80]!r} is not a file name", field="--z")
    loc = storage.locate(path)
    if not storage.exists(loc):
        raise UserError(f"--z: no such file {path}", field="--z")
    labels: np.ndarray | None = None
    try:
        data = storage.read_bytes(loc)
        _check_npy_header(data, path)
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if "z" not in loaded.files:
                    names = ", ".join(loaded.files)[:200] or "none"
                    raise UserError(f"--z: {path} has no array named 'z' (it has: {names})", field="--z")
                z = loaded["z"]
                labels = loaded["labels"] if "labels" in loaded.files else None
        else:
            z = loaded
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"--z: cannot read {path} as .npy or .npz ({str(e)[:200]})", field="--z") from None
    except MemoryError:  # an .npz member whose header claims more than this machine has
        raise UserError(f"--z: {path} claims an array larger than this machine's memory", field="--z") from None
    if z.dtype.kind not in "fiu":
        raise UserError(f"--z: {path} holds {z.dtype} values; expected floats", field="--z")
    if z.ndim != 2:
        # A 0-D array has no len(): say what it is rather than fail counting it.
        raise UserError(f"--z: {path} is {z.ndim}-D with shape {z.shape}; expected [N, latent_dim]", field="--z")
    if len(z) == 0:
        raise UserError(f"--z: {path} holds no vectors", field="--z")
    return z, labels


def _check_npy_header(data: bytes, path: str) -> None:
    """An .npy file's header against its size: one claiming more than the file holds (numpy
    would allocate it first: a MemoryError for a header that asks for terabytes) is refused."""
    if not data.startswith(b"\x93NUMPY"):
        return  # an .npz (a zip), or not numpy at all: np.load says which
    f = io.BytesIO(data)
    major, _minor = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _order, dtype = read(f)
    need = math.prod(shape) * dtype.itemsize
    held = len(data) - f.tell()
    if need > held:
        raise UserError(
            f"--z: {path} claims a {dtype} array of shape {tuple(shape)} ({need:,} bytes) but holds {held:,}",
            field="--z",
        )


def check_z(stored: ZFile, path: str, info: ModelInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """The latents of a --z file (read once, by ``read_z_file``) checked against the model.

    ``.npy`` [N, latent_dim] or ``.npz`` with ``z`` and optional ``labels``; a conditional
    model also takes [N, latent_dim + 1] with the class as the last column (the MLflow
    model's own input). Returns (z float32, labels int64 or None).
    """
    z, labels = stored
    width, d = z.shape[1], info.latent_dim
    if info.num_classes and width == d + 1:
        if labels is not None:
            raise UserError(f"--z: {path} has both a class column and a 'labels' array; keep one")
        z, labels = split_class_np(z, d)
    elif width != d:
        extra = f" or {d + 1} (with the class as the last column)" if info.num_classes else ""
        raise UserError(f"--z: {path} has vectors of width {width}; the model takes {d}{extra}")
    z = z.astype(np.float32)
    if not np.isfinite(z).all():
        raise UserError(f"--z: {path} holds NaN or infinite values (or values beyond float32)")
    if labels is not None:
        labels = _check_labels(labels, len(z), path, info)
    return np.ascontiguousarray(z), labels


def _check_labels(labels: np.ndarray, n: int, path: str, info: ModelInfo) -> np.ndarray:
    if not info.num_classes:
        raise UserError(f"--z: {path} carries class labels but the model is not class-conditional")
    if labels.ndim != 1 or len(labels) != n:
        raise UserError(f"--z: {path} has labels of shape {labels.shape}; expected one per vector ({n})")
    if labels.dtype.kind not in "fiu" or not np.isfinite(labels).all() or (labels != np.round(labels)).any():
        raise UserError(f"--z: {path} has class labels that are not whole numbers")
    bad = labels[(labels < 0) | (labels >= info.num_classes)]
    if bad.size:
        raise UserError(
            f"--z: {path} has class {bad[0]:g} out of range; the model has {info.num_classes} classes "
            f"(0-{info.num_classes - 1})"
        )
    return labels.astype(np.int64)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1): [len(t), D], float64.

    Follows the great circle between the two directions, which keeps the path in the shell
    where Gaussian latents live instead of cutting through the low-norm middle as a straight
    line does. Nearly parallel vectors fall back to a straight line.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    t = np.asarray(t, dtype=np.float64)[:, None]
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    cos = np.clip(a64 @ b64 / max(na * nb, 1e-12), -1.0, 1.0)
    omega = math.acos(cos)
    if math.sin(omega) < 1e-6:
        out = (1 - t) * a64 + t * b64
    else:
        out = (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / math.sin(omega)
    out[t[:, 0] == 0] = a64  # exact endpoints, whatever the rounding
    out[t[:, 0] == 1] = b64
    return out


def interpolation_latents(opts: GANGenerationSpec, info: ModelInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """Walks between seeds: z float32 [walks=num, steps=interpolate, latent_dim], labels [walks].

    Anchor i is the vector of image i of a plain run with the same seed and --truncation;
    walk i goes from anchor i to anchor i + 1 with both ends included, so consecutive walks
    share an endpoint. Conditional models: one class per walk, --class or walk % num_classes.
    """
    steps = opts.interpolate
    if steps is None:
        raise ValueError("interpolation_latents: the spec has no interpolate")
    anchors = np.concatenate(
        [image_latents(opts.seed, i, 1, info.latent_dim, opts.truncation) for i in range(opts.count + 1)]
    )
    t = np.linspace(0.0, 1.0, steps)
    z = np.stack([slerp(anchors[i], anchors[i + 1], t) for i in range(opts.count)]).astype(np.float32)
    return z, image_labels(opts, info, 0, opts.count)
