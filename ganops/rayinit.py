"""Starting or joining Ray, and the environment its workers get: one place for both.

Training and generation start the same embedded Ray (or join the same cluster) and pass
their workers the same non-secret settings, so neither reaches into the other for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Ray's own chatter (usage stats, dashboards) is off for an embedded run on a laptop.
_EMBEDDED_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120"}
# Only when ganops starts the Ray itself. Ray Train's controller notices that the workers
# have finished when it next polls them, every 2 s by default: a short run then waits 1 s on
# average for fit() to return. A few workers on one machine can be polled 4 times a second.
_LOCAL_ONLY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


# Settings that workers on another machine need to reach the same storage and tracking
# server. Names only of non-secret settings: credentials come from each node's own
# environment (an instance role, a Kubernetes Secret), never through Ray.
WORKER_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
    "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_DISABLE_TELEMETRY", "GANOPS_CACHE", "GANOPS_INCEPTION_URL", "GANOPS_TIMINGS",
    "GANOPS_FAULT",
)  # fmt: skip


def embedded_env() -> dict[str, str]:
    """The settings an embedded Ray is started with (``init_ray`` sets the unset ones)."""
    return {**_EMBEDDED_ENV, **_LOCAL_ONLY_ENV}


def worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in WORKER_ENV if os.environ.get(k)}


def init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start the embedded Ray; returns True when embedded."""
    import ray

    if ray.is_initialized():
        return not address
    for k, v in _EMBEDDED_ENV.items():
        os.environ.setdefault(k, v)
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    # Worker output stays in Ray's log files: a failure reaches the user through the
    # exception fit() raises, without every rank's traceback printed twice before it.
    # address="local": always a new Ray, never one that `ray start` left on this machine.
    for k, v in _LOCAL_ONLY_ENV.items():  # before ray.init: its processes inherit the environment
        os.environ.setdefault(k, v)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return True


@dataclass(frozen=True)
class Shortfall:
    """Why ``workers`` Ray actors (or Train workers) of one size can never all be placed."""

    resource: str
    """The missing resource ("CPU", "GPU", a custom one)."""
    need: float
    """All workers together, or (``per_node``) one worker."""
    have: float
    """The whole cluster, or (``per_node``) what its largest node has of ``resource``."""
    per_node: bool = False
    """The cluster holds enough in all, but no single node holds one worker."""

    def describe(self, per_worker: dict[str, float]) -> str:
        shown = ", ".join(f"{k}: {v:g}" for k, v in per_worker.items())
        if self.per_node:
            return f"no single Ray node has {{{shown}}} (a worker runs on one node)"
        return f"{self.resource} {self.need:g} in all, but the Ray cluster has {self.resource} {self.have:g}"


def shortfall(per_worker: dict[str, float], workers: int) -> Shortfall | None:
    """What keeps ``workers`` workers of ``per_worker`` each from ever being placed on the
    Ray this process is connected to; None when they fit.

    Ray alone would wait forever for resources that do not exist (a GPU on a CPU machine,
    more CPUs than the cluster has), so training and generation ask this before they start
    any worker, and fail at once naming their own setting.
    """
    import ray

    total = ray.cluster_resources()
    for key, amount in per_worker.items():
        need = amount * workers
        if need > total.get(key, 0.0):
            return Shortfall(key, need, total.get(key, 0.0))
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if nodes and not any(all(n.get(k, 0.0) >= v for k, v in per_worker.items()) for n in nodes):
        worst = max(per_worker, key=lambda k: per_worker[k] - max(n.get(k, 0.0) for n in nodes))
        return Shortfall(worst, per_worker[worst], max(n.get(worst, 0.0) for n in nodes), per_node=True)
    return None
