"""The only module that speaks to storage: a local directory or ``s3://bucket/prefix``.

Everything goes through ``pyarrow.fs`` because Ray Train persists checkpoints with it
too; one filesystem object serves both. S3 endpoint and credentials come from the
standard AWS environment (``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible
stores), never from the spec.

Writes are all-or-nothing: local files are written to a temporary name and renamed;
an S3 PUT is atomic per object.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ganops.errors import UserError


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def resolve(uri: str) -> str:
    """Absolute form of a storage location (Ray needs absolute local paths)."""
    if is_s3(uri):
        return uri.rstrip("/")
    if "://" in uri:
        raise UserError(f"spec.storage: unsupported scheme in {uri!r} (use a local path or s3://bucket/prefix)")
    return str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if is_s3(base) else os.path.join(base, *parts)


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, object] = {}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path on it (pyarrow's view of a URI)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def child(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts), join(self.uri, *parts))


def locate(uri: str) -> Location:
    uri = resolve(uri)
    if is_s3(uri):
        return Location(_s3_filesystem(), uri[len("s3://") :], uri)
    return Location(pafs.LocalFileSystem(), uri, uri)


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole file or nothing."""
    parent = posixpath.dirname(loc.path)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        os.makedirs(parent, exist_ok=True)
        tmp = f"{loc.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, loc.path)
        return
    with loc.fs.open_output_stream(loc.path) as out:
        out.write(data)


def read_bytes(loc: Location) -> bytes:
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read()


def exists(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def list_dir(loc: Location) -> list[str]:
    """Names directly under ``loc`` (empty if it does not exist)."""
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos)


def move_dir(src: Location, dst: Location) -> None:
    """Move a directory tree (a rename locally; copy then delete on S3)."""
    if isinstance(src.fs, pafs.LocalFileSystem):
        os.replace(src.path, dst.path)
        return
    pafs.copy_files(src.path, dst.path, source_filesystem=src.fs, destination_filesystem=dst.fs)
    src.fs.delete_dir(src.path)


def copy_file(local_path: str, dst: Location) -> None:
    pafs.copy_files(local_path, dst.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=dst.fs)


def check_writable(loc: Location) -> None:
    """Fail before any worker starts if the job directory cannot be written."""
    probe = loc.child(f".ganops-write-test-{uuid.uuid4().hex[:8]}")
    try:
        loc.fs.create_dir(loc.path, recursive=True)
        write_bytes(probe, b"ok")
        loc.fs.delete_file(probe.path)
    except (OSError, PermissionError) as e:
        raise UserError(f"spec.storage: cannot write to {loc.uri} ({e})") from None
