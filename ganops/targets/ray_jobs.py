"""The ``ray`` target: jobs on an existing Ray cluster through its Jobs API.

The address is the cluster's dashboard (``http://HEAD:8265``), from ``--address`` or
``RAY_ADDRESS``. A training job's driver runs ``ganops submit --spec-b64 ...`` on the
head node and joins the cluster through the RAY_ADDRESS that Ray sets for job drivers;
a generation job's driver runs ``ganops generate ...`` the same way.

What travels with a job: the entrypoint (the resolved spec, base64), metadata naming the
job, and as environment only the non-secret settings of ``rayinit.worker_env()`` (plus,
for training, RAY_JOB_STOP_WAIT_TIME_S: see ``STOP_GRACE_S``).
Credentials (AWS keys, the Ray token itself) never do: the drivers and workers take them
from the nodes' own environment.

Token authentication: the token is looked up the way Ray documents it -- ``RAY_AUTH_TOKEN``,
else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` -- and sent as
an ``Authorization: Bearer`` header, whether or not ``RAY_AUTH_MODE=token`` is set here
(Ray's own client only sends it when it is). ``RAY_AUTH_MODE=disabled`` sends none. The
token is never printed or logged; errors name where it came from, not what it is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from ganops.entrypoint import STOP_GRACE_S
from ganops.errors import UserError
from ganops.phases import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED
from ganops.raytoken import auth_token
from ganops.targets.base import JobStatus

T = TypeVar("T")

FLAG = "--address / RAY_ADDRESS"
META_JOB, META_KIND, META_STORAGE = "ganops.job", "ganops.kind", "ganops.storage"
ACTIVE = ("PENDING", "RUNNING")
PHASE = {"PENDING": PENDING, "RUNNING": RUNNING, "SUCCEEDED": SUCCEEDED, "FAILED": FAILED, "STOPPED": CANCELLED}
CONNECT_TIMEOUT_S = 10.0
CANCEL_WAIT_S = STOP_GRACE_S + 15.0
"""How long ``cancel`` waits for the driver to be gone before answering."""

TOKEN_HELP = (
    "set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token "
    "(`ray get-auth-token` on the head node prints it)"
)


def _utc(ms: int | None) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def mlflow_run_id(log: str) -> str | None:
    """The job's MLflow run, from its driver's output (the first one named)."""
    from ganops.tracking import run_id_in

    return run_id_in(log)


def check_address(address: str | None) -> str:
    """The Jobs API URL, or a UserError naming --address / RAY_ADDRESS."""
    if not address or not address.strip():
        raise UserError(
            "--target ray needs the Ray cluster's Jobs API address: pass --address http://HEAD:8265 "
            "or set RAY_ADDRESS (the dashboard's address; 8265 is its default port)"
        )
    a = address.strip().rstrip("/")
    scheme = a.split("://", 1)[0].lower() if "://" in a else ""
    if scheme in ("http", "https"):
        return a
    if a == "auto":
        why = "'auto' finds a cluster for local runs (--target local)"
    elif scheme == "ray":
        why = "that is a Ray Client address"
    elif re.fullmatch(r"\[?[\w.:-]+\]?:\d+", a):
        why = "that looks like a GCS address, the one nodes join with"
    else:
        why = "it is not an http(s) URL"
    raise UserError(
        f"{FLAG}: {address!r} is not a Jobs API address ({why}); --target ray talks to the Ray "
        "dashboard: use http://HEAD:8265"
    )


def _reason(e: BaseException) -> str:
    import requests

    if isinstance(e, requests.exceptions.Timeout):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(e))
    if m:
        return m.group(1).strip().rstrip(".")
    return type(e).__name__


@contextmanager
def _without_env(*names: str) -> Iterator[None]:
    """Ray's client lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address it is
    given; the one ganops resolved (the flag, else RAY_ADDRESS) must win."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class RayJobsTarget:
    """ganops jobs as Ray job submissions (ids ``ganops-<name>-<UTC time>``)."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = check_address(address or os.environ.get("RAY_ADDRESS"))
        token, self._token_source = auth_token()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._probe(has_token=token is not None)
        from ray.job_submission import JobSubmissionClient

        with _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            self.client = self._call(JobSubmissionClient, self.address, headers=dict(self._headers))

    # -- connection and errors -------------------------------------------------------------

    def _probe(self, has_token: bool) -> None:
        """One request with a timeout: unreachable, not a dashboard, token missing or wrong."""
        import requests

        try:
            r = requests.get(f"{self.address}/api/version", headers=self._headers, timeout=CONNECT_TIMEOUT_S)
        except requests.exceptions.RequestException as e:
            raise UserError(
                f"{FLAG}: cannot reach the Ray Jobs API at {self.address} ({_reason(e)}); is the cluster up "
                "and is this its dashboard address (http://HEAD:8265)?"
            ) from None
        if r.status_code in (401, 403):
            raise UserError(self._auth_message(r.status_code, has_token))
        try:
            ok = r.status_code == 200 and "ray_version" in r.json()
        except ValueError:
            ok = False
        if not ok:
            raise UserError(
                f"{FLAG}: {self.address} does not answer like a Ray dashboard (HTTP {r.status_code} on "
                "/api/version); use the Jobs API address, http://HEAD:8265"
            )

    def _auth_message(self, status: int, has_token: bool) -> str:
        where = f"the Ray cluster at {self.address}"
        if status == 403 or has_token:
            return f"{where} rejected the token from {self._token_source} (token authentication is on); {TOKEN_HELP}"
        note = " (RAY_AUTH_MODE=disabled here: unset it)" if self._token_source.startswith("RAY_AUTH_MODE") else ""
        return f"{where} requires a token (token authentication is on) and none was found{note}; {TOKEN_HELP}"

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A Jobs API call with Ray's errors turned into one-line UserErrors."""
        import requests
        from ray.exceptions import AuthenticationError

        try:
            return fn(*args, **kwargs)
        except AuthenticationError as e:
            raise UserError(self._auth_message(403 if "failed" in str(e.message).lower() else 401,
                                               bool(self._headers))) from None  # fmt: skip
        except (requests.exceptions.RequestException, ConnectionError) as e:
            raise UserError(f"{FLAG}: lost the Ray Jobs API at {self.address} ({_reason(e)})") from None
        except RuntimeError as e:  # the client's "Request failed with status code N: ..."
            raise UserError(f"Ray Jobs API at {self.address}: {str(e).strip()}") from None

    # -- the jobs ---------------------------------------------------------------------------

    def _jobs(self, name: str | None = None) -> list[Any]:
        """ganops submissions (of job ``name``), newest first."""
        jobs = [
            j for j in self._call(self.client.list_jobs)
            if j.submission_id and (j.metadata or {}).get(META_JOB) and (name is None or j.metadata[META_JOB] == name)
        ]  # fmt: skip
        return sorted(jobs, key=lambda j: (j.start_time or 0, j.submission_id), reverse=True)

    def _newest(self, name: str) -> Any:
        jobs = self._jobs(name)
        if not jobs:
            raise UserError(f"no job {name!r} on the Ray cluster at {self.address} (see `ganops list --target ray`)")
        return jobs[0]

    def _row(self, j: Any, *, enrich: bool = True) -> JobStatus:
        meta = j.metadata or {}
        status = str(getattr(j.status, "value", j.status))
        kind = meta.get(META_KIND, "train")
        row = JobStatus(
            name=meta.get(META_JOB, j.submission_id),
            kind=kind,
            phase=PHASE.get(status, status.title()),
            target=self.name,
            id=j.submission_id,
            submitted=_utc(j.start_time),
            # Ray records when a job was submitted and when it ended, not when its driver started.
            started=_utc(j.start_time) if status != "PENDING" else None,
            finished=_utc(j.end_time),
            message=_message(j),
            details={
                k: v
                for k, v in {
                    "address": self.address,
                    "ray_status": status,
                    "driver_exit_code": j.driver_exit_code,
                    "error_type": j.error_type,
                    "storage": meta.get(META_STORAGE),
                }.items()
                if v is not None
            },
        )
        if enrich and status != "PENDING":
            try:
                row.mlflow_run_id = mlflow_run_id(self.client.get_job_logs(j.submission_id))
            except Exception:  # noqa: BLE001 - a row without its run id beats no row
                pass
            if kind == "train" and meta.get(META_STORAGE):
                row.latest_checkpoint = _latest_checkpoint(meta[META_STORAGE], row.name)
        return row

    def _submit(self, name: str, kind: str, entrypoint: str, meta: dict[str, str], env: dict[str, str]) -> JobStatus:
        from ganops.rayinit import worker_env

        active = [j for j in self._jobs(name) if str(getattr(j.status, "value", j.status)) in ACTIVE]
        if active:
            j = active[0]
            state = str(getattr(j.status, "value", j.status)).lower()
            raise UserError(
                f"{name}: already {state} on the Ray cluster at {self.address} ({j.submission_id}); a second "
                f"driver would write the same job directory. Stop it first with `ganops cancel {name} "
                "--target ray`, or wait for it to finish"
            )
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")[:-3]
        submission_id = f"ganops-{name}-{stamp}"
        env = {**worker_env(), **env}  # non-secret settings only: endpoints, regions, cache dir, grace
        self._call(
            self.client.submit_job,
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env={"env_vars": env} if env else None,
            metadata={META_JOB: name, META_KIND: kind, **meta},
            entrypoint_num_cpus=0,
        )
        return self._row(self._call(self.client.get_job_info, submission_id), enrich=False)

    def submit_train(self, job: Any, *, restart: bool = False) -> JobStatus:
        from ganops.entrypoint import train_command

        return self._submit(
            job.name, "train", train_command(job, restart=restart), {META_STORAGE: job.spec.storage},
            {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)},
        )  # fmt: skip

    def submit_generate(self, gen: Any) -> JobStatus:
        from ganops.entrypoint import generate_command

        return self._submit(gen.name, "generate", generate_command(gen), {}, {})

    def status(self, name: str) -> JobStatus:
        return self._row(self._newest(name))

    def list(self) -> list[JobStatus]:
        jobs = self._jobs()
        if not jobs:
            return []
        with ThreadPoolExecutor(min(8, len(jobs))) as pool:
            return [*pool.map(self._row, jobs)]

    def logs(self, name: str, *, follow: bool = False) -> Iterator[str]:
        submission_id = self._newest(name).submission_id
        if not follow:
            return iter([self._call(self.client.get_job_logs, submission_id)])
        return self._follow(submission_id)

    def _follow(self, submission_id: str) -> Iterator[str]:
        import logging

        logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # "WebSocket closed"
        try:
            yield from _sync_iter(self.client.tail_job_logs(submission_id))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - aiohttp / websocket errors, as one line
            raise UserError(f"lost the log stream of {submission_id} from {self.address} ({e})") from None

    def cancel(self, name: str) -> JobStatus:
        j = self._newest(name)
        if str(getattr(j.status, "value", j.status)) not in ACTIVE:
            row = self._row(j)
            row.message = f"already {row.phase.lower()}; nothing to stop"
            return row
        self._call(self.client.stop_job, j.submission_id)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            j = self._call(self.client.get_job_info, j.submission_id)
            if str(getattr(j.status, "value", j.status)) not in ACTIVE:
                break
            time.sleep(0.5)
        row = self._row(j)
        if row.phase in (PENDING, RUNNING):
            row.message = "stop requested; the driver is still stopping"
        return row


