"""The ganops operator (kopf): GANJobs and GANGenerations become KubeRay RayJobs.

- create / resume: render the RayJob (``ganops.k8s.render``) and create it, owned by
  the GANJob, so deleting the GANJob deletes the RayJob and its Ray cluster.
- RayJob events: mirror ``jobStatus`` / ``jobDeploymentStatus`` into the owner's status.
- the ``ganops.io/cancel-requested`` annotation (``ganops cancel``): suspend the RayJob,
  which stops the Ray job and deletes its cluster; checkpoints stay in storage.
- a poller fills ``mlflowRunId`` / ``latestCheckpoint`` from MLflow while a job runs.

An invalid spec is a permanent error with the reason in ``status.message``; API errors
that may pass (5xx, 429, connection resets) are retried with back-off.

Nothing here is set at import: an operator is an ``OperatorConfig`` (frozen), the
handlers ``register(registry, config)`` adds to a ``kopf.OperatorRegistry`` of its own,
and the ``kopf.OperatorSettings`` of ``operator_settings(config)``. ``run`` (the CLI)
and ``InProcess`` (tests, embedding) put the three together, so two operators with
different configurations can run in one process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from ganops.entrypoint import STOP_GRACE_S
from ganops.errors import SpecError, UserError
from ganops.faults import fault_point
from ganops.k8s import CANCEL_ANNOTATION, GROUP, MANAGED_BY, PLURALS, VERSION, raydash
from ganops.k8s.client import api_client, api_error, configuration
from ganops.k8s.render import Defaults, render
from ganops.k8s.status import CONDITION_OF_PHASE, condition, now, phase_of
from ganops.phases import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, TERMINAL

POLL_ENV = "GANOPS_OPERATOR_POLL_S"
# A cancel stops the Ray job and waits for it (the driver's grace, plus a margin) before
# suspending the RayJob, checking every CANCEL_POLL_S.
CANCEL_WAIT_S = STOP_GRACE_S + 30.0
CANCEL_POLL_S = 3.0
DEFAULT_POLL_S = 30.0
log = logging.getLogger("ganops.operator")


# --- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorConfig:
    """What one operator watches, how it connects, and what it fills into RayJobs."""

    namespaces: tuple[str, ...] = ()
    """The namespaces watched (empty with ``all_namespaces``)."""
    all_namespaces: bool = False
    kubeconfig: str | None = None
    """The kube config file; None: in-cluster, else $KUBECONFIG or ~/.kube/config."""
    defaults: Defaults = field(default_factory=Defaults)
    """What a spec's ``cluster`` section leaves unset (the chart's GANOPS_* values)."""
    poll_s: float = DEFAULT_POLL_S
    """Seconds between MLflow polls."""

    def __post_init__(self) -> None:
        if bool(self.namespaces) == self.all_namespaces:
            raise UserError("the operator watches named namespaces or all namespaces: give exactly one")
        if not self.poll_s > 0:
            raise UserError(f"{POLL_ENV}: must be a positive number of seconds, not {self.poll_s}")

    @classmethod
    def from_env(cls, *, namespaces: Collection[str] = (), all_namespaces: bool = False,
                 kubeconfig: str | None = None, environ: Mapping[str, str] | None = None) -> OperatorConfig:  # fmt: skip
        """The Deployment's way: the flags, plus GANOPS_* from the environment, read now.

        A bad value fails here, at start-up, rather than once per job.
        """
        env = os.environ if environ is None else environ
        return cls(
            namespaces=tuple(namespaces), all_namespaces=all_namespaces, kubeconfig=kubeconfig,
            defaults=Defaults.from_env(env), poll_s=_poll_seconds(env),
        )  # fmt: skip


def _poll_seconds(env: Mapping[str, str]) -> float:
    raw = env.get(POLL_ENV) or ""
    if not raw:
        return DEFAULT_POLL_S
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"{POLL_ENV}: not a number of seconds ({raw[:40]!r})") from None


def operator_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """kopf's settings for this operator."""
    settings = kopf.OperatorSettings()
    # kopf's bookkeeping under an annotation prefix of its own: kopf ignores changes to
    # annotations under its prefix, and ganops.io/cancel-requested must be seen. No
    # handler needs a finalizer: deletion is Kubernetes' garbage collection of the owned
    # RayJob (the optional on-delete handler only speeds it up), so nothing blocks a
    # delete while the operator is down.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.ganops.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.ganops.io", key="last-handled-configuration"
    )
    # Watching named namespaces needs no cluster-wide reads: without this, kopf lists
    # namespaces and CRDs at the cluster scope, which the namespaced Role does not grant.
    settings.scanning.disabled = not config.all_namespaces
    settings.posting.level = logging.INFO
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    settings.watching.server_timeout = 300
    return settings


