"""The command a remote Ray driver runs: the same ``ganops`` CLI, with the spec inline.

The resolved spec travels base64-encoded in the entrypoint itself, so the driver needs
no shared file system, ConfigMap or upload; ``ray job list`` and the RayJob show exactly
what ran. Credentials are never part of it (they come from the pods' environment).
"""

from __future__ import annotations

import base64
import shlex
from typing import Any

import yaml

from ganops.spec.generation import GANGeneration
from ganops.spec.models import GANJob

STOP_GRACE_S = 60
"""Seconds between Ray's SIGTERM and its SIGKILL when a training job is stopped.

Ray's default (RAY_JOB_STOP_WAIT_TIME_S, 3 s) is too short on a busy node for the workers
to reach their next stop check and write a checkpoint (measured: 1-7 s on 2 CPUs), and
too short for the driver to then close its MLflow run and exit (measured: ~12 s). Ray's
job supervisor reads the variable from its own environment: the ray target sets it in the
job's runtime_env env_vars, the k8s target in the Ray head pod's environment."""


def encode_spec(job: GANJob | GANGeneration) -> str:
    """The spec without its unset fields (the driver fills defaults in again): shorter."""
    doc = without_nulls(job.to_dict())
    return base64.b64encode(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100).encode()).decode()


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def decode_spec(b64: str) -> str:
    return base64.b64decode(b64.encode(), validate=True).decode()


def train_command(job: GANJob, *, restart: bool = False, restart_token: str | None = None) -> str:
    """``ganops submit`` on the cluster's own Ray (RAY_ADDRESS there); it resumes by itself.

    ``restart_token`` (with ``restart``): start over once per token, so that a retried
    driver (a RayJob's next attempt, ``backoffLimit``) resumes instead of starting over again.
    """
    # --target local: the driver trains right there, whatever GANOPS_TARGET the node has.
    args = ["ganops", "submit", "--target", "local", "--spec-b64", encode_spec(job)]
    if restart and restart_token:
        args += ["--restart-token", restart_token]
    elif restart:
        args.append("--restart")
    return shlex.join(args)


def generate_command(gen: GANGeneration) -> str:
    """``ganops generate`` on the cluster's Ray with the GANGeneration itself: the driver
    validates the same spec the user's machine (or the operator) did, no flags in between."""
    return shlex.join(["ganops", "generate", "--target", "local", "--spec-b64", encode_spec(gen)])
