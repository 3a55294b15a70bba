"""Where jobs run besides this machine: an existing Ray cluster (the Ray Jobs API) or
Kubernetes (GANJob objects that the ganops operator turns into KubeRay RayJobs).

Each target answers the same verbs (submit, status, list, logs, cancel) with the same
``JobStatus`` rows, so the CLI prints them one way.
"""

from __future__ import annotations

from ganops.targets.base import JobStatus, Target

TARGETS = ("local", "ray", "k8s")

__all__ = ["TARGETS", "JobStatus", "Target", "get"]


def get(target: str, *, address: str | None = None, namespace: str | None = None,
        all_namespaces: bool = False) -> Target:  # fmt: skip
    """The remote target named ``target`` (``ray`` or ``k8s``), connected."""
    if target == "ray":
        from ganops.targets.ray_jobs import RayJobsTarget

        return RayJobsTarget(address)
    if target == "k8s":
        from ganops.targets.k8s import K8sTarget

        return K8sTarget(namespace, all_namespaces=all_namespaces)
    raise ValueError(f"no remote target {target!r}")