@dataclass(frozen=True)
class _Context:
    """What the handlers of one operator share: its configuration and its API connection."""

    config: OperatorConfig
    custom: Any  # kubernetes.client.CustomObjectsApi
    settled: set[str] = field(default_factory=set)
    """uids of finished GANJobs whose status has had its MLflow poll after the end."""


def _context(config: OperatorConfig) -> _Context:
    from kubernetes import client

    # Built before kopf starts, so an unusable kube config is a UserError, not a crash loop.
    return _Context(config=config, custom=client.CustomObjectsApi(api_client(config.kubeconfig)))


def _retryable(e: Exception) -> Exception:
    """An API failure as kopf should treat it: retry what may pass, give up on the rest."""
    status = getattr(e, "status", None)
    if status is None or status >= 500 or status in (409, 429):
        return kopf.TemporaryError(f"Kubernetes API: {api_error(e)}; retrying", delay=5)
    if status == 403:  # RBAC may be fixed without touching the job: keep trying, slowly
        return kopf.TemporaryError(f"forbidden: {api_error(e)}", delay=60)
    return kopf.PermanentError(f"Kubernetes API: {api_error(e)}")


# --- registration ---------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Add the operator's handlers for ``config`` to ``registry``.

    Handler ids are given explicitly: kopf keys its progress annotations on them, and
    they stay what they were when the handlers were module-level functions.
    """
    ctx = _context(config)
    _register_login(registry, config)
    for plural in PLURALS.values():
        _register_owner_handlers(registry, ctx, plural)
    _register_rayjob_mirror(registry, ctx)
    _register_mlflow_poller(registry, ctx)


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A registry holding this operator's handlers and nothing else (not kopf's default one)."""
    registry = kopf.OperatorRegistry()
    register(registry, config)
    return registry