def _message(j: Any) -> str | None:
    """Ray's message; for a failed driver, the error it printed rather than 20,000 chars of log."""
    msg = (j.message or "").strip()
    if "last available logs" not in msg and "No logs available" not in msg:
        return msg or None
    lines = [ln.strip() for ln in msg.splitlines()[1:] if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    code = f"exit code {j.driver_exit_code}" if j.driver_exit_code is not None else "failed"
    return f"driver {code}: {last}" if last else f"driver {code}; see `ganops logs`"


def _latest_checkpoint(storage_root: str, name: str) -> str | None:
    """The newest complete checkpoint, when the job's storage is readable from here."""
    if "://" not in storage_root and not os.path.isdir(storage_root):
        return None  # a path on the cluster's nodes, not on this machine
    try:
        from ganops.jobdir import JobDir

        latest = JobDir(storage_root, name).latest_checkpoint()
    except Exception:  # noqa: BLE001 - no credentials or no network here: just not shown
        return None
    return latest.uri if latest else None


def _sync_iter(agen: AsyncIterator[str]) -> Iterator[str]:
    """An async generator (Ray's tail_job_logs) as a plain iterator, on its own event loop."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                chunk = loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        try:
            loop.run_until_complete(agen.aclose())  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - closing a dropped stream
            pass
        loop.close()
