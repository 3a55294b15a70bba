"""The only module that speaks to storage: a local directory or ``s3://bucket/prefix``.

Everything goes through ``pyarrow.fs`` because Ray Train persists checkpoints with it
too; one filesystem object serves both. boto3 is used where its answers are clearer: the
pre-flight ``check_writable`` (an S3 error code, not a string to parse) and listing and
downloading a prefix (ETags, parallel GETs). S3 endpoint and credentials come from the
standard AWS environment and config (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for
MinIO and other S3-compatible stores, ``AWS_PROFILE``, the access keys), never from the
spec, and secrets never appear in a message.

Writes are all-or-nothing: local files are written to a temporary name and renamed;
an S3 PUT is atomic per object.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ganops.errors import UserError
from ganops.faults import fault_point

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

STORAGE_FIELD = "spec.storage"
CREDENTIALS_HINT = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"

# Connect and stall limits, in seconds. A typo in an endpoint or a firewalled port must fail
# in seconds rather than after minutes of retries; a slow but flowing transfer is not
# affected (pyarrow's request_timeout and botocore's read_timeout bound a stall, not a
# whole transfer).
CONNECT_TIMEOUT_S = 5.0
STALL_TIMEOUT_S = 60.0
# Every S3 request (checkpoint uploads included) is tried this many times: transient
# errors (HTTP 5xx, 503 SlowDown, throttling, dropped connections) are retried with the
# AWS SDK's backoff, so up to S3_ATTEMPTS - 1 failures in a row cost a little time, not
# the checkpoint. (pyarrow's own default is 3 attempts.)
S3_ATTEMPTS = 5
CHECK_CONNECT_TIMEOUT_S = 3.0
CHECK_READ_TIMEOUT_S = 10.0
DOWNLOAD_THREADS = 16
_CHUNK = 1 << 20

# Codes S3 and S3-compatible stores answer when the credentials are wrong or lack a permission.
_DENIED = {
    "403",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AccountProblem",
}


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


def _endpoint() -> tuple[str, str] | None:
    """The custom S3 endpoint and the variable that set it, or None for AWS itself."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        url = os.environ.get(var)
        if url:
            if urlparse(url).scheme not in ("http", "https"):
                raise UserError(f"{var}: {url!r} is not a URL; use http://host:port or https://host")
            return url, var
    return None


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def _s3_filesystem() -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": STALL_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
    }
    endpoint = _endpoint()
    if endpoint:
        parsed = urlparse(endpoint[0])
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    region = _region()
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


def write_bytes(loc: Location, data: bytes, durable: bool = True) -> None:
    """Write a whole file or nothing.

    ``durable=False`` skips the per-file fsync (the rename still makes the file appear
    whole): for bulk outputs of many small files, where one ``sync`` before the file
    that declares them complete (a manifest) is enough, and an fsync per file would
    cost more than making the file (0.3-1.5 ms each, measured here).
    """
    parent = posixpath.dirname(loc.path)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        os.makedirs(parent, exist_ok=True)
        tmp = f"{loc.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, loc.path)
        return
    with loc.fs.open_output_stream(loc.path) as out:
        out.write(data)


def sync(loc: Location) -> None:
    """Flush what ``write_bytes(durable=False)`` left in the page cache (no-op on S3)."""
    if isinstance(loc.fs, pafs.LocalFileSystem):
        os.sync()


def read_bytes(loc: Location) -> bytes:
    """A whole file; a local FIFO, device or socket is refused (OSError) rather than opened:
    reading one blocks for a writer or never ends."""
    if isinstance(loc.fs, pafs.LocalFileSystem):
        try:
            mode = os.stat(loc.path).st_mode
        except FileNotFoundError:
            mode = None  # pyarrow's own error below names the file
        if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise OSError(errno.EINVAL, f"{loc.uri} is not a regular file (a FIFO, device or socket)")
    # A random-access file reads an S3 object in one request; pyarrow's input *stream*
    # fetches it in many small ranged GETs (95 MB: 29 s against 0.25 s on the test server).
    with loc.fs.open_input_file(loc.path) as f:
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


def replace_dir_from_local(local: str, fs: pafs.FileSystem, dest: str, *, last: str | None = None) -> None:
    """Copy the files of the local directory ``local`` into ``dest`` on ``fs`` (e.g. Ray
    Train's storage filesystem), ``last`` after all others: a marker written last means
    the files before it are complete. A directory already at ``dest`` is a leftover of an
    interrupted write (it never got its marker) and is deleted first."""
    try:
        if fs.get_file_info(dest).type != pafs.FileType.NotFound:
            fs.delete_dir(dest)
        fs.create_dir(dest, recursive=True)
        for name in sorted(os.listdir(local), key=lambda n: n == last):
            if name == last:
                fault_point("before-marker", posixpath.basename(dest.rstrip("/")))
            pafs.copy_files(
                os.path.join(local, name),
                posixpath.join(dest, name),
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=fs,
            )
    except OSError as e:
        # Past the retries (S3_ATTEMPTS per request): say what was being written. Without
        # its marker the directory is never trusted; what was written before is untouched.
        s3 = fs.type_name == "s3"
        where = f"s3://{dest} (each request tried {S3_ATTEMPTS} times)" if s3 else dest
        raise OSError(f"could not write {where}: {e}") from e