def _register_login(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    @kopf.on.login(registry=registry, id="login")
    def login(**_: Any) -> kopf.ConnectionInfo:
        """The same connection as the rest of ganops: in-cluster, else the kube config."""
        return connection_info(configuration(config.kubeconfig))


def connection_info(cfg: Any) -> kopf.ConnectionInfo:
    """kopf's view of a ``kubernetes.client.Configuration``."""
    # The kubernetes client keeps the token with its scheme under a key that differs by
    # version ("authorization", "BearerToken"): "Bearer …" from a kube config, but "bearer …"
    # from the in-cluster loader (the operator's pod), which kopf would send as "Bearer bearer …".
    keys = cfg.api_key or {}
    value = next((v for k, v in keys.items() if k.lower() in ("authorization", "bearertoken")), "")
    scheme, _, rest = value.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else value
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme="Bearer" if token else None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def _register_owner_handlers(registry: kopf.OperatorRegistry, ctx: _Context, plural: str) -> None:
    """create / resume / cancel of one kind (GANJob or GANGeneration)."""

    @kopf.on.resume(GROUP, VERSION, plural, id="created", registry=registry)
    @kopf.on.create(GROUP, VERSION, plural, id="created", registry=registry)
    def created(body: kopf.Body, patch: kopf.Patch, name: str, namespace: str, **_: Any) -> None:
        if CANCEL_ANNOTATION in body["metadata"].get("annotations", {}):
            return
        ensure_rayjob(ctx, body, patch, name, namespace)

    # The watch's DELETED event, not kopf.on.delete: that one needs a finalizer (without
    # one, kopf sees the object only once it is gone, and calls no deletion handler), and a
    # finalizer would block deletes while the operator is down. Kubernetes' garbage collector
    # removes an owned RayJob anyway; this only makes it immediate.
    @kopf.on.event(GROUP, VERSION, plural, id="deleted", registry=registry)
    def deleted(event: dict[str, Any], body: kopf.Body, name: str, namespace: str, **_: Any) -> None:
        if event.get("type") == "DELETED":
            delete_owned_rayjob(ctx, body, name, namespace)

    cancel_set = {CANCEL_ANNOTATION: kopf.PRESENT}

    @kopf.on.update(GROUP, VERSION, plural, id="cancelled", annotations=cancel_set, registry=registry)
    @kopf.on.create(GROUP, VERSION, plural, id="cancelled", annotations=cancel_set, registry=registry)
    def cancelled(body: kopf.Body, patch: kopf.Patch, namespace: str, runtime: dt.timedelta, **_: Any) -> None:
        cancel(ctx, body, patch, namespace, runtime.total_seconds())


def _register_rayjob_mirror(registry: kopf.OperatorRegistry, ctx: _Context) -> None:
    @kopf.on.event("ray.io", "v1", "rayjobs", labels=MANAGED_BY, id="rayjob_changed", registry=registry)
    def rayjob_changed(event: dict[str, Any], body: kopf.Body, namespace: str, **_: Any) -> None:
        mirror_rayjob(ctx, event, body, namespace)


def _register_mlflow_poller(registry: kopf.OperatorRegistry, ctx: _Context) -> None:
    """A thread of its own rather than a kopf timer: kopf puts a finalizer on every object
    with a timer, and a finalizer blocks `kubectl delete` whenever the operator is down."""
    stop = threading.Event()

    @kopf.on.startup(registry=registry, id="start_mlflow_poller")
    def start_mlflow_poller(**_: Any) -> None:
        stop.clear()
        threading.Thread(target=_poll_forever, args=(ctx, stop), name="ganops-mlflow-poll", daemon=True).start()

    @kopf.on.cleanup(registry=registry, id="stop_mlflow_poller")
    def stop_mlflow_poller(**_: Any) -> None:
        stop.set()


# --- GANJob / GANGeneration ------------------------------------------------------------


def ensure_rayjob(ctx: _Context, body: kopf.Body, patch: kopf.Patch, name: str, namespace: str) -> None:
    """Create the RayJob of ``body`` unless it exists (or the job is over)."""
    status = body.get("status") or {}
    if status.get("phase") in TERMINAL:
        return
    try:
        rayjob = render(body, ctx.config.defaults)
    except SpecError as e:
        message = f"invalid spec: {e}"
        patch.status.update(
            phase=FAILED, message=message, completionTime=now(),
            conditions=[condition("Failed", "True", "InvalidSpec", message)],
        )  # fmt: skip
        raise kopf.PermanentError(message) from None
    from kubernetes.client.exceptions import ApiException

    try:
        ctx.custom.create_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", rayjob)
        fault_point("after-rayjob-create", name)
    except ApiException as e:
        if e.status != 409:
            if e.status == 422:
                message = f"KubeRay refused the RayJob: {api_error(e)}"
                patch.status.update(phase=FAILED, message=message, completionTime=now())
                raise kopf.PermanentError(message) from None
            raise _retryable(e) from None
        _adopt_or_replace(ctx, body, patch, name, namespace)
    if status.get("phase") is None:
        patch.status.update(
            phase=PENDING, rayJobName=name, message="RayJob created; waiting for its Ray cluster",
            observedGeneration=body["metadata"].get("generation"),
            conditions=[condition("Submitted", "True", "RayJobCreated", f"RayJob {name} created")],
        )  # fmt: skip


def _adopt_or_replace(ctx: _Context, body: kopf.Body, patch: kopf.Patch, name: str, namespace: str) -> None:
    """A RayJob of this name exists: ours (nothing to do), a stale one of ours, or a stranger's."""
    from kubernetes.client.exceptions import ApiException

    try:
        existing = ctx.custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
    except ApiException as e:
        # Gone since the create's conflict: on a resubmit, the old GANJob's deletion handler
        # (or the garbage collector) removes its RayJob while this create runs. Create again
        # soon; a bare ApiException would make kopf wait its default 60 s.
        if e.status == 404:
            raise kopf.TemporaryError(f"RayJob {name} of an earlier {body['kind']} {name} went away; recreating",
                                      delay=1) from None  # fmt: skip
        raise _retryable(e) from None
    owners = [o.get("uid") for o in existing["metadata"].get("ownerReferences", [])]
    if body["metadata"]["uid"] in owners:
        return
    if _owner(existing) is None:
        message = f"a RayJob named {name} already exists in {namespace} and ganops does not manage it"
        patch.status.update(phase=FAILED, message=message, completionTime=now())
        raise kopf.PermanentError(message) from None
    # Left by an earlier object of the same name (deleted, or replaced by a new submit)
    # that garbage collection has not reached yet: remove it, then retry.
    try:
        ctx.custom.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
    except ApiException as e:
        if e.status != 404:
            raise _retryable(e) from None
    raise kopf.TemporaryError(f"removed RayJob {name} of an earlier {body['kind']} {name}; recreating", delay=1)


def delete_owned_rayjob(ctx: _Context, body: kopf.Body, name: str, namespace: str) -> None:
    """Delete the RayJob that ``body`` (being deleted) owns, and only that one."""
    from kubernetes.client.exceptions import ApiException

    rayjob = (body.get("status") or {}).get("rayJobName") or name
    try:
        existing = ctx.custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", rayjob)
        owners = [o.get("uid") for o in existing["metadata"].get("ownerReferences", [])]
        if body["metadata"]["uid"] in owners:
            ctx.custom.delete_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayjobs", rayjob, propagation_policy="Background"
            )
    except ApiException as e:
        if e.status != 404:
            raise _retryable(e) from None


