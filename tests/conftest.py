"""Shared fixtures: real services, started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "datasets" / "mnist"
JOBS = REPO / "jobs"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST files are expected at {MNIST} (the repo's ../shared/datasets/mnist)")
    return MNIST


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One embedded Ray for the whole session (init costs ~10 s on 2 cores)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield
    ray.shutdown()
