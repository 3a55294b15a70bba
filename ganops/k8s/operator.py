"""The ganops operator (kopf): GANJobs and GANGenerations become KubeRay RayJobs.

- create / resume: render the RayJob (``ganops.k8s.render``) and create it, owned by
  the GANJob, so deleting the GANJob deletes the RayJob and its Ray cluster.
- RayJob events: mirror ``jobStatus`` / ``jobDeploymentStatus`` into the owner's status.
- the ``ganops.io/cancel-requested`` annotation (``ganops cancel``): suspend the RayJob,
  which stops the Ray job and deletes its cluster; checkpoints stay in storage.
- a poller fills ``mlflowRunId`` / ``latestCheckpoint`` from MLflow while a job runs.

An invalid spec is a permanent error with the reason in ``status.message``; API errors
that may pass (5xx, 429, connection resets) are retried with back-off.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from ganops.errors import SpecError
from ganops.k8s import CANCEL_ANNOTATION, GROUP, MANAGED_BY, VERSION
from ganops.k8s.client import api_error, configuration
from ganops.k8s.render import Defaults, render
from ganops.k8s.status import phase_of
from ganops.targets.base import CANCELLED, FAILED, PENDING, RUNNING, TERMINAL

PLURALS = {"GANJob": "ganjobs", "GANGeneration": "gangenerations"}
POLL_S = float(os.environ.get("GANOPS_OPERATOR_POLL_S", "30"))
log = logging.getLogger("ganops.operator")


@dataclass
class _State:
    """What the handlers share: set once at start-up (``configure``)."""

    kubeconfig: str | None = None
    defaults: Defaults | None = None
    api: Any = None
    all_namespaces: bool = False
    namespaces: list[str] = field(default_factory=list)
    poller_stop: threading.Event | None = None


STATE = _State()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": _now()}


def _custom() -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(STATE.api)


def _retryable(e: Exception) -> Exception:
    """An API failure as kopf should treat it: retry what may pass, give up on the rest."""
    status = getattr(e, "status", None)
    if status is None or status >= 500 or status in (409, 429):
        return kopf.TemporaryError(f"Kubernetes API: {api_error(e)}; retrying", delay=5)
    if status == 403:  # RBAC may be fixed without touching the job: keep trying, slowly
        return kopf.TemporaryError(f"forbidden: {api_error(e)}", delay=60)
    return kopf.PermanentError(f"Kubernetes API: {api_error(e)}")


# --- start-up ---------------------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    from kubernetes import client

    STATE.api = client.ApiClient(configuration(STATE.kubeconfig))
    STATE.defaults = STATE.defaults or Defaults.from_env()
    # kopf's bookkeeping under an annotation prefix of its own: kopf ignores changes to
    # annotations under its prefix, and ganops.io/cancel-requested must be seen. No
    # handler needs a finalizer: deletion is Kubernetes' garbage collection of the owned
    # RayJob, so nothing blocks a delete while the operator is down.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.ganops.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.ganops.io", key="last-handled-configuration"
    )
    # Watching named namespaces needs no cluster-wide reads: without this, kopf lists
    # namespaces and CRDs at the cluster scope, which the namespaced Role does not grant.
    settings.scanning.disabled = not STATE.all_namespaces
    settings.posting.level = logging.INFO
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    settings.watching.server_timeout = 300


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """The same connection as the rest of ganops: in-cluster, else the kube config."""
    cfg = configuration(STATE.kubeconfig)
    # The kubernetes client keeps the token as "Bearer …" under a key that differs by
    # version ("authorization", "BearerToken").
    keys = cfg.api_key or {}
    token = next((v for k, v in keys.items() if k.lower() in ("authorization", "bearertoken")), "")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme="Bearer" if token else None,
        token=token.removeprefix("Bearer ") or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


# --- GANJob / GANGeneration ------------------------------------------------------------


def _ensure_rayjob(body: kopf.Body, patch: kopf.Patch, name: str, namespace: str) -> None:
    status = body.get("status") or {}
    if status.get("phase") in TERMINAL:
        return
    assert STATE.defaults is not None
    try:
        rayjob = render(body, STATE.defaults)
    except SpecError as e:
        message = f"invalid spec: {e}"
        patch.status.update(
            phase=FAILED, message=message, completionTime=_now(),
            conditions=[_condition("Failed", "True", "InvalidSpec", message)],
        )  # fmt: skip
        raise kopf.PermanentError(message) from None
    from kubernetes.client.exceptions import ApiException

    try:
        _custom().create_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", rayjob)
    except ApiException as e:
        if e.status != 409:
            if e.status == 422:
                message = f"KubeRay refused the RayJob: {api_error(e)}"
                patch.status.update(phase=FAILED, message=message, completionTime=_now())
                raise kopf.PermanentError(message) from None
            raise _retryable(e) from None
        existing = _custom().get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
        owners = [o.get("uid") for o in existing["metadata"].get("ownerReferences", [])]
        if body["metadata"]["uid"] not in owners:
            if _owner(existing) is None:
                message = f"a RayJob named {name} already exists in {namespace} and ganops does not manage it"
                patch.status.update(phase=FAILED, message=message, completionTime=_now())
                raise kopf.PermanentError(message) from None
            # Left by an earlier object of the same name (deleted, or replaced by a new
            # submit) that garbage collection has not reached yet: remove it, then retry.
            try:
                _custom().delete_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
            except ApiException as e2:
                if e2.status != 404:
                    raise _retryable(e2) from None
            raise kopf.TemporaryError(f"removed RayJob {name} of an earlier {body['kind']} {name}; recreating", delay=1)
    if status.get("phase") is None:
        patch.status.update(
            phase=PENDING, rayJobName=name, message="RayJob created; waiting for its Ray cluster",
            observedGeneration=body["metadata"].get("generation"),
            conditions=[_condition("Submitted", "True", "RayJobCreated", f"RayJob {name} created")],
        )  # fmt: skip


for _plural in PLURALS.values():

    @kopf.on.resume(GROUP, VERSION, _plural)
    @kopf.on.create(GROUP, VERSION, _plural)
    def created(body: kopf.Body, patch: kopf.Patch, name: str, namespace: str, **_: Any) -> None:
        if CANCEL_ANNOTATION in body["metadata"].get("annotations", {}):
            return
        _ensure_rayjob(body, patch, name, namespace)

    @kopf.on.update(GROUP, VERSION, _plural, annotations={CANCEL_ANNOTATION: kopf.PRESENT})
    @kopf.on.create(GROUP, VERSION, _plural, annotations={CANCEL_ANNOTATION: kopf.PRESENT})
    def cancelled(body: kopf.Body, patch: kopf.Patch, name: str, namespace: str, **_: Any) -> None:
        status = body.get("status") or {}
        if status.get("phase") in TERMINAL:
            return
        from kubernetes.client.exceptions import ApiException

        rayjob = status.get("rayJobName")
        if rayjob:
            try:
                # Suspending stops the Ray job and deletes its cluster; the RayJob stays as a record.
                _custom().patch_namespaced_custom_object(
                    "ray.io", "v1", namespace, "rayjobs", rayjob, {"spec": {"suspend": True}}
                )
            except ApiException as e:
                if e.status != 404:
                    raise _retryable(e) from None
        who = body["metadata"]["annotations"][CANCEL_ANNOTATION]
        message = f"cancelled ({who}); checkpoints are kept: submit the spec again to resume"
        patch.status.update(
            phase=CANCELLED, message=message, completionTime=_now(),
            conditions=[*status.get("conditions", []), _condition("Cancelled", "True", "CancelRequested", message)],
        )  # fmt: skip


# --- RayJob → owner status ----------------------------------------------------------------


def _owner(body: Any) -> tuple[str, str, str] | None:
    """(plural, name, uid) of the GANJob / GANGeneration that controls a RayJob."""
    for ref in body["metadata"].get("ownerReferences", []):
        if ref.get("controller") and ref.get("apiVersion") == f"{GROUP}/{VERSION}" and ref.get("kind") in PLURALS:
            return PLURALS[ref["kind"]], ref["name"], ref.get("uid", "")
    return None


def mirrored_status(rayjob: dict[str, Any], event_type: str | None, current: dict[str, Any]) -> dict[str, Any]:
    """The owner's status patch for a RayJob event (``current``: the owner's status now)."""
    if current.get("phase") == CANCELLED or (rayjob.get("spec") or {}).get("suspend"):
        # Suspension is our cancel: the RayJob's later states (Suspending, Suspended) add nothing.
        rs = rayjob.get("status") or {}
        return {"phase": CANCELLED, "jobStatus": rs.get("jobStatus"), "jobDeploymentStatus": rs.get("jobDeploymentStatus")}
    if event_type == "DELETED":
        if current.get("phase") in TERMINAL:
            return {}
        return {"phase": FAILED, "message": "its RayJob was deleted", "completionTime": _now()}
    rs = rayjob.get("status") or {}
    phase = phase_of(rs)
    patch: dict[str, Any] = {
        "phase": phase,
        "rayJobName": rayjob["metadata"]["name"],
        "jobStatus": rs.get("jobStatus"),
        "jobDeploymentStatus": rs.get("jobDeploymentStatus"),
    }
    if rs.get("startTime"):
        patch["startTime"] = rs["startTime"]
    if rs.get("endTime") and phase in TERMINAL:
        patch["completionTime"] = rs["endTime"]
    if rs.get("message"):
        patch["message"] = rs["message"]
    elif phase == RUNNING:
        patch["message"] = "training" if rayjob["metadata"].get("labels", {}).get("ganops.io/kind") == "train" else "running"
    if phase != current.get("phase"):
        kind = {"Running": "Running", "Succeeded": "Complete", "Failed": "Failed"}.get(phase)
        if kind:
            reason = rs.get("jobDeploymentStatus") or rs.get("jobStatus") or phase
            patch["conditions"] = [*current.get("conditions", []),
                                   _condition(kind, "True", str(reason), patch.get("message") or phase)]  # fmt: skip
    return patch


@kopf.on.event("ray.io", "v1", "rayjobs", labels=MANAGED_BY)
def rayjob_changed(event: dict[str, Any], body: kopf.Body, namespace: str, **_: Any) -> None:
    owner = _owner(body)
    if owner is None:
        return
    plural, name, uid = owner
    from kubernetes.client.exceptions import ApiException

    # Read, decide, write with the read's resourceVersion as a precondition: the cancel
    # handler writes the same status, and a decision taken on a stale read must not win.
    # kopf does not retry event handlers, so a conflict is retried here.
    for _attempt in range(5):
        try:
            current = _custom().get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as e:
            if e.status == 404:  # the owner is gone; garbage collection takes the RayJob
                return
            raise _retryable(e) from None
        if current["metadata"]["uid"] != uid:
            return  # the RayJob of an earlier object of the same name: not this one's news
        patch = mirrored_status(dict(body), event.get("type"), current.get("status") or {})
        if not patch:
            return
        guarded = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "status": patch}
        try:
            _custom().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, guarded)
            return
        except ApiException as e:
            if e.status == 404:
                return
            if e.status != 409:
                raise _retryable(e) from None
    log.warning("status of %s %s/%s: gave up after repeated conflicts", plural, namespace, name)


# --- MLflow → status ------------------------------------------------------------------------


def _needs_mlflow(status: dict[str, Any]) -> bool:
    phase = status.get("phase")
    return phase in (PENDING, RUNNING) or (phase in TERMINAL and phase != FAILED and not status.get("mlflowRunId"))


def mlflow_status(uid: str, tracking_uri: str) -> dict[str, Any]:
    """The run the trainer tagged with this object's uid, and its latest checkpoint."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        experiment_ids=[e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`ganops.k8s_uid` = '{uid}'", max_results=1, order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    if not runs:
        return {}
    run = runs[0]
    out = {"mlflowRunId": run.info.run_id}
    if run.data.tags.get("ganops.checkpoint"):
        out["latestCheckpoint"] = run.data.tags["ganops.checkpoint"]
    return out


