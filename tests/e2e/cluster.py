"""The running local cluster, as the end-to-end job tests use it.

``Cluster`` holds the environment ``cluster/local/up.sh`` printed and runs the ``ganops``
CLI in it, as a user would after ``eval "$(cluster/local/up.sh)"``; it also reads what the
user would inspect afterwards: the GANJob, its pods, the S3 bucket and the MLflow server.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import helpers
from tests.helpers import REPO

GANOPS = REPO / ".venv" / "bin" / "ganops"
BUCKET = "ganops"
TERMINAL = {"Succeeded", "Failed", "Cancelled"}


@dataclass
class Cluster:
    env: dict[str, str]
    log: Path
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.env["GANOPS_NAMESPACE"]

    def ganops(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``ganops ARGS`` with the cluster's environment, from the repository root."""
        env = {**os.environ, **self.env, "MLFLOW_DISABLE_TELEMETRY": "true"}
        out = subprocess.run([str(GANOPS), *args], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=timeout, check=False)  # fmt: skip
        with self.log.open("a") as f:
            f.write(f"$ ganops {' '.join(args)}\n{out.stdout}{out.stderr}(exit {out.returncode})\n")
        if check and out.returncode != 0:
            raise AssertionError(f"ganops {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out

    def k8s(self, what: str = "core") -> Any:
        """A kubernetes API client (core, custom, batch) as the admin of the kube config."""
        if what not in self._clients:
            from kubernetes import client, config

            api = config.new_client_from_config(config_file=self.env["KUBECONFIG"])
            self._clients["core"] = client.CoreV1Api(api)
            self._clients["custom"] = client.CustomObjectsApi(api)
            self._clients["batch"] = client.BatchV1Api(api)
        return self._clients[what]

    def s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def status(self, name: str) -> dict[str, Any]:
        """``ganops status NAME -o json``."""
        return json.loads(self.ganops("status", name, "-n", self.namespace, "-o", "json").stdout)

    def ganjob(self, name: str, plural: str = "ganjobs") -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.k8s("custom").get_namespaced_custom_object(
                "ganops.io", "v1alpha1", self.namespace, plural, name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def phase(self, name: str) -> str | None:
        """The phase in the GANJob's (or GANGeneration's) status, read from the API server.

        For polling: each ``ganops status`` costs a CLI start (≈ 1.3 CPU-seconds), and polled
        every few seconds those took a quarter of the node's 2 CPUs from the pods it waited on.
        """
        for plural in ("ganjobs", "gangenerations"):
            obj = self.ganjob(name, plural)
            if obj is not None:
                return (obj.get("status") or {}).get("phase")
        return None

    def pods(self, selector: str) -> list[Any]:
        return self.k8s().list_namespaced_pod(self.namespace, label_selector=selector).items

    def wait(self, what: str, check: Callable[[], Any], timeout: float, every: float = 2) -> Any:
        """``check()``'s first truthy value, or an AssertionError after ``timeout`` seconds.

        Each wait's time is printed (``make e2e`` runs with ``-s``): where the tier's minutes go.
        """
        t0 = time.monotonic()
        try:
            return helpers.wait_for(what, check, timeout, every)
        except AssertionError as e:
            raise AssertionError(f"{e} (log: {self.log})") from None
        finally:
            print(f"  waited {time.monotonic() - t0:5.0f} s for {what}", flush=True)

    def wait_phase(self, name: str, phases: set[str], timeout: float) -> dict[str, Any]:
        """``ganops status NAME -o json`` once the phase (polled cheaply) is one of ``phases``."""
        self.wait(f"{name} in {sorted(phases)}", lambda: self.phase(name) in phases, timeout, every=5)
        return self.status(name)
