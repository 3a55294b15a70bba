"""``ganops data pack``: any dataset ganops reads, written as a pack (``ganops.data.shards``).

Shards are written in order, each whole or not at all (``storage.write_bytes``: a temporary
name then a rename locally, one PUT on S3), and ``manifest.json`` last: a pack without it
is never read. Between shards ``_pack_state.json`` records what the options were and which
shards are done, with their sizes and sha256. The next identical invocation re-checks those
shards (size, then sha256 of what is stored) and goes on after the last good one; a state
from other options or other data is discarded and the pack redone. The same input makes
the same bytes, so a resumed pack is identical to an uninterrupted one.

Memory: the folder reader streams (a few chunks of decoded images in flight); the other
readers load their split first, as training does. On top of that, one shard being filled
and one being written: about 3 x ``shard_mb``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ganops import storage
from ganops.data import STREAMED, ImageInfo, expand_user
from ganops.data.shards import MANIFEST, VERSION, Manifest, ShardInfo, encode_shard, shard_name
from ganops.errors import UserError
from ganops.progress import ImageProgress

if TYPE_CHECKING:
    from ganops.spec.models import DataSpec
    from ganops.storage import Location

OUT_FIELD = "OUT"
STATE = "_pack_state.json"
STATE_FORMAT = "ganops-pack-state"
DEFAULT_SHARD_MB = 256.0
# A shard's image column has int32 offsets (Parquet BYTE_ARRAY, pyarrow's binary): 2 GiB
# at most; 1 GiB leaves room and is already more than a reader wants as one file.
MAX_SHARD_MB = 1024.0
MEMORY_CHUNK = 1024
"""Images per chunk handed over by the in-memory readers (a slice: no copy)."""
# What a directory may hold for us to write a pack into it: our files and the temporary
# names that storage.write_bytes / check_writable leave behind when killed.
_OURS = re.compile(
    r"(shard-\d{5}\.parquet|manifest\.json|_pack_state\.json)(\.tmp-[0-9a-f]{8})?|\.ganops-write-test-.*"
)
_SHARD_FILE = re.compile(r"shard-\d{5}\.parquet")


@dataclass(frozen=True)
class PackResult:
    uri: str
    manifest: Manifest
    reused_shards: int
    """Shards kept from an interrupted run of the same options (checked before reuse)."""
    packed_images: int
    """Images decoded and written by this run (all but those of the reused shards)."""
    elapsed_s: float

    @property
    def images_per_s(self) -> float:
        return self.packed_images / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class _Source:
    info: ImageInfo
    fingerprint: str
    """Of the input itself (pixels, or the folder's names and sizes): a resumed pack must
    not mix shards of data that changed in between."""
    chunks: Callable[[int, int], Generator[tuple[np.ndarray, np.ndarray | None], None, None]]


def pack(
    spec: DataSpec,
    out: str,
    *,
    shard_mb: float = DEFAULT_SHARD_MB,
    force: bool = False,
    workers: int | None = None,
    pool: str = "threads",
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
) -> PackResult:
    """Write the images ``spec`` describes as a pack at ``out`` (a directory or s3://bucket/prefix).

    A finished pack at ``out`` is an error unless ``force`` (then its manifest goes first,
    so that an interrupted ``force`` leaves nothing that looks finished). ``workers`` and
    ``pool`` (threads or processes): who decodes folder images (default: a thread per CPU).
    """
    t0 = time.perf_counter()
    if spec.dataset in STREAMED:
        raise UserError(
            f"--dataset: '{spec.dataset}' is already a pack; pack the data it was made from", field="--dataset"
        )
    if not 0 < shard_mb <= MAX_SHARD_MB:
        raise UserError(f"--shard-mb: {shard_mb} must be more than 0 and at most {MAX_SHARD_MB:g}", field="--shard-mb")
    if pool not in ("threads", "processes"):
        raise UserError(f"--pool: {pool!r} is not threads or processes", field="--pool")
    loc = _out_location(out)
    _check_out(loc, force)

    with _open_source(spec, workers, pool) as src:
        info = src.info
        if info.num_images == 0:
            raise UserError(f"spec.data.root: {spec.root} holds no images to pack", field="spec.data.root")
        image_bytes = int(np.prod(info.shape))
        per_shard = max(1, int(shard_mb * 2**20) // image_bytes)
        plan = [(a, min(a + per_shard, info.num_images)) for a in range(0, info.num_images, per_shard)]
        source = _source_doc(spec)
        options = {
            "format_version": VERSION, "source": source, "fingerprint": src.fingerprint, "shape": list(info.shape),
            "num_images": info.num_images, "num_classes": info.num_classes, "class_names": info.class_names,
            "images_per_shard": per_shard,
        }  # fmt: skip
        done = _resume(loc, options, plan, echo)
        state = _State(loc, options, list(done))
        state.save()  # replaces a state of other options before any shard of ours lands

        start = plan[len(done)][0] if len(done) < len(plan) else info.num_images
        with ImageProgress("packing", info.num_images, enabled=show_progress) as progress:
            if start:
                progress.add(start)
            _write_shards(loc, src, plan[len(done) :], len(done), state, progress)

    manifest = Manifest(info.num_images, info.shape, info.num_classes, info.class_names, state.shards, source)
    _remove_leftovers(loc, {s.file for s in state.shards})
    storage.write_bytes(loc.child(MANIFEST), manifest.to_json().encode())
    _delete(loc.child(STATE))  # a finished pack is its shards and its manifest
    return PackResult(loc.uri, manifest, len(done), info.num_images - start, time.perf_counter() - t0)


# --- the output location ---------------------------------------------------------------------


def _out_location(out: str) -> Location:
    if not out.strip():
        raise UserError("OUT: must not be empty (a directory or s3://bucket/prefix)", field=OUT_FIELD)
    if "://" in out and not storage.is_s3(out):
        raise UserError(
            f"OUT: unsupported scheme in {out[:80]!r} (use a directory or s3://bucket/prefix)", field=OUT_FIELD
        )
    if not storage.is_s3(out):
        out = str(expand_user(out, OUT_FIELD).resolve())
    return storage.locate(out)


def _check_out(loc: Location, force: bool) -> None:
    """``loc`` is writable and new, empty or (part of) a pack; not a finished one unless ``force``."""
    with storage.errors_as_user(loc.uri, field=OUT_FIELD):
        if loc.fs.get_file_info(loc.path).type.name == "File":
            raise UserError(f"OUT: {loc.uri} is a file; a pack is a directory (or an S3 prefix)", field=OUT_FIELD)
    # Writable first: its errors say what to fix (a missing bucket, credentials, permissions).
    storage.check_writable(loc, field=OUT_FIELD)
    with storage.errors_as_user(loc.uri, field=OUT_FIELD):
        names = storage.list_dir(loc)
    foreign = [n for n in names if not _OURS.fullmatch(n)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(
            f"OUT: {loc.uri} holds files that are not a pack's ({shown}); pack into a new or empty directory",
            field=OUT_FIELD,
        )
    if MANIFEST not in names and STATE not in names and [n for n in names if n.endswith(".parquet")]:
        # A pack writes its state before its first shard: shards with neither are not ours,
        # and a pack would write over one and delete the others.
        shown = ", ".join(n for n in names if n.endswith(".parquet"))[:200]
        raise UserError(
            f"OUT: {loc.uri} holds shard files no pack here wrote ({shown}: no {MANIFEST}, no {STATE}); "
            "pack into a new or empty directory",
            field=OUT_FIELD,
        )
    if MANIFEST in names:
        if not force:
            raise UserError(
                f"OUT: {loc.uri} already holds a finished pack ({MANIFEST}); a pack is never overwritten: "
                "choose another OUT, or pass --force to replace it",
                field=OUT_FIELD,
            )
        # First of all: from here on the old pack is unfinished, and never read as finished.
        _delete(loc.child(MANIFEST))
        _delete(loc.child(STATE))


def _delete(loc: Location) -> None:
    with storage.errors_as_user(loc.uri, field=OUT_FIELD):
        if storage.exists(loc):
            loc.fs.delete_file(loc.path)


def _remove_leftovers(loc: Location, keep: set[str]) -> None:
    """Shards of an earlier, larger attempt and temporary files of killed writes."""
    for name in storage.list_dir(loc):
        if name not in keep and name not in (MANIFEST, STATE) and _OURS.fullmatch(name):
            _delete(loc.child(name))


# --- the source ------------------------------------------------------------------------------


def _source_doc(spec: DataSpec) -> dict[str, Any]:
    """The data section, as the manifest records it: the root made absolute (a relative
    path means nothing away from this shell); ``download`` left out (how the files came,
    not which)."""
    doc = spec.model_dump(mode="json", exclude={"download"})
    if spec.root and not storage.is_s3(spec.root):
        doc["root"] = str(expand_user(spec.root, "spec.data.root").resolve())
    return doc


@contextmanager
def _open_source(spec: DataSpec, workers: int | None, pool: str) -> Iterator[_Source]:
    # pack is part of ganops.data: it uses the package's own S3-root and class checks.
    from ganops import data as gdata

    if spec.dataset != "folder":
        ds = gdata.load(spec)  # fixed-size splits that training loads whole anyway
        h = hashlib.sha256(ds.images.data)
        if ds.labels is not None:
            h.update(ds.labels.tobytes())

        def slices(a: int, b: int) -> Generator[tuple[np.ndarray, np.ndarray | None], None, None]:
            for i in range(a, b, MEMORY_CHUNK):
                j = min(i + MEMORY_CHUNK, b)
                yield ds.images[i:j], (ds.labels[i:j] if ds.labels is not None else None)

        yield _Source(ds.info, h.hexdigest(), slices)
        return

    from ganops.data import folder

    with gdata._local_copy(spec) as local:
        listing = folder.list_images(local)
        info = folder.describe(local, listing)
        gdata._check_num_classes(spec, info)
        h = hashlib.sha256()
        for f in listing.files[: info.num_images]:
            h.update(f"{f.relative_to(listing.directory).as_posix()}\0{f.stat().st_size}\n".encode())

        def decoded(a: int, b: int) -> Generator[tuple[np.ndarray, np.ndarray | None], None, None]:
            return folder.iter_images(local, listing, start=a, stop=b, workers=workers, pool=pool)

        yield _Source(info, h.hexdigest(), decoded)


# --- resuming --------------------------------------------------------------------------------


@dataclass
class _State:
    loc: Location
    options: dict[str, Any]
    shards: list[ShardInfo]

    def save(self) -> None:
        doc = {"format": STATE_FORMAT, "options": self.options, "shards": [asdict(s) for s in self.shards]}
        storage.write_bytes(self.loc.child(STATE), (json.dumps(doc, indent=1) + "\n").encode())


def _resume(
    loc: Location, options: dict[str, Any], plan: list[tuple[int, int]], echo: Callable[[str], None]
) -> list[ShardInfo]:
    """The shards an interrupted run of these options left that are still intact, in order."""
    state_loc = loc.child(STATE)
    with storage.errors_as_user(state_loc.uri, field=OUT_FIELD):
        if not storage.exists(state_loc):
            return []
        raw = storage.read_bytes(state_loc)
    try:
        doc = json.loads(raw)
        recorded = [ShardInfo(**s) for s in doc["shards"]] if doc.get("format") == STATE_FORMAT else None
        same = recorded is not None and doc["options"] == options
    except (ValueError, KeyError, TypeError):
        recorded, same = None, False
    if not same or recorded is None:
        echo(f"{loc.uri}: an unfinished pack of other options or other data is here: starting over")
        return []
    kept: list[ShardInfo] = []
    for i, s in enumerate(recorded):
        expect = (shard_name(i), plan[i][0], plan[i][1] - plan[i][0]) if i < len(plan) else None
        if expect != (s.file, s.first_index, s.num_images) or not _intact(loc.child(s.file), s):
            break
        kept.append(s)
    if recorded:
        redo = f"; redoing from {recorded[len(kept)].file} (missing or changed)" if len(kept) < len(recorded) else ""
        echo(f"{loc.uri}: resuming an unfinished pack: {len(kept)} shard(s) checked and kept{redo}")
    return kept


def _intact(loc: Location, s: ShardInfo) -> bool:
    with storage.errors_as_user(loc.uri, field=OUT_FIELD):
        info = loc.fs.get_file_info(loc.path)
        if info.type.name != "File" or info.size != s.bytes:
            return False
        h = hashlib.sha256()
        with loc.fs.open_input_file(loc.path) as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
    return h.hexdigest() == s.sha256


# --- writing ---------------------------------------------------------------------------------


def _write_shards(
    loc: Location, src: _Source, plan: list[tuple[int, int]], first: int, state: _State, progress: ImageProgress
) -> None:
    """Fill each planned shard from the source's chunks; encode and write it on a thread
    while the next one fills (one shard in flight: memory stays two shards)."""
    if not plan:
        return
    shape = src.info.shape
    labelled = src.info.num_classes is not None
    chunks = src.chunks(plan[0][0], plan[-1][1])
    carry: tuple[np.ndarray, np.ndarray | None] | None = None  # the part of a chunk the last shard had no room for
    pending: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-writer") as writer:
        try:
            for i, (a, b) in enumerate(plan, start=first):
                images = np.empty((b - a, *shape), np.uint8)
                labels = np.empty(b - a, np.int64) if labelled else None
                filled = 0
                while filled < b - a:
                    imgs, labs = carry if carry is not None else next(chunks)
                    take = min(len(imgs), b - a - filled)
                    images[filled : filled + take] = imgs[:take]
                    if labels is not None and labs is not None:
                        labels[filled : filled + take] = labs[:take]
                    carry = (imgs[take:], labs[take:] if labs is not None else None) if take < len(imgs) else None
                    filled += take
                    progress.add(take)
                if pending is not None:
                    pending.result()
                pending = writer.submit(_write_one, loc, i, a, images, labels, state)
            if pending is not None:
                pending.result()
        finally:
            chunks.close()  # stops the decoding workers when a write failed or we were interrupted


def _write_one(
    loc: Location, i: int, first_index: int, images: np.ndarray, labels: np.ndarray | None, state: _State
) -> None:
    name = shard_name(i)
    data = encode_shard(first_index, images, labels)
    shard = loc.child(name)
    try:
        storage.write_bytes(shard, data)
        state.shards.append(ShardInfo(name, len(images), first_index, len(data), hashlib.sha256(data).hexdigest()))
        state.save()
    except OSError as e:
        raise UserError(
            f"OUT: cannot write {shard.uri} ({str(e)[:300]}); the shards before it are kept: "
            "run the same command again to resume",
            field=OUT_FIELD,
        ) from None
