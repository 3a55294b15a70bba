"""The custom objects the CLI creates: a GANJob or GANGeneration from a validated spec."""

from __future__ import annotations

from typing import Any

from ganops.entrypoint import without_nulls
from ganops.k8s import GROUP, VERSION


def custom_object(job: Any, namespace: str | None = None) -> dict[str, Any]:
    """``job``: a ``GANJob`` or ``GANGeneration``; the body to create (no status)."""
    # Unset fields are left out, as in any Kubernetes object (v1.20 checks a null against
    # the field's enum and refuses it).
    doc = without_nulls(job.to_dict())
    meta: dict[str, Any] = {"name": job.metadata.name}
    if job.metadata.labels:
        meta["labels"] = dict(job.metadata.labels)
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": doc["kind"], "metadata": meta, "spec": doc["spec"]}
