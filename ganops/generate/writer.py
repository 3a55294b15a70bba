"""One shard's files with checksums, the preview grid, and the manifest (written last).

Layout under the output location (a local directory or s3://bucket/prefix)::

    png/<shard:05d>/<index:07d>.png   "png" in formats (grey: mode L, RGB: RGB)
    npz/shard_<shard:05d>.npz         "npz" in formats: images uint8 [n,H,W,C], indices int64,
                                      labels (conditional), z (save_z), scores (best-of)
    z/shard_<shard:05d>.npy           save_z without "npz": z float32 [n, latent_dim]
    preview.png                       a grid of the first <= 64 images
    manifest.json                     last: its presence means the output is complete

Every file goes through ``storage.write_bytes`` (whole or not at all) and is listed in its
shard's record with its sha256, so ``verify`` can prove an output intact.

Parallelism: measured on this project's shared 2-core machine (Pillow 13, 1,000 28x28 grey
images per shard, the code of ``write_shard``; medians of 5-6 interleaved runs):

* Pillow's PNG encoder releases the GIL while it filters and deflates: while one thread
  encodes a 4096x4096 image, another thread sleeping 1 ms wakes on time (p50 1.1 ms; behind
  a pure-Python loop: 6 ms, up to 130 ms). Large images therefore encode in parallel on
  threads.
* Small images do not: their cost is per image and mostly Python under the GIL
  (``Image.fromarray``, the PNG plugin writing chunks). Encode + atomic write to tmpfs,
  where the disk costs nothing: one thread 9.5k img/s; 2 threads 7.5k/s (GIL contention
  made it *slower*); 2 processes encoding, this process writing: 8.0k/s; 2 processes
  encoding and writing their own chunks: 13.2k/s.
* On the real disk every variant ran at 0.7-1.2k img/s while ``storage.write_bytes`` fsynced
  each file (temp file, fsync, rename: 0.3-1.5 ms of mostly kernel time per file here,
  vs 0.1 ms for a plain write), and extra writer threads per process gained nothing
  measurable (1.12k/s with 1, 1.10k/s with 4). S3 is different: a PUT waits a round trip,
  so many must be in flight.
* Hence image files are written with ``durable=False`` (temp file + rename, no fsync) and
  ``write_manifest`` syncs once before the manifest: a crash can lose images but never
  leaves an output that claims to be complete, and ``verify`` checks every checksum.

So: ``make_pool()`` gives worker processes (spawned: the parent holds torch's threads,
and fork after threads is unsafe), one per core. Each takes chunks of a shard, encodes
them and writes their files itself, one at a time for a local directory and on a few
threads for S3 (``S3_WRITERS`` PUTs in flight per shard in all). The parent only
collects checksums. Any other Executor works too (the chunk function is module-level and
picklable); threads are a fine choice for large images, whose encoding releases the GIL.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from ganops import storage
from ganops.images import grid, png_bytes

FORMATS = ("png", "npz")  # the kinds of file a shard can hold (GANGenerationSpec.formats)

if TYPE_CHECKING:
    # Only for the annotation: this module imports no torch, so a process pool's workers
    # (which import it to run encode_pngs) start in a fraction of a second.
    from ganops.generate.core import ShardResult

MANIFEST = "manifest.json"
PREVIEW = "preview.png"
PREVIEW_MAX = 64
# Files each worker writes at once. Local: one (more threads only contended for the GIL
# and fsync did not overlap; see above). S3: PUTs mostly wait on a round trip, so S3_WRITERS
# in flight per shard across all workers (16, as storage's download threads).
LOCAL_WRITERS = 1
S3_WRITERS = 16

Encoded = list[tuple[bytes, str]]  # (file contents, sha256 hex)


def png_path(shard: int, index: int) -> str:
    return f"png/{shard:05d}/{index:07d}.png"


def npz_path(shard: int) -> str:
    return f"npz/shard_{shard:05d}.npz"


def z_path(shard: int) -> str:
    return f"z/shard_{shard:05d}.npy"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_pngs(images: np.ndarray) -> Encoded:
    """PNG files of uint8 [n, C, H, W] images (C=1: mode L, 3: RGB), with their sha256.

    A module-level function of arrays only, so a process pool can run it as well as threads.
    """
    out = []
    for img in images:
        data = png_bytes(np.ascontiguousarray(img.transpose(1, 2, 0)))
        out.append((data, sha256_hex(data)))
    return out


def _npz_bytes(arrays: dict[str, np.ndarray]) -> Encoded:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    return [(data, sha256_hex(data))]


def npy_file(a: np.ndarray) -> Encoded:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    data = buf.getvalue()
    return [(data, sha256_hex(data))]


def make_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """The executor ``write_shard`` encodes fastest with: worker processes, one per core.

    Make it once per job (each worker takes ~0.2 s to start) and shut it down at the end.
    """
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=ctx)


def _workers(pool: Executor | None) -> int:
    return getattr(pool, "_max_workers", None) or 1


def _chunk_size(n: int, workers: int) -> int:
    # About four chunks per worker: every worker stays busy to the end, and the per-task
    # cost (pickling, a round trip, an S3 client per task in a process) stays small.
    return max(8, math.ceil(n / (4 * workers)))


def _write_chunk(
    out: storage.Location, names: list[str], encode: Callable[[Any], Encoded], arg: Any, writers: int
) -> list[str]:
    """Encode one chunk and write its files; return their sha256s. Runs on the pool.

    Module-level, arguments picklable: it runs in worker processes as well as threads.
    """
    encoded = encode(arg)
    if len(encoded) != len(names):
        raise ValueError(f"{len(encoded)} files encoded for {len(names)} names")
    if writers <= 1 or len(names) == 1:
        for name, (data, _) in zip(names, encoded, strict=True):
            storage.write_bytes(out.child(name), data, durable=False)
    else:
        with ThreadPoolExecutor(min(writers, len(names)), thread_name_prefix="ganops-write") as io_pool:
            writes = [
                io_pool.submit(storage.write_bytes, out.child(n), d, False)
                for n, (d, _) in zip(names, encoded, strict=True)
            ]
            for f in writes:
                f.result()
    return [sha for _, sha in encoded]


def write_shard(
    out: storage.Location,
    result: ShardResult,
    formats: Iterable[str],
    save_z: bool,
    pool: Executor | None = None,
) -> dict[str, Any]:
    """Write one shard's files; return its record ``{shard, start, stop, count, files}``.

    ``files`` maps each relative path to its sha256. The shard is cut into chunks that
    are encoded and written on ``pool`` (``make_pool()`` is the measured choice; None: in
    this thread), see the module docstring.
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be among {', '.join(FORMATS)} (got {', '.join(formats) or 'none'})")
    n, shard = result.count, result.shard
    if len(result.images) != n:
        raise ValueError(f"shard {shard}: {len(result.images)} images for indices {result.start}..{result.stop}")
    workers = _workers(pool)

    tasks: list[tuple[list[str], Callable[[Any], Encoded], Any]] = []  # (file names, encoder, its input)
    if "png" in formats:
        step = _chunk_size(n, workers)
        for a in range(0, n, step):
            b = min(a + step, n)
            tasks.append(([png_path(shard, result.start + i) for i in range(a, b)], encode_pngs, result.images[a:b]))
    if "npz" in formats:
        arrays = {
            "images": result.images.transpose(0, 2, 3, 1),
            "indices": np.arange(result.start, result.stop, dtype=np.int64),
        }
        if result.labels is not None:
            arrays["labels"] = np.asarray(result.labels, dtype=np.int64)
        if save_z:
            arrays["z"] = np.asarray(result.z, dtype=np.float32)
        if result.scores is not None:
            arrays["scores"] = np.asarray(result.scores, dtype=np.float32)
        tasks.insert(0, ([npz_path(shard)], _npz_bytes, arrays))  # the biggest task first
    elif save_z:
        tasks.append(([z_path(shard)], npy_file, np.asarray(result.z, dtype=np.float32)))

    writers = max(1, S3_WRITERS // workers) if storage.is_s3(out.uri) else LOCAL_WRITERS
    files: dict[str, str] = {}
    if pool is None:
        for names, encode, arg in tasks:
            files.update(zip(names, _write_chunk(out, names, encode, arg, writers), strict=True))
    else:
        futures = {pool.submit(_write_chunk, out, names, encode, arg, writers): names for names, encode, arg in tasks}
        try:
            for fut in as_completed(futures):
                files.update(zip(futures[fut], fut.result(), strict=True))
        except BaseException:
            for f in futures:
                f.cancel()  # the first error is the one to report
            raise
    return {
        "shard": shard,
        "start": result.start,
        "stop": result.stop,
        "count": n,
        "files": {name: files[name] for name in sorted(files)},
    }


def write_preview(out: storage.Location, images_uint8: np.ndarray, ncols: int | None = None) -> str:
    """A grid of the first <= 64 images as preview.png; returns its relative path."""
    if len(images_uint8) == 0:
        raise ValueError("no images for the preview")
    storage.write_bytes(out.child(PREVIEW), png_bytes(grid(images_uint8[:PREVIEW_MAX], ncols)))
    return PREVIEW


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, PurePath):
        return str(o)
    raise TypeError(f"manifest: {type(o).__name__} is not JSON serialisable")


