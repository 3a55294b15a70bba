"""The Ray dashboard's job API on a RayJob's cluster, as the operator's cancel uses it.

KubeRay's suspend deletes the Ray cluster at once (rayjob_controller.go: Suspending →
deleteClusterResources): the worker pods die without a last checkpoint. So ``cancel``
first stops the Ray job the way ``ray job stop`` does, which SIGTERMs the driver and
gives it RAY_JOB_STOP_WAIT_TIME_S (set on the head pod, ``ganops.entrypoint.STOP_GRACE_S``)
to have the workers checkpoint, and suspends the RayJob once the job is over.

KubeRay records where the dashboard is (``status.dashboardURL``, ``host:8265``) and the
submission id (``status.jobId``). Stopping is idempotent (Ray's supervisor sets an event;
the driver gets one SIGTERM however often it is asked). A token is sent when the operator
has one (found as Ray's clients find it: ``ganops.raytoken``), as KubeRay does for clusters
with token auth.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ganops.raytoken import auth_token

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
TIMEOUT_S = 5.0


def _request(dashboard: str, path: str, method: str = "GET") -> Any:
    base = dashboard if "://" in dashboard else f"http://{dashboard}"
    req = urllib.request.Request(base.rstrip("/") + path, method=method)
    token, _where = auth_token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
        return json.loads(r.read() or b"null")


def job_state(dashboard: str, job_id: str) -> str | None:
    """The Ray job's status (PENDING, RUNNING, STOPPED...), None if the cluster has no such job.

    Raises OSError when the dashboard cannot be reached."""
    try:
        info = _request(dashboard, f"/api/jobs/{job_id}")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
    return str(info.get("status")) if isinstance(info, dict) else None


def stop_job(dashboard: str, job_id: str) -> None:
    """Ask Ray to stop the job (SIGTERM to its driver, SIGKILL after the stop wait time)."""
    _request(dashboard, f"/api/jobs/{job_id}/stop", method="POST")
