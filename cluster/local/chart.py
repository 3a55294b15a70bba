"""Install or upgrade the ganops chart in the local cluster, as `helm upgrade --install` would.

Helm comes as a library here (the helm-python-sdk wheel of the dev dependencies: Helm v4's
SDK behind a C ABI), so there is no helm binary to run.

    python chart.py --kubeconfig K --namespace NS --values FILE [--set KEY=VALUE ...]

``--set`` wins over ``--values`` (Helm's own parser reads it), and both over the chart's
values.yaml. Waiting for the pods is up.sh's job (``kubectl rollout status``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "ganops"


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged into a copy of ``base`` (maps merge, everything else is replaced)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def chart_for_v120(chart: Path, into: Path) -> Path:
    """A copy of ``chart`` without its kubeVersion constraint.

    The chart asks for Kubernetes 1.23+ because KubeRay's real v1 CRDs do; this cluster is
    v1.20 (the Kubernetes that builds from Debian's source) and gets permissive copies of those
    CRDs (crds.py), and everything the chart itself creates exists in v1.20.
    """
    copy = into / chart.name
    shutil.copytree(chart, copy)
    meta = copy / "Chart.yaml"
    meta.write_text(re.sub(r"(?m)^kubeVersion:.*\n", "", meta.read_text()))
    return copy


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--release", default="ganops")
    p.add_argument("--values", type=Path, required=True)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=int, default=300, help="seconds for the API calls")
    args = p.parse_args(argv)

    import helm_python

    values: dict[str, Any] = yaml.safe_load(args.values.read_text()) or {}
    for expr in args.sets:
        values = merged(values, helm_python.parse_set_string(expr))
    tmp = tempfile.TemporaryDirectory()
    with tmp, helm_python.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace) as cfg:
        chart = chart_for_v120(CHART, Path(tmp.name))
        try:
            cfg.status(args.release)
        except helm_python.HelmNotFoundError:
            cfg.install(chart, args.release, values, namespace=args.namespace, timeout=args.timeout)
            print(f"installed release {args.release} in namespace {args.namespace}", file=sys.stderr)
        else:
            cfg.upgrade(chart, args.release, values, namespace=args.namespace, timeout=args.timeout)
            print(f"upgraded release {args.release} in namespace {args.namespace}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