def cancel(ctx: _Context, body: kopf.Body, patch: kopf.Patch, namespace: str, waited_s: float = 0.0) -> None:
    """Stop the Ray job (its workers checkpoint), then suspend the RayJob (its cluster goes),
    and say so in the status. ``waited_s``: how long this cancel has been going on."""
    status = body.get("status") or {}
    # Cancelled may be the mirror's news of the stop this cancel asked for: go on and say so.
    if status.get("phase") in (SUCCEEDED, FAILED):
        return
    from kubernetes.client.exceptions import ApiException

    rayjob = status.get("rayJobName")
    if rayjob:
        stopping = _stop_ray_job_first(ctx, rayjob, namespace, waited_s)
        if stopping:
            patch.status["message"] = stopping
            raise kopf.TemporaryError(stopping, delay=CANCEL_POLL_S)
        try:
            # The RayJob stays as a record of the run.
            ctx.custom.patch_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayjobs", rayjob, {"spec": {"suspend": True}}
            )
        except ApiException as e:
            if e.status != 404:
                raise _retryable(e) from None
    who = body["metadata"]["annotations"][CANCEL_ANNOTATION]
    message = f"cancelled ({who}); checkpoints are kept: submit the spec again to resume"
    patch.status.update(
        phase=CANCELLED, message=message, completionTime=now(),
        conditions=[*status.get("conditions", []), condition("Cancelled", "True", "CancelRequested", message)],
    )  # fmt: skip


def _stop_ray_job_first(ctx: _Context, rayjob: str, namespace: str, waited_s: float) -> str | None:
    """What the cancel waits for (the Ray job is stopping), or None: suspend now."""
    from kubernetes.client.exceptions import ApiException

    try:
        rs = ctx.custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", rayjob).get("status") or {}
    except ApiException as e:
        if e.status == 404:
            return None
        raise _retryable(e) from None
    url, job_id = rs.get("dashboardURL"), rs.get("jobId")
    if rs.get("jobDeploymentStatus") != "Running" or not url or not job_id:
        return None  # no Ray job yet (or any more): nothing to checkpoint
    if waited_s > CANCEL_WAIT_S:
        log.warning("cancel of RayJob %s/%s: the Ray job did not stop in %.0fs; suspending it",
                    namespace, rayjob, waited_s)  # fmt: skip
        return None
    try:
        state = raydash.job_state(url, job_id)
        if state is None or state in raydash.TERMINAL:
            return None
        raydash.stop_job(url, job_id)
    except OSError as e:
        log.warning("cancel of RayJob %s/%s: the Ray dashboard at %s did not answer (%s); suspending "
                    "without a last checkpoint", namespace, rayjob, url, e)  # fmt: skip
        return None
    return "cancel requested: stopping the Ray job; its workers write a checkpoint first"


