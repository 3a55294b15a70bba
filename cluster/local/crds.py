"""KubeRay's CRDs (RayCluster, RayJob) in a form a v1.20 API server accepts, as YAML on stdout.

v1.20 rejects the real ones (their schemas have empty-string defaults): each version keeps its
names, subresources and printer columns with a schema that keeps every field. The one
implementation is the KubeRay stand-in's (tests/kuberay/crds.py), which reads the real CRDs
from ../shared/kuberay/crds. Usage: python crds.py | kubectl apply -f -
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.kuberay

from tests.kuberay.crds import permissive_crd


def main() -> int:
    yaml.safe_dump_all([permissive_crd(k) for k in ("RayCluster", "RayJob")], sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