def check_writable(loc: Location, *, field: str = STORAGE_FIELD) -> None:
    """Fail before any worker starts if ``loc`` cannot be written, saying what to fix."""
    if is_s3(loc.uri):
        bucket, _ = _bucket_key(loc)
        # boto3 first: its error codes tell a missing bucket from bad credentials from an
        # unreachable endpoint, quickly. Then a real write through pyarrow, the path that
        # checkpoints take, in case these credentials may read but not write.
        with _s3_errors(loc.uri, field, bucket=bucket):
            _s3_client(quick=True).head_bucket(Bucket=bucket)
    probe = loc.child(f".ganops-write-test-{uuid.uuid4().hex[:8]}")
    try:
        loc.fs.create_dir(loc.path, recursive=True)
        write_bytes(probe, b"ok")
        loc.fs.delete_file(probe.path)
    except OSError as e:
        if is_s3(loc.uri) and ("ACCESS_DENIED" in str(e) or "AccessDenied" in str(e)):
            raise _denied(loc.uri, field, "writing was refused") from None
        reason = e.strerror or str(e)
        raise _user_error(
            f"{field}: cannot write to {loc.uri} ({reason}); use a writable location or fix {field}"
        ) from None


# --- whole prefixes (datasets) ------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """One file under a prefix, as its listing describes it."""

    name: str
    """Path relative to the prefix, ``/``-separated."""
    size: int
    etag: str | None
    """The S3 ETag (None locally)."""
    mtime: str
    """Last modification, ISO 8601."""


def list_tree(src: Location, *, field: str = STORAGE_FIELD) -> list[ObjectInfo]:
    """Every file under ``src``, recursively, sorted by name (empty if there are none)."""
    if not is_s3(src.uri):
        return _list_local(Path(src.path))
    bucket, prefix = _bucket_key(src)
    prefix = f"{prefix}/" if prefix else ""
    found = []
    with _s3_errors(src.uri, field, bucket=bucket):
        pages = _s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if not name or name.endswith("/"):
                    continue  # a "directory" marker (pyarrow and consoles create them); no data
                _check_relative(name, src.uri, field)
                found.append(ObjectInfo(name, obj["Size"], obj.get("ETag"), obj["LastModified"].isoformat()))
    return sorted(found, key=lambda o: o.name)


def download_tree(
    src: Location, dest_dir: str, objects: list[ObjectInfo] | None = None, *, field: str = STORAGE_FIELD
) -> list[str]:
    """Copy every file under ``src`` (or just ``objects``, from ``list_tree``) into ``dest_dir``.

    Returns the relative names. Each file appears whole or not at all. On S3 a file is
    fetched only if its ETag still matches ``objects``, so what lands on disk is what the
    listing describes.
    """
    if objects is None:
        objects = list_tree(src, field=field)
    dest = Path(dest_dir)
    for d in sorted({(dest / o.name).parent for o in objects}):
        d.mkdir(parents=True, exist_ok=True)
    if not is_s3(src.uri):
        for o in objects:
            _write_atomically(dest / o.name, lambda f, o=o: _copy_local(Path(src.path, o.name), f))
        return [o.name for o in objects]

    bucket, prefix = _bucket_key(src)
    client = _s3_client()

    def fetch(o: ObjectInfo) -> None:
        key = f"{prefix}/{o.name}" if prefix else o.name
        with _s3_errors(f"s3://{bucket}/{key}", field, bucket=bucket):
            extra = {"IfMatch": o.etag} if o.etag else {}
            body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
            _write_atomically(dest / o.name, lambda f: shutil.copyfileobj(body, f, _CHUNK))

    with ThreadPoolExecutor(max_workers=max(1, min(DOWNLOAD_THREADS, len(objects)))) as pool:
        futures = [pool.submit(fetch, o) for o in objects]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the first error is the one to report
            raise
    return [o.name for o in objects]


def _list_local(root: Path) -> list[ObjectInfo]:
    from datetime import datetime, timezone

    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            st = p.stat()
            mtime = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc).isoformat()
            found.append(ObjectInfo(p.relative_to(root).as_posix(), st.st_size, None, mtime))
    return sorted(found, key=lambda o: o.name)


def _copy_local(src: Path, out: IO[bytes]) -> None:
    with src.open("rb") as f:
        shutil.copyfileobj(f, out, _CHUNK)


