"""Storage on a local directory and on a real S3 server (moto's, from conftest), and datasets
read from ``s3://`` through the per-machine cache. No mocks: the failures are caused for real
(a missing bucket, a closed port, IAM enforcement switched on in the server)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import numpy as np
import pytest

import ganops.data as data
from ganops import storage
from ganops.data.remote import local_root
from ganops.errors import UserError
from ganops.spec.models import DataSpec
from tests.conftest import S3_SECRET
from tests.formats import random_images, random_labels, write_idx

MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DENIED_HINT = "check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
OTHER_SECRET = "wrong-secret-that-must-not-leak-9876543210"


def message(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    """The error's text, after checking that no secret made it into it."""
    text = str(excinfo.value)
    assert S3_SECRET not in text and OTHER_SECRET not in text
    return text


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return tmp_path / "cache"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])  # s3: the S3 server
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage root: a local directory, or a prefix in a fresh bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return f"s3://{request.getfixturevalue('bucket')}/store"


@pytest.fixture
def gets(caplog: pytest.LogCaptureFixture) -> Callable[[str, str], int]:
    """``gets(bucket, key)``: how many GETs of that object the S3 server has answered.

    Read from the server's own access log (werkzeug logs each request line before it sends
    the response, so a finished call has been counted).
    """
    caplog.set_level(logging.INFO, logger="werkzeug")

    def count(bucket: str, key: str) -> int:
        line = re.compile(rf'"(?:\x1b\[[0-9;]*m)*GET /{re.escape(bucket)}/{re.escape(key)} HTTP/')
        return sum(1 for r in caplog.records if r.name == "werkzeug" and line.search(r.getMessage()))

    return count


