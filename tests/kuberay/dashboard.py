"""The Ray dashboard's Jobs REST API, as KubeRay's RayJob controller queries it.

Follows (ray-project/kuberay):
  ray-operator/controllers/ray/utils/dashboardclient/dashboard_httpclient.go  GetJobInfo
      (GET /api/jobs/<submission id>; 404 means "not submitted yet"), StopJob
      (POST /api/jobs/<id>/stop), setAuthHeader (``x-ray-authorization: Bearer <token>``)
  ray-operator/controllers/ray/utils/types/dashboard_httpclient.go  RayJobInfo (the JSON fields)
  ray-operator/controllers/ray/utils/util.go  GetRayDashboardClientFunc ("http://" + the RayJob's
      status.dashboardURL, a 2 s timeout; the token from the cluster's auth Secret)

Authentication (Ray 2.60, python/ray/_private/authentication/authentication_token_setup.py,
http_token_authentication.py and python/ray/scripts/scripts.py): ``ray.init()`` starting a new
local cluster turns token auth on by default, but ``ray start --head`` (what KubeRay's pods run)
turns it on only when RAY_AUTH_MODE=token is set or a token already exists (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token). So a ganops head pod serves /api/jobs without a token.
When auth is on, the dashboard takes ``Authorization: Bearer`` or ``X-Ray-Authorization: Bearer``;
KubeRay sends the latter, and so does this client when given a token.

Simplifies: where the dashboard is reached is pluggable (``resolver``), since the stand-in may
run outside the cluster network where cluster DNS does not resolve; KubeRay reads the token from
the Secret of the RayCluster's authOptions, the stand-in from a file or RAY_AUTH_TOKEN.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.kuberay import names as n
from tests.kuberay.fields import Reader

# (RayJob, RayCluster) -> the dashboard's base URL, e.g. "http://10.0.0.12:8265".
Resolver = Callable[[dict[str, Any], dict[str, Any]], str]


def _dashboard_port(rayjob: dict[str, Any]) -> str:
    url = Reader("RayJob", rayjob).get("status.dashboardURL", "")
    return url.rsplit(":", 1)[1] if ":" in url else str(n.DEFAULT_DASHBOARD_PORT)


def service_ip(rayjob: dict[str, Any], cluster: dict[str, Any]) -> str:
    """The head Service's IP as the RayCluster reports it (status.head.serviceIP: the ClusterIP,
    or the head pod's IP for KubeRay's default headless Service); routable from a node."""
    ip = Reader("RayCluster", cluster).get("status.head.serviceIP")
    if not ip:
        raise DashboardError("the RayCluster reports no status.head.serviceIP yet")
    return f"http://{ip}:{_dashboard_port(rayjob)}"


def fqdn(rayjob: dict[str, Any], cluster: dict[str, Any]) -> str:
    """What KubeRay dials: the head Service's DNS name (status.dashboardURL)."""
    return "http://" + Reader("RayJob", rayjob).get("status.dashboardURL", "")


def fixed(url: str) -> Resolver:
    """One dashboard for every cluster (a port-forward, or a test's fake)."""
    return lambda _rayjob, _cluster: url.rstrip("/")


def resolver(spec: str) -> Resolver:
    """From --dashboard-address: ``service-ip`` (default), ``fqdn`` or a URL."""
    if spec == "service-ip":
        return service_ip
    if spec == "fqdn":
        return fqdn
    if spec.startswith(("http://", "https://")):
        return fixed(spec)
    raise ValueError(f"--dashboard-address: expected service-ip, fqdn or an http:// URL (got {spec!r})")


class DashboardError(Exception):
    pass


@dataclass(frozen=True)
class JobInfo:
    """utiltypes.RayJobInfo, the fields KubeRay uses."""

    status: str
    message: str
    start_time: int  # ms since the epoch, 0 if unknown
    end_time: int


class Dashboard:
    def __init__(self, resolve: Resolver, token: str | None = None, timeout: float = 2.0) -> None:
        self.resolve, self.token, self.timeout = resolve, token, timeout

    def _request(self, method: str, url: str) -> tuple[int, bytes]:
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("x-ray-authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError as e:
            raise DashboardError(f"{method} {url}: {e}") from None

    def job_info(self, rayjob: dict[str, Any], cluster: dict[str, Any], job_id: str) -> JobInfo | None:
        """None: the dashboard does not know the job (not submitted yet)."""
        url = f"{self.resolve(rayjob, cluster)}/api/jobs/{job_id}"
        status, body = self._request("GET", url)
        if status == 404:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            raise DashboardError(f"GetJobInfo fail: {status} {body[:200]!r}") from None
        if not isinstance(data, dict):
            raise DashboardError(f"GetJobInfo fail: {status} {body[:200]!r}")
        return JobInfo(
            status=data.get("status") or "",
            message=data.get("message") or "",
            start_time=int(data.get("start_time") or 0),
            end_time=int(data.get("end_time") or 0),
        )

    def stop_job(self, rayjob: dict[str, Any], cluster: dict[str, Any], job_id: str) -> None:
        status, body = self._request("POST", f"{self.resolve(rayjob, cluster)}/api/jobs/{job_id}/stop")
        if not 200 <= status <= 299:
            raise DashboardError(f"StopJob fail: {status} {body[:200]!r}")
