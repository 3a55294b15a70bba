"""Datasets under ``s3://bucket/prefix``: downloaded once per machine, then read locally.

Every Ray worker and the driver's pre-flight ``probe`` call ``local_root``; on one machine
the first caller downloads and the others wait on a lock and then use its copy. The copy
lives in ``$GANOPS_CACHE/datasets/<bucket>/<prefix>/`` (default ``~/.cache/ganops``) with a
``.complete.json`` marker holding the listing it was made from. Each call lists the prefix
again (one request): an unchanged listing uses the copy, a changed one downloads afresh
into a temporary directory that then replaces the old copy, so a reader never sees a mix.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from ganops import storage
from ganops.errors import UserError

FIELD = "spec.data.root"
MARKER = ".complete.json"
DEFAULT_CACHE = "~/.cache/ganops"

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The machine's cache root: ``$GANOPS_CACHE``, else ``~/.cache/ganops``."""
    return Path(os.environ.get("GANOPS_CACHE") or DEFAULT_CACHE).expanduser()


def local_root(root: str) -> str:
    """A local directory holding the files of ``root``: ``root`` itself unless it is on S3."""
    if not storage.is_s3(root):
        return root
    src = storage.locate(root)
    objects = storage.list_tree(src, field=FIELD)
    if not objects:
        raise UserError(
            f"{FIELD}: no files under {src.uri} (is the prefix right? upload the dataset's files there)", field=FIELD
        )
    dest = _cache_path(src.uri)
    listing = [asdict(o) for o in objects]
    with cache_lock(dest):
        if _marker(dest) == {"source": src.uri, "objects": listing}:
            return str(dest)
        _remove_leftovers(dest)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            total = sum(o.size for o in objects)
            log.info("downloading %d files (%.1f MB) from %s to %s", len(objects), total / 1e6, src.uri, dest)
            storage.download_tree(src, str(tmp), objects, field=FIELD)
            (tmp / MARKER).write_text(json.dumps({"source": src.uri, "objects": listing}, indent=1))
            _swap_in(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def _cache_path(uri: str) -> Path:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    parts = [p for p in prefix.split("/") if p]
    # The prefix becomes directories under the cache; ".." would climb out of it.
    if any(p in (".", "..") for p in parts):
        raise UserError(f"{FIELD}: {uri!r} has '.' or '..' in its prefix", field=FIELD)
    return cache_dir().joinpath("datasets", bucket, *parts)


def _marker(dest: Path) -> object:
    try:
        return json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None  # no copy yet, or one that was never completed


@contextmanager
def cache_lock(dest: Path) -> Iterator[None]:
    """Hold the lock of the cache entry ``dest`` (creating its directory): one process fills it."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"GANOPS_CACHE: cannot create {dest.parent} ({e.strerror or e}); set GANOPS_CACHE to a writable directory"
        ) from None
    with file_lock(dest.parent / f"{dest.name}.lock"):
        yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (the cache's downloads take it).

    flock, not a lock object: the callers are separate processes (Ray workers, the driver).
    The kernel drops it when its holder dies, so a killed download never blocks the next.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_leftovers(dest: Path) -> None:
    # Temporary and replaced copies of a process that was killed mid-download. Only the lock
    # holder creates them, so under the lock none of them is in use.
    for kind in ("tmp", "old"):
        for p in dest.parent.glob(f"{glob.escape('.' + dest.name)}.{kind}-*"):
            shutil.rmtree(p, ignore_errors=True)


def _swap_in(tmp: Path, dest: Path) -> None:
    """Put the complete copy ``tmp`` at ``dest`` (a directory cannot replace a non-empty one)."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