def upload(bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    s3 = boto3.client("s3")
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the storage API, the same on both backends ------------------------------------------


def test_files_round_trip_the_same_way_locally_and_on_s3(base: str, tmp_path: Path) -> None:
    job = storage.locate(storage.join(base, "job"))
    assert not storage.exists(job.child("a.txt")) and storage.list_dir(job) == []

    storage.write_bytes(job.child("a.txt"), b"one")
    storage.write_bytes(job.child("sub", "b.bin"), bytes(range(256)))
    storage.write_bytes(job.child("a.txt"), b"two, longer")
    assert storage.read_bytes(job.child("a.txt")) == b"two, longer"
    assert storage.exists(job.child("sub", "b.bin"))
    assert storage.list_dir(job) == ["a.txt", "sub"]  # no temporary files left behind

    moved = storage.locate(storage.join(base, "moved"))
    storage.move_dir(job, moved)
    assert not storage.exists(job.child("a.txt"))
    assert storage.list_dir(moved) == ["a.txt", "sub"]
    assert storage.read_bytes(moved.child("sub", "b.bin")) == bytes(range(256))

    listing = storage.list_tree(moved)
    assert [(o.name, o.size) for o in listing] == [("a.txt", 11), ("sub/b.bin", 256)]
    names = storage.download_tree(moved, str(tmp_path / "copy"))
    assert names == ["a.txt", "sub/b.bin"]
    assert (tmp_path / "copy" / "a.txt").read_bytes() == b"two, longer"
    assert (tmp_path / "copy" / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert sorted(p.name for p in (tmp_path / "copy").rglob("*")) == ["a.txt", "b.bin", "sub"]


def test_check_writable_passes_and_leaves_no_probe_file(base: str) -> None:
    job = storage.locate(storage.join(base, "job"))
    storage.check_writable(job)
    assert storage.list_dir(job) == []
    storage.write_bytes(job.child("spec.yaml"), b"x: 1")
    assert storage.read_bytes(job.child("spec.yaml")) == b"x: 1"


# --- check_writable fails fast, saying what to fix ---------------------------------------


@pytest.mark.slow  # the S3 server
def test_a_missing_bucket_is_named_with_the_endpoint(s3_server: str) -> None:
    with pytest.raises(UserError) as e:
        storage.check_writable(storage.locate("s3://no-such-bucket-ganops/runs/job"))
    assert message(e) == (
        f"spec.storage: bucket 'no-such-bucket-ganops' does not exist at {s3_server} (AWS_ENDPOINT_URL); "
        "create it or fix spec.storage"
    )


@pytest.mark.parametrize("var", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
@pytest.mark.slow  # the S3 server
def test_an_unreachable_endpoint_fails_within_seconds_naming_it(
    bucket: str, var: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv(var, url)  # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        storage.check_writable(storage.locate(f"s3://{bucket}/runs/job"))
    assert time.monotonic() - t0 < 5
    msg = message(e)
    assert msg.startswith(f"spec.storage: cannot reach the S3 endpoint {url} for s3://{bucket}/runs/job")
    assert msg.endswith(f"check {var} and that the server is up")


def test_an_endpoint_that_is_not_a_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "minio:9000")
    with pytest.raises(UserError) as e:
        storage.locate("s3://b/runs")
    assert message(e) == "AWS_ENDPOINT_URL: 'minio:9000' is not a URL; use http://host:port or https://host"


def test_an_unwritable_local_directory_is_named(tmp_path: Path) -> None:
    # A path below a regular file: unwritable even for root (a chmod would not stop root).
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "runs" / "job"
    with pytest.raises(UserError) as e:
        storage.check_writable(storage.locate(str(target)))
    msg = message(e)
    assert msg.startswith(f"spec.storage: cannot write to {target} (")
    assert msg.endswith("use a writable location or fix spec.storage")


def test_a_failed_local_checkpoint_write_names_the_directory_and_no_s3_retries(tmp_path: Path) -> None:
    # A checkpoint as checkpoints.py uploads it: its files, the marker last.
    local = tmp_path / "epoch_0001"
    local.mkdir()
    (local / "state.pt").write_bytes(b"state")
    (local / "marker.json").write_text("{}")
    # A destination below a regular file: the write fails even for root, on the local disk.
    (tmp_path / "a-file").write_text("")
    dest = tmp_path / "a-file" / "checkpoints" / "epoch_0001"
    loc = storage.locate(str(dest))
    with pytest.raises(OSError) as e:
        storage.replace_dir_from_local(str(local), loc.fs, loc.path, last="marker.json")
    msg = str(e.value)
    # A local disk error is not retried: naming S3's retry count would send the reader to
    # look for a flaky S3 server that is not there.
    assert msg.startswith(f"could not write {dest}: "), msg
    assert "Not a directory" in msg  # and why: the OS's reason
    assert "each request tried" not in msg and "s3://" not in msg, msg


@pytest.fixture
def no_aws_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing but the environment provides credentials (no files, no instance metadata)."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.slow  # the S3 server
def test_missing_credentials_say_which_variables_to_set(
    bucket: str, no_aws_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError) as e:
        storage.check_writable(storage.locate(f"s3://{bucket}/runs"))
    assert message(e) == (
        f"spec.storage: no usable AWS credentials for s3://{bucket}/runs (Unable to locate credentials); "
        "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    )


@pytest.mark.slow  # the S3 server
def test_an_unknown_aws_profile_is_named(bucket: str, no_aws_config: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(UserError) as e:
        storage.check_writable(storage.locate(f"s3://{bucket}/runs"))
    assert message(e) == (
        "AWS_PROFILE: no profile 'no-such-profile' in the AWS config files (~/.aws/config, ~/.aws/credentials), "
        f"needed for s3://{bucket}/runs"
    )


# --- credentials, with the S3 server enforcing IAM ------------------------------------------


@pytest.fixture
def iam_user(s3_server: str) -> Callable[[list[str] | None], tuple[str, str]]:
    """``iam_user(actions)``: keys of a new IAM user allowed ``actions`` on S3 (none when None)."""
    iam = boto3.client("iam")

    def make(actions: list[str] | None) -> tuple[str, str]:
        name = f"u{time.monotonic_ns()}"
        iam.create_user(UserName=name)
        if actions:
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    return make


@contextmanager
def iam_enforced() -> Iterator[None]:
    """The S3 server checks signatures and IAM policies meanwhile (moto accepts any key otherwise)."""

    def reset_auth(free_requests: str) -> None:
        url = f"{os.environ['AWS_ENDPOINT_URL']}/moto-api/reset-auth"
        req = urllib.request.Request(url, data=free_requests.encode(), headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=5).read()

    reset_auth("0")
    try:
        yield
    finally:
        reset_auth("inf")


def use_keys(monkeypatch: pytest.MonkeyPatch, key_id: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


@pytest.mark.slow  # the S3 server
def test_credentials_the_server_does_not_know_are_denied_without_leaking_the_secret(bucket: str) -> None:
    # The session's own keys (conftest's S3_SECRET) belong to no IAM user.
    uri = f"s3://{bucket}/runs/job"
    with iam_enforced(), pytest.raises(UserError) as e:
        storage.check_writable(storage.locate(uri))
    assert message(e) == f"spec.storage: access to {uri} was denied; {DENIED_HINT}"


@pytest.mark.slow  # the S3 server
def test_a_wrong_secret_is_denied_for_storage_and_for_data(
    bucket: str, iam_user: Callable[[list[str] | None], tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, _ = iam_user(["s3:*"])
    upload(bucket, "mnist", {"x": b"x"})
    with iam_enforced():
        use_keys(monkeypatch, key_id, OTHER_SECRET)
        with pytest.raises(UserError) as e:
            storage.check_writable(storage.locate(f"s3://{bucket}/runs"))
        assert message(e) == f"spec.storage: access to s3://{bucket}/runs was denied; {DENIED_HINT}"
        with pytest.raises(UserError) as e:
            data.load(DataSpec(dataset="mnist", root=f"s3://{bucket}/mnist", split="test"))
        assert message(e) == (
            f"spec.data.root: access to s3://{bucket}/mnist was denied (SignatureDoesNotMatch); {DENIED_HINT}"
        )


@pytest.mark.slow  # the S3 server
def test_keys_without_a_policy_are_denied_and_keys_with_one_pass(
    bucket: str, iam_user: Callable[[list[str] | None], tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody, allowed = iam_user(None), iam_user(["s3:*"])
    uri = f"s3://{bucket}/runs/job"
    with iam_enforced():
        use_keys(monkeypatch, *nobody)
        with pytest.raises(UserError) as e:
            storage.check_writable(storage.locate(uri))
        assert message(e) == f"spec.storage: access to {uri} was denied; {DENIED_HINT}"
        use_keys(monkeypatch, *allowed)
        storage.check_writable(storage.locate(uri))  # the same check passes: enforcement is real


@pytest.mark.slow  # the S3 server
def test_keys_that_may_read_but_not_write_are_denied_at_the_write(
    bucket: str, iam_user: Callable[[list[str] | None], tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # AWS authorises HeadBucket by s3:ListBucket; moto asks for an action of its own name.
    reader = iam_user(["s3:ListBucket", "s3:HeadBucket", "s3:GetObject"])
    uri = f"s3://{bucket}/runs/job"
    with iam_enforced():
        use_keys(monkeypatch, *reader)
        with pytest.raises(UserError) as e:
            storage.check_writable(storage.locate(uri))
        assert message(e) == f"spec.storage: access to {uri} was denied (writing was refused); {DENIED_HINT}"


# --- datasets from s3:// -------------------------------------------------------------------


@pytest.fixture
def mnist_on_s3(bucket: str, mnist_root: Path) -> str:
    upload(bucket, "mnist", {name: (mnist_root / name).read_bytes() for name in MNIST_FILES})
    return f"s3://{bucket}/mnist"


@pytest.mark.slow  # the S3 server
def test_mnist_from_s3_loads_the_same_10000_digits_as_the_local_files(mnist_on_s3: str, mnist_root: Path) -> None:
    s3_spec = DataSpec(dataset="mnist", root=mnist_on_s3, split="test")
    assert data.probe(s3_spec).num_images == 10_000
    ds = data.load(s3_spec)
    assert ds.images.shape == (10_000, 1, 28, 28)
    local = data.load(DataSpec(dataset="mnist", root=str(mnist_root), split="test"))
    np.testing.assert_array_equal(ds.images, local.images)
    np.testing.assert_array_equal(ds.labels, local.labels)


@pytest.mark.slow  # the S3 server
def test_a_second_load_uses_the_cache_without_downloading(
    mnist_on_s3: str, bucket: str, cache: Path, gets: Callable[[str, str], int]
) -> None:
    s3_spec = DataSpec(dataset="mnist", root=mnist_on_s3, split="test", limit=10)
    data.probe(s3_spec)
    cached = cache / "datasets" / bucket / "mnist" / MNIST_FILES[0]
    before = cached.stat()
    assert [gets(bucket, f"mnist/{n}") for n in MNIST_FILES] == [1, 1]
    data.load(s3_spec)
    data.load(s3_spec)
    assert [gets(bucket, f"mnist/{n}") for n in MNIST_FILES] == [1, 1]
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    marker = json.loads((cache / "datasets" / bucket / "mnist" / ".complete.json").read_text())
    assert marker["source"] == mnist_on_s3
    assert [(o["name"], o["size"]) for o in marker["objects"]] == [
        (n, (Path(cached.parent, n)).stat().st_size) for n in MNIST_FILES
    ]


@pytest.mark.slow  # the S3 server
def test_a_changed_dataset_on_s3_is_downloaded_again(
    bucket: str, tmp_path: Path, cache: Path, gets: Callable[[str, str], int]
) -> None:
    root = f"s3://{bucket}/digits"
    versions = []
    for n, seed in ((7, 1), (5, 2)):
        images, labels = random_images(n, (28, 28), seed=seed), random_labels(n, seed=seed)
        paths = write_idx(tmp_path / f"v{n}", "test", images, labels)
        versions.append((paths, images, labels))
    s3_spec = DataSpec(dataset="mnist", root=root, split="test")

    for paths, images, labels in versions:
        upload(bucket, "digits", {p.name: p.read_bytes() for p in paths})  # same keys, new content
        ds = data.load(s3_spec)
        np.testing.assert_array_equal(ds.images[:, 0], images)
        np.testing.assert_array_equal(ds.labels, labels)
    key = f"digits/{versions[0][0][0].name}"
    assert gets(bucket, key) == 2
    data.load(s3_spec)
    assert gets(bucket, key) == 2

    # An object removed from the prefix is removed from the copy, and nothing is left over.
    boto3.client("s3").delete_object(Bucket=bucket, Key=f"digits/{versions[0][0][1].name}")
    local = Path(local_root(root))
    assert sorted(p.name for p in local.iterdir()) == [".complete.json", versions[0][0][0].name]
    assert sorted(p.name for p in local.parent.iterdir()) == ["digits", "digits.lock"]


@pytest.mark.slow  # the S3 server
def test_a_changed_object_of_the_same_size_is_noticed(bucket: str) -> None:
    upload(bucket, "d", {"a.txt": b"one"})
    first = Path(local_root(f"s3://{bucket}/d"))
    upload(bucket, "d", {"a.txt": b"two"})  # same size, likely the same second: only the ETag differs
    assert Path(local_root(f"s3://{bucket}/d"), "a.txt").read_bytes() == b"two"
    assert first == Path(local_root(f"s3://{bucket}/d/"))


@pytest.mark.slow  # the S3 server
def test_concurrent_callers_on_one_machine_download_once(
    mnist_on_s3: str, bucket: str, gets: Callable[[str, str], int]
) -> None:
    # Two Ray workers and the driver's probe, released at the same instant: without the lock
    # each would find no copy and download its own.
    callers = 3
    barrier = threading.Barrier(callers)
    results: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            results.append(local_root(mnist_on_s3))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(results) == callers and len(set(results)) == 1
    assert [gets(bucket, f"mnist/{n}") for n in MNIST_FILES] == [1, 1]
    assert data.probe(DataSpec(dataset="mnist", root=results[0], split="test")).num_images == 10_000


@pytest.mark.slow  # the S3 server
def test_an_empty_or_missing_prefix_is_a_user_error(bucket: str) -> None:
    upload(bucket, "mnist2", {"x": b"x"})  # a neighbour whose name starts the same
    boto3.client("s3").put_object(Bucket=bucket, Key="mnist/", Body=b"")  # a "folder" some tools create
    for root in (f"s3://{bucket}/mnist", f"s3://{bucket}/nothing/here"):
        with pytest.raises(UserError) as e:
            data.load(DataSpec(dataset="mnist", root=root, split="test"))
        assert message(e) == (
            f"spec.data.root: no files under {root} (is the prefix right? upload the dataset's files there)"
        )


@pytest.mark.slow  # the S3 server
def test_a_missing_bucket_as_data_root_names_spec_data_root(s3_server: str) -> None:
    with pytest.raises(UserError) as e:
        data.probe(DataSpec(dataset="mnist", root="s3://no-such-bucket-ganops/mnist", split="test"))
    assert message(e) == (
        f"spec.data.root: bucket 'no-such-bucket-ganops' does not exist at {s3_server} (AWS_ENDPOINT_URL); "
        "create it or fix spec.data.root"
    )


@pytest.mark.slow  # the S3 server
def test_a_missing_split_on_s3_names_the_s3_location_not_the_cache(mnist_on_s3: str, cache: Path) -> None:
    with pytest.raises(UserError) as e:
        data.probe(DataSpec(dataset="mnist", root=mnist_on_s3, split="train"))
    msg = message(e)
    assert f"spec.data.root: the mnist train split is not in {mnist_on_s3}\n" in msg
    assert "found the test split" in msg and str(cache) not in msg


def test_download_with_an_s3_root_is_a_user_error_naming_the_field() -> None:
    with pytest.raises(UserError) as e:
        data.load(DataSpec(dataset="mnist", root="s3://bucket/mnist", download=True))
    assert message(e).startswith("spec.data.download: true fetches the official files into a local root")


def test_a_local_root_is_read_in_place() -> None:
    assert local_root("/data/mnist") == "/data/mnist"


def test_importing_ganops_data_imports_no_boto3() -> None:
    code = "import sys, ganops.data; print([m for m in ('boto3', 'botocore', 'pyarrow') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