def write_manifest(out: storage.Location, manifest: dict[str, Any]) -> None:
    """manifest.json (sorted keys, indent 1). Write it last: it marks the output complete."""
    text = json.dumps(manifest, sort_keys=True, indent=1, default=_json_default)
    # The shards' files were written without a per-file fsync: flush them all before the
    # manifest that declares them complete, then write the manifest durably.
    storage.sync(out)
    storage.write_bytes(out.child(MANIFEST), (text + "\n").encode())


class ManifestStream:
    """manifest.json written as the shards come back, so that the driver never holds one
    record per shard: a job's manifest lists every file, ~100 bytes a PNG, which is
    hundreds of MB for a few million images and is only ever on disk.

    Records go to a spool file in shard order (one JSON object a line inside ``shards``);
    one that arrives ahead of an earlier shard waits in memory, and with shards handed out
    in order to one task per worker at most ``workers - 1`` wait. ``finish`` writes the
    keys known only at the end and puts the spool in place as manifest.json (a rename for
    a local output; one streamed upload for S3), after every image file is flushed. The
    records must cover 0..count exactly once, in order: the manifest proves that no index is
    missing or duplicated.
    """

    def __init__(self, out: storage.Location, header: dict[str, Any]) -> None:
        self.out = out
        self.count = self.shards = 0
        self._pending: dict[int, dict[str, Any]] = {}
        if storage.is_s3(out.uri):  # spooled here, uploaded whole by finish
            fd, self._spool = tempfile.mkstemp(prefix="ganops-manifest-", suffix=".json")
        else:  # spooled beside its final name: finish renames it
            os.makedirs(out.path, exist_ok=True)
            self._spool = os.path.join(out.path, f".{MANIFEST}.part-{uuid.uuid4().hex[:8]}")
            fd = os.open(self._spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._f = os.fdopen(fd, "w", encoding="utf-8")
        self._f.write("{\n")
        for key in sorted(header):
            self._f.write(f" {json.dumps(key)}: {_dumps(header[key])},\n")
        self._f.write(' "shards": [')

    def add(self, record: dict[str, Any]) -> None:
        """One shard's record (``write_shard``'s), in any order."""
        self._pending[int(record["shard"])] = record
        while self.shards in self._pending:
            r = self._pending.pop(self.shards)
            if r["start"] != self.count or r["stop"] - r["start"] != r["count"]:
                raise ValueError(f"shard {self.shards} holds images {r['start']}..{r['stop']}; expected {self.count}..")
            self._f.write(("\n  " if self.shards == 0 else ",\n  ") + _dumps(r))
            self.count, self.shards = r["stop"], self.shards + 1

    def finish(self, footer: dict[str, Any], keep_max: int = 0) -> bytes | None:
        """Write ``footer``'s keys and put manifest.json in place (last: the output is then
        complete). Returns the manifest's bytes when they are at most ``keep_max``."""
        if self._pending:
            raise ValueError(f"shards {sorted(self._pending)[:5]} came back but shard {self.shards} never did")
        self._f.write("\n ]")
        for key in sorted(footer):
            self._f.write(f",\n {json.dumps(key)}: {_dumps(footer[key])}")
        self._f.write("\n}\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        size = os.path.getsize(self._spool)
        kept = None
        if size <= keep_max:
            with open(self._spool, "rb") as f:
                kept = f.read()
        storage.sync(self.out)  # the images were written without fsync: flush them first
        if storage.is_s3(self.out.uri):
            with open(self._spool, "rb") as src, self.out.fs.open_output_stream(self.out.child(MANIFEST).path) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.unlink(self._spool)
        else:
            os.replace(self._spool, os.path.join(self.out.path, MANIFEST))
            storage.sync(self.out)
        return kept

    def abort(self) -> None:
        """Drop the spool (the output stays without a manifest: unfinished)."""
        self._f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._spool)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def listed_files(manifest: dict[str, Any]) -> dict[str, str]:
    """Every file a manifest lists with a checksum: the shards' files and top-level ``files``."""
    files: dict[str, str] = {}
    for record in manifest.get("shards") or []:
        files.update(record.get("files", {}))
    files.update(manifest.get("files") or {})
    return files


def verify(out: storage.Location) -> dict[str, Any]:
    """Recompute the sha256 of every file manifest.json lists; ValueError if any differs or
    is missing. Returns the manifest."""
    loc = out.child(MANIFEST)
    if not storage.exists(loc):
        raise ValueError(f"{out.uri}: no {MANIFEST} (an empty or unfinished output)")
    manifest = json.loads(storage.read_bytes(loc))
    records = manifest.get("shards") or []
    held = sum(r["count"] for r in records)
    if "count" in manifest and records and held != manifest["count"]:
        raise ValueError(f"{out.uri}: the shards hold {held} images, not {manifest['count']}")
    expected = listed_files(manifest)

    def check(name: str) -> str | None:
        try:
            data = storage.read_bytes(out.child(name))
        except (FileNotFoundError, OSError):
            return f"{name}: missing"
        return None if sha256_hex(data) == expected[name] else f"{name}: checksum mismatch"

    with ThreadPoolExecutor(storage.DOWNLOAD_THREADS) as pool:
        problems = [p for p in pool.map(check, sorted(expected)) if p]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        listed = "; ".join(problems[:5]) + more
        raise ValueError(f"{out.uri}: {len(problems)} file(s) do not match {MANIFEST}: {listed}")
    return manifest


# What a generation writes at the top of its output (shards in png/, npz/, z/; the
# interpolation's files; write_bytes' temporary names end in .tmp-XXXXXXXX).
OWN_ENTRIES = frozenset({"png", "npz", "z", PREVIEW, MANIFEST, "interpolation.png", "interpolation.gif",
                         "interpolation_z.npy"})  # fmt: skip
_TEMP = re.compile(r"\.tmp-[0-9a-f]{8}$")


def foreign_entries(out: storage.Location) -> list[str]:
    """Names at the top of ``out`` that no generation writes (the user's files)."""
    try:
        names = storage.list_dir(out)
    except NotADirectoryError:
        return [out.uri]  # a plain file where the output directory should be
    return [n for n in names if n not in OWN_ENTRIES and not (_TEMP.search(n) and _TEMP.sub("", n) in OWN_ENTRIES)]


def existing_output(out: storage.Location) -> str | None:
    """ "complete" (manifest.json exists), "foreign" (files a generation does not write),
    "partial" (an unfinished generation's files), None (empty or missing)."""
    if storage.exists(out.child(MANIFEST)):
        return "complete"
    if foreign_entries(out):
        return "foreign"
    try:
        return "partial" if storage.list_dir(out) else None
    except NotADirectoryError:
        return "foreign"