def _write_atomically(path: Path, fill: Callable[[IO[bytes]], None]) -> None:
    tmp = path.with_name(f".{path.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as f:
            fill(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_relative(name: str, uri: str, field: str) -> None:
    # A key like "a/../../x" would be written outside the destination directory.
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise UserError(f"{field}: {uri} holds the object {name!r}, which is not a safe relative file name")


# --- S3 clients and errors -------------------------------------------------------------


def _bucket_key(loc: Location) -> tuple[str, str]:
    bucket, _, key = loc.uri[len("s3://") :].partition("/")
    return bucket, key.strip("/")


def _s3_client(*, quick: bool = False) -> Any:
    """A boto3 S3 client on the same endpoint and region as ``_s3_filesystem``.

    ``quick``: short timeouts and a single retry, for pre-flight checks.
    """
    import boto3
    from botocore.config import Config

    endpoint = _endpoint()
    config = Config(
        connect_timeout=CHECK_CONNECT_TIMEOUT_S if quick else CONNECT_TIMEOUT_S,
        read_timeout=CHECK_READ_TIMEOUT_S if quick else STALL_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": 2 if quick else 4},
        max_pool_connections=DOWNLOAD_THREADS,
    )
    # A session per client: boto3's default session is not safe to share between threads.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint[0] if endpoint else None, region_name=_region(), config=config)


def _where() -> str:
    endpoint = _endpoint()
    return f"{endpoint[0]} ({endpoint[1]})" if endpoint else "AWS S3"


@contextmanager
def _s3_errors(uri: str, field: str, *, bucket: str) -> Iterator[None]:
    """Turn the S3 failures a user can fix into ``UserError``s that say what to fix."""
    from botocore import exceptions as bx

    try:
        yield
    except bx.ClientError as e:
        user = _user_client_error(e, uri, field, bucket)
        if user is None:
            raise  # not something the user can fix from here: keep the traceback
        raise user from None
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as e:
        raise _user_error(f"{field}: no usable AWS credentials for {uri} ({e}); set {CREDENTIALS_HINT}") from None
    except bx.ProfileNotFound:
        profile = os.environ.get("AWS_PROFILE", "")
        raise _user_error(
            f"AWS_PROFILE: no profile {profile!r} in the AWS config files (~/.aws/config, ~/.aws/credentials), "
            f"needed for {uri}"
        ) from None
    except (bx.ConnectionError, bx.ReadTimeoutError) as e:
        endpoint = _endpoint()
        if endpoint:
            url, var = endpoint
            msg = f"{field}: cannot reach the S3 endpoint {url} for {uri} ({e}); check {var} and that the server is up"
        else:
            msg = (
                f"{field}: cannot reach AWS S3 for {uri} ({e}); check the network, or set AWS_ENDPOINT_URL "
                "for MinIO and other S3-compatible stores"
            )
        raise _user_error(msg) from None


@contextmanager
def errors_as_user(uri: str, *, field: str = STORAGE_FIELD) -> Iterator[None]:
    """A pyarrow filesystem's (or the OS's) failure to read ``uri`` as a ``UserError`` naming
    ``field`` and ``uri``: a missing file, a denied bucket, an unreachable endpoint. pyarrow
    raises OSError for all of them, with AWS's reason in the text."""
    try:
        yield
    except FileNotFoundError:
        raise _user_error(f"{field}: {uri} does not exist") from None
    except PermissionError:
        raise _user_error(f"{field}: cannot read {uri} (permission denied)") from None
    except OSError as e:
        text = str(e)
        if "ACCESS_DENIED" in text or "403" in text:
            raise _denied(uri, field) from None
        if is_s3(uri) and ("NETWORK_CONNECTION" in text or "curlCode" in text or "Connection refused" in text):
            raise _user_error(f"{field}: cannot reach {_where()} for {uri} ({text[:200]})") from None
        raise _user_error(f"{field}: cannot read {uri} ({text[:300]})") from None


def _user_client_error(e: ClientError, uri: str, field: str, bucket: str) -> UserError | None:
    err = e.response.get("Error", {})
    code = str(err.get("Code", ""))
    meta = e.response.get("ResponseMetadata", {})
    status = meta.get("HTTPStatusCode")
    if code == "NoSuchBucket" or (code == "404" and e.operation_name == "HeadBucket"):
        return _user_error(f"{field}: bucket '{bucket}' does not exist at {_where()}; create it or fix {field}")
    if code in _DENIED or status == 403:
        detail = "" if code in ("403", "AccessDenied") else code
        return _denied(uri, field, detail)
    if code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
        actual = meta.get("HTTPHeaders", {}).get("x-amz-bucket-region")
        if actual:
            return _user_error(
                f"{field}: bucket '{bucket}' is in region {actual}, not {_region() or 'the default'}; "
                f"set {'AWS_REGION' if os.environ.get('AWS_REGION') else 'AWS_DEFAULT_REGION'}={actual}"
            )
    if code == "PreconditionFailed":
        return _user_error(f"{field}: {uri} changed while it was being downloaded; run again")
    if code in ("NoSuchKey", "404"):
        return _user_error(f"{field}: {uri} disappeared while it was being downloaded; is something deleting it?")
    return None


def _denied(uri: str, field: str, detail: str = "") -> UserError:
    why = f" ({detail})" if detail else ""
    return _user_error(f"{field}: access to {uri} was denied{why}; check the AWS credentials ({CREDENTIALS_HINT})")


def _user_error(msg: str) -> UserError:
    # Belt and braces: no AWS error text carries a secret, but an exception's text is not ours.
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        secret = os.environ.get(var)
        if secret:
            msg = msg.replace(secret, "***")
    return UserError(msg)
