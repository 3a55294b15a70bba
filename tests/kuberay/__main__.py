"""``python -m tests.kuberay``: run the KubeRay stand-in until SIGTERM or SIGINT.

Follows ray-operator/main.go in what it takes: a kubeconfig, a namespace to watch (all by
default) and the operator's environment variables (ENABLE_RAY_HEAD_CLUSTER_IP_SERVICE,
ENABLE_PROBES_INJECTION, CLUSTER_DOMAIN, ...; see names.py). The dashboard address and token
are the stand-in's own options (see dashboard.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from tests.kuberay import dashboard, log
from tests.kuberay.api import Kube, load_client
from tests.kuberay.controller import StandIn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.kuberay", description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)")
    p.add_argument("--namespace", help="watch this namespace only (default: all namespaces)")
    p.add_argument("--dashboard-address", default="service-ip",
                   help="where the Ray dashboard is reached: service-ip (the head Service's IP as the "
                        "RayCluster reports it; default), fqdn (the head Service's DNS name, as KubeRay "
                        "dials it) or a URL used for every cluster")  # fmt: skip
    p.add_argument("--dashboard-token-file",
                   help="a Ray auth token, sent as X-Ray-Authorization: Bearer (default: $RAY_AUTH_TOKEN; "
                        "none: a `ray start --head` cluster has no token auth unless configured)")  # fmt: skip
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reconcile rounds (default 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.setup()
    try:
        resolve = dashboard.resolver(args.dashboard_address)
    except ValueError as e:
        print(f"python -m tests.kuberay: {e}", file=sys.stderr)
        return 2
    token = Path(args.dashboard_token_file).read_text().strip() if args.dashboard_token_file else None
    token = token or os.environ.get("RAY_AUTH_TOKEN") or None
    standin = StandIn(Kube(load_client(args.kubeconfig)), dashboard.Dashboard(resolve, token), args.namespace)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.action(f"got {signal.Signals(signum).name}; stopping")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    standin.run(stop, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
