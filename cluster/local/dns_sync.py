"""Cluster DNS for the local cluster: the Services, as a hosts file that dnsmasq serves.

There is no CoreDNS package here, so dnsmasq answers the pods (kubelet's --cluster-dns), and
this loop keeps its addn-hosts file equal to the cluster's Services:

    <svc>.<ns>.svc.<domain>             the ClusterIP, or each ready endpoint when headless
    <hostname>.<svc>.<ns>.svc.<domain>  endpoints with a hostname (StatefulSet-style pods)

and sends dnsmasq SIGHUP (it re-reads the file) whenever the file changes. The short forms
(`svc`, `svc.ns`, `svc.ns.svc`) resolve through the search path kubelet gives every pod.

    python dns_sync.py --kubeconfig K --hosts FILE --dnsmasq-pidfile F [--node NAME=IP]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

POLL_S = 1.0  # a new Service is resolvable within a second; two small list calls a second


def hosts_lines(services: list[dict[str, Any]], endpoints: list[dict[str, Any]], domain: str) -> list[str]:
    """The addn-hosts lines for these Service and Endpoints objects (sorted, so equal input
    gives an equal file)."""
    by_name = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
    lines: set[str] = set()
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        fqdn = f"{meta['name']}.{meta['namespace']}.svc.{domain}"
        ip = spec.get("clusterIP")
        if spec.get("type") == "ExternalName":
            continue  # a CNAME, which a hosts file cannot say
        if ip and ip != "None":
            lines.add(f"{ip} {fqdn}")
            continue
        ep = by_name.get((meta["namespace"], meta["name"])) or {}
        for subset in ep.get("subsets") or []:
            for addr in subset.get("addresses") or []:
                lines.add(f"{addr['ip']} {fqdn}")
                if addr.get("hostname"):
                    lines.add(f"{addr['ip']} {addr['hostname']}.{fqdn}")
    return sorted(lines)


def _items(list_call: Any) -> list[dict[str, Any]]:
    # Raw JSON: the client's model objects cost far more CPU than the lookup needs, every second.
    return json.loads(list_call(_preload_content=False, _request_timeout=10).data)["items"]


def write_if_changed(path: Path, text: str) -> bool:
    """Replace ``path`` atomically with ``text``; False when it already held it."""
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def reload_dnsmasq(pidfile: Path) -> None:
    try:
        os.kill(int(pidfile.read_text().strip()), signal.SIGHUP)
    except (OSError, ValueError) as e:
        print(f"dns-sync: cannot signal dnsmasq ({e})", file=sys.stderr)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--hosts", type=Path, required=True)
    p.add_argument("--dnsmasq-pidfile", type=Path, required=True)
    p.add_argument("--domain", default="cluster.local")
    p.add_argument("--node", action="append", default=[], metavar="NAME=IP", help="extra host entries")
    args = p.parse_args(argv)

    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    extra = [f"{ip} {name}" for name, ip in (n.split("=", 1) for n in args.node)]
    while True:
        try:
            services = _items(core.list_service_for_all_namespaces)
            endpoints = _items(core.list_endpoints_for_all_namespaces)
        except Exception as e:  # noqa: BLE001 - the API server restarting is no reason to stop serving
            print(f"dns-sync: {type(e).__name__}: {e}", file=sys.stderr)
            time.sleep(2 * POLL_S)
            continue
        text = "\n".join(extra + hosts_lines(services, endpoints, args.domain)) + "\n"
        if write_if_changed(args.hosts, text):
            print(f"dns-sync: {text.count(chr(10))} names", file=sys.stderr)
            reload_dnsmasq(args.dnsmasq_pidfile)
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
