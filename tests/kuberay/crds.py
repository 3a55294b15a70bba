"""KubeRay's RayJob and RayCluster CRDs, made acceptable to an old API server.

Kubernetes v1.20 rejects KubeRay's real CRDs (their schemas have empty-string defaults), so the
kinds are served with a schema that keeps every field, exactly as tests/kube.py's
``permissive_rayjob_crd`` does for RayJob; tests/test_kuberay_standin.py checks the fields the
stand-in uses against the real schemas instead. Follows the CRD files that KubeRay ships
(helm-chart/kuberay-operator/crds/ray.io_rayclusters.yaml), copied in ../shared/kuberay/crds.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

KUBERAY_CRDS = Path(__file__).resolve().parents[3] / "shared" / "kuberay" / "crds"


@cache
def real_crd(kind: str) -> dict[str, Any]:
    """Read once: the files have 40 000 lines (libyaml's loader when there is one)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((KUBERAY_CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)


def real_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the served version v1."""
    (v1,) = [v for v in real_crd(kind)["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def permissive_crd(kind: str) -> dict[str, Any]:
    """The real CRD with its schema replaced by one that keeps every field."""
    real = copy.deepcopy(real_crd(kind))
    versions = [
        {
            "name": v["name"], "served": v["served"], "storage": v["storage"],
            "subresources": v.get("subresources", {}),
            "additionalPrinterColumns": v.get("additionalPrinterColumns", []),
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }
        for v in real["spec"]["versions"]
    ]  # fmt: skip
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": real["metadata"]["name"]},
        "spec": {**{k: real["spec"][k] for k in ("group", "names", "scope")}, "versions": versions},
    }