def poll_mlflow_once() -> None:
    """Fill mlflowRunId / latestCheckpoint of the GANJobs that need them.

    A loop of its own rather than a kopf timer: kopf puts a finalizer on every object with
    a timer, and a finalizer blocks `kubectl delete` whenever the operator is down.
    """
    assert STATE.defaults is not None
    custom = _custom()
    if STATE.all_namespaces:
        items = custom.list_cluster_custom_object(GROUP, VERSION, "ganjobs")["items"]
    else:
        items = [o for ns in STATE.namespaces for o in custom.list_namespaced_custom_object(GROUP, VERSION, ns, "ganjobs")["items"]]
    for obj in items:
        status = obj.get("status") or {}
        if not _needs_mlflow(status):
            continue
        uri = (obj["spec"].get("tracking") or {}).get("uri") or STATE.defaults.env.get("MLFLOW_TRACKING_URI")
        if not uri or "://" not in uri or uri.startswith(("file:", "sqlite:")):
            continue  # a store only the pods can see: nothing to read from here
        try:
            found = mlflow_status(obj["metadata"]["uid"], uri)
        except Exception as e:  # noqa: BLE001 - MLflow down must not disturb the jobs
            log.warning("MLflow at %s: %s", uri, e)
            continue
        changed = {k: v for k, v in found.items() if status.get(k) != v}
        if changed:
            meta = obj["metadata"]
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], "ganjobs", meta["name"], {"status": changed}
            )