# --- RayJob → owner status ----------------------------------------------------------------


def _owner(body: Any) -> tuple[str, str, str] | None:
    """(plural, name, uid) of the GANJob / GANGeneration that controls a RayJob."""
    for ref in body["metadata"].get("ownerReferences", []):
        if ref.get("controller") and ref.get("apiVersion") == f"{GROUP}/{VERSION}" and ref.get("kind") in PLURALS:
            return PLURALS[ref["kind"]], ref["name"], ref.get("uid", "")
    return None


def mirrored_status(rayjob: dict[str, Any], event_type: str | None, current: dict[str, Any]) -> dict[str, Any]:
    """The owner's status patch for a RayJob event (``current``: the owner's status now)."""
    rs = rayjob.get("status") or {}
    if current.get("phase") == CANCELLED or (rayjob.get("spec") or {}).get("suspend"):
        # Suspension is our cancel: the RayJob's later states (Suspending, Suspended) add nothing.
        return {
            "phase": CANCELLED,
            "jobStatus": rs.get("jobStatus"),
            "jobDeploymentStatus": rs.get("jobDeploymentStatus"),
        }
    if event_type == "DELETED":
        if current.get("phase") in TERMINAL:
            return {}
        return {"phase": FAILED, "message": "its RayJob was deleted", "completionTime": now()}
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
    if rs.get("jobDeploymentStatus") == "Retrying":
        limit = (rayjob.get("spec") or {}).get("backoffLimit")
        attempts = f" of {int(limit) + 1}" if isinstance(limit, int) else ""
        why = f" ({rs['message']})" if rs.get("message") else ""
        patch["message"] = (f"attempt {rs.get('failed') or 1}{attempts} failed{why}; "
                            "retrying on a new Ray cluster from the latest checkpoint")  # fmt: skip
    elif rs.get("message"):
        patch["message"] = rs["message"]
    elif rs.get("jobStatus") == "FAILED" and phase != FAILED:
        patch["message"] = "the attempt's Ray job failed; waiting for KubeRay to retry it or fail the job"
    elif phase == RUNNING:
        patch["message"] = (
            "training" if rayjob["metadata"].get("labels", {}).get("ganops.io/kind") == "train" else "running"
        )
    kind = CONDITION_OF_PHASE.get(phase)
    if kind and phase != current.get("phase"):
        reason = rs.get("jobDeploymentStatus") or rs.get("jobStatus") or phase
        patch["conditions"] = [*current.get("conditions", []),
                               condition(kind, "True", str(reason), patch.get("message") or phase)]  # fmt: skip
    return patch


def mirror_rayjob(ctx: _Context, event: dict[str, Any], body: kopf.Body, namespace: str) -> None:
    """Write what a RayJob event means into its owner's status."""
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
            current = ctx.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
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
            ctx.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, guarded)
            return
        except ApiException as e:
            if e.status == 404:
                return
            if e.status != 409:
                raise _retryable(e) from None
    log.warning("status of %s %s/%s: gave up after repeated conflicts", plural, namespace, name)


# --- MLflow → status ------------------------------------------------------------------------


def _needs_mlflow(status: dict[str, Any], uid: str, settled: set[str]) -> bool:
    """Running jobs, and each finished one once more: a poll from before its end can miss
    the last checkpoint (the final one, or the one a cancel wrote)."""
    return status.get("phase") in (PENDING, RUNNING) or uid not in settled


def mlflow_status(uid: str, tracking_uri: str) -> dict[str, Any]:
    """The run the trainer tagged with this object's uid, and its latest checkpoint."""
    from ganops.tracking.lookup import run_of_k8s_object

    return run_of_k8s_object(tracking_uri, uid)


