"""Shared fixtures: real services, started once per test session."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ganops.spec.models import GANJob
from tests.helpers import JOBS, REPO, MlflowServer
from tests.runs import cgan_run, tracked_run, two_worker_run  # noqa: F401 - session fixtures

MNIST = REPO.parent / "shared" / "datasets" / "mnist"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Variables a session fixture sets for the processes it serves (Ray's workers inherit them
# from the environment ray.init sees), by fixture name. A test sees them only when it asks
# for that fixture (directly or through another): none may pass because an earlier test
# happened to start a server.
SESSION_ENV: dict[str, dict[str, str]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reverse", action="store_true", help="run the collected tests in reverse order")


# What starts Ray, a server, the API server or a browser, and the tiers a test that asks for
# one may be in (make test-fast runs none of them).
SERVER_FIXTURES = {"ray_cluster", "s3_server", "mlflow_server", "kube_api", "browser", "ray_head", "bucket"}
TIER_MARKERS = ("slow", "heavy", "gpu", "e2e")


def _tier(item: pytest.Item) -> str | None:
    return next((m for m in TIER_MARKERS if item.get_closest_marker(m)), None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every test that starts a server carries its tier's marker: else make test-fast would
    # start it (as three tests of test_generate_bounded and the S3 tests once did, unmarked).
    unmarked = [
        f"{item.nodeid} (uses {', '.join(sorted(SERVER_FIXTURES & set(getattr(item, 'fixturenames', ()))))})"
        for item in items
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) and _tier(item) is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that start Ray or a server need a tier marker (slow, heavy or gpu):\n  " + "\n  ".join(unmarked)
        )
    # `pytest FILE --reverse`: a file's tests must pass in either order (no test may rely
    # on what an earlier one left behind).
    if config.getoption("--reverse"):
        items.reverse()


@pytest.fixture(autouse=True)
def _environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from the session's environment and leaves it as it found it."""
    before = dict(os.environ)
    for fixture, values in SESSION_ENV.items():
        if fixture not in request.fixturenames:
            for key in values:
                monkeypatch.delenv(key, raising=False)
    yield
    for key in set(os.environ) - set(before):
        os.environ.pop(key, None)
    os.environ.update({k: v for k, v in before.items() if os.environ.get(k) != v})
    # A session fixture this test started lazily (request.getfixturevalue) keeps its variables
    # for the session; monkeypatch takes them out again for the tests that do not ask for it.
    for values in SESSION_ENV.values():
        os.environ.update(values)


def mnist_job(storage: Path | str, mnist_root: Path, *overrides: str, job: str = "mnist_dcgan") -> GANJob:
    """A real job file, trimmed to seconds: the local MNIST test split, small batches."""
    base = [
        f"spec.data.root={mnist_root}",
        "spec.data.split=test",
        "spec.data.download=false",
        "spec.data.limit=512",
        "spec.train.batch_size=64",
        "spec.train.log_every_steps=2",
        "spec.samples.num=16",
        "spec.checkpoint.every_epochs=1",
        f"spec.storage={storage}",
    ]
    from ganops import client

    return client.load_job(JOBS / f"{job}.yaml", base + list(overrides))


def run(job: GANJob, **kw: object):
    """Submit in-process on the session's Ray, quietly."""
    from ganops import client

    return client.submit(job, show_progress=False, echo=lambda _m: None, **kw)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST files are expected at {MNIST} (the repo's ../shared/datasets/mnist)")
    return MNIST


# Credentials for the test S3 server only; they exist to prove they never leak.
S3_KEY_ID = "AKIAGANOPSTESTKEY0001"
S3_SECRET = "ganops-test-secret-never-logged-0123456789"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 endpoint (moto's server) on 127.0.0.1, configured the standard AWS way.

    The environment is set before Ray starts (``ray_cluster`` depends on this fixture),
    so workers inherit it as they would from a user's shell.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    values = {
        # The dataset cache of this session (workers inherit it, as from a user's shell).
        "GANOPS_CACHE": str(tmp_path_factory.mktemp("ganops-cache")),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    SESSION_ENV["s3_server"] = values
    yield endpoint
    server.stop()
    del SESSION_ENV["s3_server"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket per test (and the S3 server's variables for the test, also when
    it asks for the bucket lazily, after ``_environment`` has set the test's environment)."""
    import uuid

    import boto3

    if _tier(request.node) is None:  # asked for lazily (getfixturevalue): not seen at collection
        pytest.fail(f"{request.node.nodeid} starts the S3 server: mark it (or its parameter) slow")
    for key, value in SESSION_ENV["s3_server"].items():
        if key not in os.environ:  # taken out by _environment; a value the test set itself stays
            monkeypatch.setenv(key, value)

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server: SQLite metadata, artifacts proxied to the S3 server."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="mlflow")
    server = MlflowServer(
        tmp_path_factory.mktemp("mlflow-server"), artifacts="s3://mlflow/artifacts",
        env={"MLFLOW_S3_ENDPOINT_URL": s3_server},
    )  # fmt: skip
    server.start(timeout_s=120)
    yield server.uri
    server.stop()  # SIGKILL: nothing is read after the session, and a SIGTERM waits ~25 s on its workers


RAY_INIT: dict[str, Any] = {"address": "local", "num_cpus": 2, "include_dashboard": False, "log_to_driver": True}


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[None]:
    """One embedded Ray for the whole session (init costs ~10 s on 2 cores), started with the
    settings ganops starts its own embedded Ray with (Ray Train's controller polling the
    workers every 0.5 s instead of 2 s: each run's fit() returns ~2 s sooner)."""
    import ray

    from ganops.rayinit import embedded_env

    values = {k: v for k, v in embedded_env().items() if k not in os.environ}
    os.environ.update(values)
    SESSION_ENV["ray_cluster"] = values
    ray.init(**RAY_INIT)
    yield
    ray.shutdown()
    del SESSION_ENV["ray_cluster"]
    for k in values:
        os.environ.pop(k, None)


@pytest.fixture(autouse=True)
def _ray_left_idle(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on the session's Ray: its CPUs are free again, else Ray is restarted.

    A test that fails while its job still trains (a timeout, an assertion in another thread's
    wait) leaves that job holding the 2 CPUs, and every later job would wait for them until
    its own 10-min timeout (the likeliest cause of a CI run that ran past its 90 min). Restarting
    Ray ends the leaked job; the test that leaked it has already failed.
    """
    yield
    if "ray_cluster" not in request.fixturenames:
        return
    import ray

    if not ray.is_initialized():
        return

    def held() -> float:
        return ray.cluster_resources().get("CPU", 0.0) - ray.available_resources().get("CPU", 0.0)

    deadline = time.time() + 30  # a finished run's placement group takes a moment to go
    while held() > 0 and time.time() < deadline:
        time.sleep(0.5)
    if held() <= 0:
        return
    warnings.warn(f"{request.node.nodeid} left a job on the session's Ray holding {held():g} CPUs; Ray restarted",
                  stacklevel=1)  # fmt: skip
    ray.shutdown()
    ray.init(**RAY_INIT)


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real kube-apiserver (v1.20, etcd-backed) for the session, with KubeRay's RayJob
    kind served (permissive schema: see ``tests.kube.permissive_rayjob_crd``)."""
    from tests import kube

    api = kube.start(tmp_path_factory.mktemp("kube"))
    try:
        api.apply([kube.permissive_rayjob_crd()])
        yield api
    finally:
        api.stop()