def _poll_forever(stop: threading.Event) -> None:
    while not stop.wait(POLL_S):
        try:
            poll_mlflow_once()
        except Exception as e:  # noqa: BLE001 - the next round may succeed
            log.warning("MLflow status poll: %s", e)


@kopf.on.startup()
def start_mlflow_poller(**_: Any) -> None:
    STATE.poller_stop = threading.Event()
    threading.Thread(target=_poll_forever, args=(STATE.poller_stop,), name="ganops-mlflow-poll", daemon=True).start()


@kopf.on.cleanup()
def stop_mlflow_poller(**_: Any) -> None:
    if STATE.poller_stop is not None:
        STATE.poller_stop.set()


# --- running -------------------------------------------------------------------------------


def run(namespaces: list[str], all_namespaces: bool, liveness: str | None, kubeconfig: str | None = None) -> None:
    """``ganops operator run``: block until SIGINT/SIGTERM."""
    STATE.kubeconfig = kubeconfig
    STATE.all_namespaces = all_namespaces
    STATE.namespaces = list(namespaces)
    kopf.run(
        standalone=True, clusterwide=all_namespaces, namespaces=namespaces or [],
        liveness_endpoint=liveness,
    )  # fmt: skip


class InProcess:
    """The operator on a thread of this process (tests; embedding)."""

    def __init__(self, namespaces: list[str], kubeconfig: str, defaults: Defaults,
                 all_namespaces: bool = False) -> None:  # fmt: skip
        self.namespaces = namespaces
        self.all_namespaces = all_namespaces
        STATE.kubeconfig = kubeconfig
        STATE.defaults = defaults
        STATE.all_namespaces = all_namespaces
        STATE.namespaces = list(namespaces)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="ganops-operator", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            asyncio.run(kopf.operator(
                standalone=True, clusterwide=self.all_namespaces, namespaces=self.namespaces,
                ready_flag=self._ready, stop_flag=self._stop,
            ))  # fmt: skip
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self.error = e
            self._ready.set()

    def __enter__(self) -> InProcess:
        self._thread.start()
        if not self._ready.wait(60) or self.error:
            raise RuntimeError(f"the operator did not start: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