def _watched_ganjobs(ctx: _Context) -> list[dict[str, Any]]:
    custom, config = ctx.custom, ctx.config
    if config.all_namespaces:
        return custom.list_cluster_custom_object(GROUP, VERSION, PLURALS["GANJob"])["items"]
    return [o for ns in config.namespaces
            for o in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURALS["GANJob"])["items"]]  # fmt: skip


def poll_mlflow_once(ctx: _Context) -> None:
    """Fill mlflowRunId / latestCheckpoint of the GANJobs that need them."""
    objs = _watched_ganjobs(ctx)
    # Forget deleted jobs: the set holds only what is still watched.
    ctx.settled.intersection_update(o["metadata"]["uid"] for o in objs)
    for obj in objs:
        status, uid = obj.get("status") or {}, obj["metadata"]["uid"]
        if not _needs_mlflow(status, uid, ctx.settled):
            continue
        uri = (obj["spec"].get("tracking") or {}).get("uri") or ctx.config.defaults.env.get("MLFLOW_TRACKING_URI")
        if not uri or "://" not in uri or uri.startswith(("file:", "sqlite:")):
            continue  # a store only the pods can see: nothing to read from here
        try:
            found = mlflow_status(uid, uri)
        except Exception as e:  # noqa: BLE001 - MLflow down must not disturb the jobs
            log.warning("MLflow at %s: %s", uri, e)
            continue
        health = found.pop("health", None)
        changed = {k: v for k, v in found.items() if status.get(k) != v}
        conditions = health_conditions(status.get("conditions") or [], health)
        if conditions is not None:
            changed["conditions"] = conditions
        if changed:
            meta = obj["metadata"]
            ctx.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURALS["GANJob"], meta["name"], {"status": changed}
            )
        if status.get("phase") in TERMINAL:
            ctx.settled.add(uid)


def health_conditions(current: list[dict[str, Any]], health: str | None) -> list[dict[str, Any]] | None:
    """``current`` with the ``TrainingHealthy`` condition the run's ``ganops.health`` tag
    says (True for ``ok``; False, the signals as reason and why as message, otherwise); None
    when nothing changes."""
    if not health:
        return None
    ok = health == "ok"
    signals = [part.split(":", 1)[0].strip() for part in health.split("; ")] if not ok else []
    reason = "Healthy" if ok else "".join(w.capitalize() for s in signals for w in s.split("_"))
    message = "no health signal holds" if ok else health[:1000]
    old = next((c for c in current if c.get("type") == "TrainingHealthy"), None)
    status = "True" if ok else "False"
    if old is not None and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
        return None
    rest = [c for c in current if c.get("type") != "TrainingHealthy"]
    return [*rest, condition("TrainingHealthy", status, reason, message)]


def _poll_forever(ctx: _Context, stop: threading.Event) -> None:
    while not stop.wait(ctx.config.poll_s):
        try:
            poll_mlflow_once(ctx)
        except Exception as e:  # noqa: BLE001 - the next round may succeed
            log.warning("MLflow status poll: %s", e)


# --- running -------------------------------------------------------------------------------


def _operator_kwargs(config: OperatorConfig) -> dict[str, Any]:
    """What ``kopf.run`` and ``kopf.operator`` take for ``config``."""
    return {
        "registry": build_registry(config), "settings": operator_settings(config), "standalone": True,
        "clusterwide": config.all_namespaces, "namespaces": list(config.namespaces),
    }  # fmt: skip


def run(config: OperatorConfig, liveness: str | None = None) -> None:
    """``ganops operator run``: block until SIGINT/SIGTERM."""
    kopf.run(liveness_endpoint=liveness, **_operator_kwargs(config))


class InProcess:
    """The operator on a thread of this process (tests; embedding)."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self._kwargs = _operator_kwargs(config)  # here: a bad kube config fails the caller
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="ganops-operator", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            asyncio.run(kopf.operator(ready_flag=self._ready, stop_flag=self._stop, **self._kwargs))
        except BaseException as e:  # noqa: BLE001 - reported to the caller
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
