"""The FID Inception weights, downloaded once per machine into ``$GANOPS_CACHE/fid/``.

pytorch-fid, torch-fidelity and clean-fid fetch the published file on first use; ganops does
the same when ``spec.eval.inception_weights`` is unset. Every process that needs the file
(the driver's pre-flight, every Ray worker as it loads the network) calls ``ensure``: the first
one downloads under an exclusive file lock, the others wait on the lock and then find the
complete copy. The download streams to ``<name>.part-<pid>``, is hashed on the way, and is
renamed into place only when the sha256 matches, so no reader ever sees half a file.

No torch here: the CLI's pre-flight calls this module.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ganops.data.remote import cache_dir, cache_lock
from ganops.errors import UserError
from ganops.evaluate.weights import PINNED_SHA256, WEIGHTS_FIELD, WEIGHTS_FILE, WEIGHTS_URL

URL_ENV = "GANOPS_INCEPTION_URL"
"""Where to download from instead of pytorch-fid's release (a mirror; the tests' server)."""
SUBDIR = "fid"
# Long enough for a slow proxy to answer, short enough that a firewall that drops packets
# fails the submit in under a minute rather than hanging it.
TIMEOUT_S = 30.0
CHUNK = 1 << 20

Notify = Callable[[str], None]

log = logging.getLogger(__name__)


def weights_url() -> str:
    return os.environ.get(URL_ENV) or WEIGHTS_URL


def cached_path(expected_sha256: str | None = None) -> Path:
    """Where the weights with this sha256 (default: the pinned file's) live in this machine's cache.

    Named by content, not by URL: a worker whose environment lacks the driver's
    ``$GANOPS_INCEPTION_URL`` still finds the copy the driver fetched from a mirror.
    """
    expected = (expected_sha256 or PINNED_SHA256).lower()
    name = WEIGHTS_FILE if expected == PINNED_SHA256 else f"inception-{expected[:16]}.pth"
    return cache_dir() / SUBDIR / name


def file_sha256(path: Path) -> str | None:
    """The file's sha256, or None when it does not exist (or cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def ensure(expected_sha256: str | None = None, *, field: str | None = None, notify: Notify | None = None) -> Path:
    """The cached weights file, downloaded first if needed; its sha256 is ``expected_sha256``.

    ``expected_sha256`` defaults to the pinned pytorch-fid file's. ``field`` is the spec
    field or flag that could have named the file instead (it opens every error message).
    """
    field = field or WEIGHTS_FIELD
    expected = (expected_sha256 or PINNED_SHA256).lower()
    url = weights_url()
    dest = cached_path(expected)
    # Fast path without the lock: the file only ever appears complete (os.replace).
    if file_sha256(dest) == expected:
        return dest
    with cache_lock(dest):
        found = file_sha256(dest)  # another process may have finished while we waited
        if found == expected:
            return dest
        _remove_partials(dest)
        if notify is not None:
            notify(f"downloading the FID Inception weights {url} to {dest} (once per machine)")
        log.info("downloading %s to %s", url, dest)
        _download(url, dest, expected, field=field, stale=found)
    return dest


def check_reachable(expected_sha256: str | None = None, *, field: str | None = None) -> None:
    """Raise the offline error unless the weights are cached here or their URL answers.

    Reads only the response's first bytes: for a driver whose workers may be on other
    machines (they download into their own caches), a full download here would be wasted.
    """
    field = field or WEIGHTS_FIELD
    expected = (expected_sha256 or PINNED_SHA256).lower()
    url = weights_url()
    dest = cached_path(expected)
    if dest.exists():
        return  # placed by hand or by an earlier job; each worker's ensure() checks its hash
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            r.read(1)
    except (OSError, http.client.HTTPException) as e:
        raise _offline(url, dest, expected, field, e, stale=None) from None


def _remove_partials(dest: Path) -> None:
    # Left by a process killed mid-download. Only the lock holder writes one, so under the
    # lock none of them is in use.
    for p in dest.parent.glob(f"{dest.name}.part-*"):
        p.unlink(missing_ok=True)


def _download(url: str, dest: Path, expected: str, *, field: str, stale: str | None) -> None:
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    h = hashlib.sha256()
    try:
        try:
            f = open(part, "wb")
        except OSError as e:
            raise UserError(f"GANOPS_CACHE: cannot write {part} ({e.strerror or e})") from None
        with f:
            try:
                resp = urllib.request.urlopen(url, timeout=TIMEOUT_S)
            except (OSError, http.client.HTTPException) as e:
                raise _offline(url, dest, expected, field, e, stale) from None
            with resp:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _offline(url, dest, expected, field, e, stale) from None
                    if not chunk:
                        break
                    h.update(chunk)
                    try:
                        f.write(chunk)
                    except OSError as e:
                        raise UserError(f"GANOPS_CACHE: cannot write {part} ({e.strerror or e})") from None
            f.flush()
            os.fsync(f.fileno())
        digest = h.hexdigest()
        if digest != expected:
            raise UserError(
                f"{field}: {url} sent a file with sha256 {digest}, expected {expected}; it was not kept. "
                f"FID is only comparable with the exact weights: check the URL (${URL_ENV} when set) "
                f"or point {field} at a file you trust"
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)  # gone already after the rename


def _offline(url: str, dest: Path, expected: str, field: str, err: BaseException, stale: str | None) -> UserError:
    if isinstance(err, urllib.error.HTTPError):
        reason = f"HTTP {err.code} {err.reason}"
    elif isinstance(err, urllib.error.URLError):
        reason = str(err.reason)
    else:
        reason = str(err) or type(err).__name__
    have = f" (the copy there has sha256 {stale}, not the expected one)" if stale else ""
    return UserError(
        f"{field}: unset, so ganops downloads the FID Inception weights, but {url} could not be fetched "
        f"({reason}). Without internet: download {dest.name} from {url} elsewhere and put it at {dest}{have} "
        f"(sha256 {expected}; the cache is $GANOPS_CACHE, default ~/.cache/ganops), or point {field} at a "
        "copy (a local path or s3://)"
    )
