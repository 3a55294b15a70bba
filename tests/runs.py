"""Training runs that several test modules read, each trained once per session (issue 26).

A run costs ~15 s of Ray Train start-up on 2 CPUs whatever it trains, so the tests that only
read a finished run share one. Readers do not change what others read: generation writes
runs of its own beside it; the champion fixture adds a best checkpoint, tags and another
registered model, none of which the other readers look at. A test that needs a run in a
state of its own (resumed, restarted, broken) trains its own, and says why.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from ganops.spec.models import GANJob


class Trained(NamedTuple):
    """A finished run: ``job, result = run`` as the tests have it, and where it is."""

    job: GANJob
    result: Any  # ganops.client's submit result

    @property
    def storage(self) -> str:
        return self.job.spec.storage

    @property
    def run_id(self) -> str:
        return str(self.result.mlflow_run_id)

    @property
    def tracking_uri(self) -> str:
        from ganops.tracking import embedded_store

        return self.job.spec.tracking.uri or embedded_store(self.storage)[0]


@pytest.fixture(scope="session")
def two_worker_run(ray_cluster: None, mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The main job (mnist_dcgan) on 2 workers: 3 epochs of 512 digits (24 steps), the newest 2
    checkpoints kept, its generator registered as ``gen-test``, in the embedded MLflow store.

    Read by test_train (checkpoints, grids, the store), test_generate (the generator, the
    champion) and test_progress_commands."""
    from tests.conftest import mnist_job, run

    storage = tmp_path_factory.mktemp("two-workers")
    job = mnist_job(storage, mnist_root, "spec.train.epochs=3", "spec.checkpoint.keep=2",
                    "spec.scaling.num_workers=2", "spec.tracking.register_as=gen-test")  # fmt: skip
    return Trained(job, run(job))


@pytest.fixture(scope="session")
def cgan_run(ray_cluster: None, mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The conditional job (mnist_cgan) with a hinge critic, 1 worker, 2 epochs of 256 digits
    (4 steps each, far fewer than its log_every_steps of 50), grids of 30 samples (3 per
    class). Read by test_train (grid rows), test_generate (class-conditional images) and
    test_tracking (a short run's curves, a critic's raw scores)."""
    from tests.conftest import mnist_job, run

    storage = tmp_path_factory.mktemp("cgan")
    job = mnist_job(storage, mnist_root, "spec.scaling.num_workers=1", "spec.data.limit=256", "spec.train.epochs=2",
                    "spec.samples.num=30", "spec.train.loss=hinge", "spec.train.log_every_steps=50",
                    job="mnist_cgan")  # fmt: skip
    return Trained(job, run(job))


TRACKED_MODEL = "mnist-dcgan-tracked"


def s3_keys(bucket: str, prefix: str = "") -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="session")
def tracked_run(ray_cluster: None, mlflow_server: str, s3_server: str, mnist_root: Path) -> dict[str, Any]:
    """The main job on 2 workers with its data, checkpoints and grids in S3 and its run on the
    session's MLflow server (generator registered as ``TRACKED_MODEL``): 2 epochs, then the
    same job resumed to 3. Read by test_tracking and test_mlflow_ui (the run's page)."""
    import boto3

    from ganops import client
    from tests.conftest import mnist_job

    bucket = f"runs-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for f in mnist_root.glob("t10k-*.gz"):  # the workers read MNIST from the bucket too
        s3.upload_file(str(f), bucket, f"datasets/mnist/{f.name}")
    overrides = (
        "spec.scaling.num_workers=2", f"spec.tracking.uri={mlflow_server}", "spec.tracking.experiment=tracked",
        f"spec.tracking.register_as={TRACKED_MODEL}", f"spec.data.root=s3://{bucket}/datasets/mnist",
    )  # fmt: skip
    first_log: list[str] = []
    job = mnist_job(f"s3://{bucket}/team", mnist_root, *overrides, "spec.train.epochs=2")
    first = client.submit(job, show_progress=False, echo=first_log.append)
    keys_after_first = s3_keys(bucket)
    second_log: list[str] = []
    resumed_job = mnist_job(f"s3://{bucket}/team", mnist_root, *overrides, "spec.train.epochs=3")
    second = client.submit(resumed_job, show_progress=False, echo=second_log.append)
    return {
        "bucket": bucket, "job": job, "first": first, "second": second, "keys_after_first": keys_after_first,
        "logs": first_log + second_log, "resumed_job": resumed_job, "uri": mlflow_server,
    }  # fmt: skip
