"""GANJob / GANGeneration → the KubeRay ``RayJob`` that runs it.

Pure functions of the object and the operator's defaults (no API calls), so that
``ganops operator render`` prints exactly what the operator would create, and tests can
check every job in ``jobs/`` against KubeRay's real CRD schema.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ganops import __version__
from ganops.entrypoint import STOP_GRACE_S, generate_command, train_command
from ganops.errors import SpecError, UserError
from ganops.k8s import GROUP, JOB_LABEL, KIND_LABEL, MANAGED_BY, RESTART_ANNOTATION, VERSION
from ganops.spec.generation import GANGeneration
from ganops.spec.models import ClusterSpec, GANJob

RAY_VERSION = "2.60.0"
# KubeRay names the RayCluster and the submitter Job after the RayJob and adds suffixes;
# it refuses RayJob names longer than this.
MAX_RAYJOB_NAME = 47
# Non-secret settings the pods get as plain env (credentials come from the Secret).
_PLAIN_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


def _count(key: str, raw: str | None, default: int) -> int:
    """A whole number >= 0 from the operator's environment, or ``default`` when unset."""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 100:
        raise UserError(f"{key}: expected a whole number from 0 to 100 (got {raw[:80]!r})", field=key)
    return value


@dataclass(frozen=True)
class Defaults:
    """The operator's defaults for what a spec's ``cluster`` section leaves unset."""

    image: str = f"ganops:{__version__}"
    service_account: str | None = None
    secret: str | None = None
    # The chart's defaults (helm/ganops/values.yaml, `jobs:`), for an operator run outside
    # the chart; tests/test_helm.py checks that the two agree.
    worker_cpu: str = "2"
    worker_memory: str = "8Gi"
    head_cpu: str = "1"
    head_memory: str = "4Gi"
    gpu_resource: str = "nvidia.com/gpu"
    backoff_limit: int = 2
    """Attempts after a failed one (the RayJob's backoffLimit); each resumes from the checkpoints."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL...: passed on to every pod."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Defaults:
        """From the operator Deployment's environment (the Helm chart's values)."""
        e = os.environ if environ is None else environ
        base = cls()

        def js(key: str, default: Any) -> Any:
            raw = e.get(key)
            if not raw:
                return default
            try:
                return json.loads(raw)
            except ValueError:
                raise UserError(f"{key}: not valid JSON ({raw[:80]!r})") from None

        return cls(
            image=e.get("GANOPS_IMAGE") or base.image,
            service_account=e.get("GANOPS_SERVICE_ACCOUNT") or None,
            secret=e.get("GANOPS_SECRET") or None,
            worker_cpu=e.get("GANOPS_WORKER_CPU") or base.worker_cpu,
            worker_memory=e.get("GANOPS_WORKER_MEMORY") or base.worker_memory,
            head_cpu=e.get("GANOPS_HEAD_CPU") or base.head_cpu,
            head_memory=e.get("GANOPS_HEAD_MEMORY") or base.head_memory,
            gpu_resource=e.get("GANOPS_GPU_RESOURCE") or base.gpu_resource,
            backoff_limit=_count("GANOPS_BACKOFF_LIMIT", e.get("GANOPS_BACKOFF_LIMIT"), base.backoff_limit),
            node_selector=js("GANOPS_NODE_SELECTOR", {}),
            tolerations=js("GANOPS_TOLERATIONS", []),
            env={k: e[k] for k in _PLAIN_ENV if e.get(k)},
        )


def cpu_count(quantity: str) -> float:
    """A CPU quantity ("4", "500m", "1.5") as a number of cores."""
    m = re.fullmatch(r"([0-9.]+)(m?)", quantity)
    if not m:
        raise SpecError([("spec.cluster.worker_cpu", f"{quantity!r} is not a CPU quantity (e.g. 4 or 500m)")])
    return float(m.group(1)) / (1000 if m.group(2) else 1)


def _toleration(t: Any) -> dict[str, Any]:
    d = t.model_dump(exclude_none=True) if hasattr(t, "model_dump") else dict(t)
    if "toleration_seconds" in d:
        d["tolerationSeconds"] = d.pop("toleration_seconds")
    return d


def _container(name: str, image: str, cpu: str, memory: str, extra: dict[str, Any], env: list[dict[str, Any]],
               secret: str | None) -> dict[str, Any]:  # fmt: skip
    limits = {"cpu": cpu, "memory": memory, **extra}
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        # Requests equal limits: a training worker that is throttled or evicted loses its step.
        "resources": {"requests": dict(limits), "limits": limits},
        "env": env,
        "securityContext": {"allowPrivilegeEscalation": False},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
    }
    if secret:
        c["envFrom"] = [{"secretRef": {"name": secret}}]
    return c


RAY_POD_GRACE_SECONDS = 5


def _pod(container: dict[str, Any], sa: str | None, node_selector: dict[str, str],
         tolerations: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    spec: dict[str, Any] = {
        "containers": [container],
        # Ray's object store lives in /dev/shm; the container default (64 MiB) is too small.
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
        # KubeRay runs `bash -lc "ulimit ...; ray start --block"`: bash is PID 1 and drops the
        # SIGTERM, so the kubelet waits out the whole grace period (30 s by default) before its
        # SIGKILL. Nothing in a Ray pod acts on SIGTERM (a cancel's checkpoint is taken through
        # Ray's job stop, before the cluster goes; the state is in storage and MLflow), so a
        # finished, cancelled or deleted job's pods free their node in seconds.
        "terminationGracePeriodSeconds": RAY_POD_GRACE_SECONDS,
    }
    if sa:
        spec["serviceAccountName"] = sa
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = tolerations
    return {"spec": spec}


@dataclass(frozen=True)
class Owner:
    """The GANJob / GANGeneration a RayJob belongs to."""

    kind: str
    name: str
    namespace: str
    uid: str


def _env(owner: Owner, d: Defaults) -> list[dict[str, Any]]:
    # RAY_JOB_STOP_WAIT_TIME_S: the head's job supervisor gives a stopped driver this long
    # after SIGTERM, for the workers' last checkpoint (the operator's cancel stops the job first).
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), **d.env}  # fmt: skip
    if "AWS_ENDPOINT_URL" in env:
        env.setdefault("MLFLOW_S3_ENDPOINT_URL", env["AWS_ENDPOINT_URL"])
    # Lets the trainer tag its MLflow run with the object it runs for (the operator finds it by uid).
    env.update({"GANOPS_K8S_KIND": owner.kind, "GANOPS_K8S_NAMESPACE": owner.namespace,
                "GANOPS_K8S_NAME": owner.name, "GANOPS_K8S_UID": owner.uid})  # fmt: skip
    return [{"name": k, "value": v} for k, v in env.items()]


def _resolved(c: ClusterSpec, d: Defaults) -> dict[str, Any]:
    return {
        "image": c.image or d.image,
        "sa": c.service_account or d.service_account,
        "secret": c.secret or d.secret,
        "worker_cpu": c.worker_cpu or d.worker_cpu,
        "worker_memory": c.worker_memory or d.worker_memory,
        "head_cpu": c.head_cpu or d.head_cpu,
        "head_memory": c.head_memory or d.head_memory,
        "gpu_resource": c.gpu_resource or d.gpu_resource,
        "node_selector": c.node_selector or d.node_selector,
        "tolerations": [_toleration(t) for t in c.tolerations] or [_toleration(t) for t in d.tolerations],
    }


def _rayjob(owner: Owner, entrypoint: str, cluster: ClusterSpec, d: Defaults, workers: int, gpus: float,
            head_gpus: float = 0) -> dict[str, Any]:  # fmt: skip
    if len(owner.name) > MAX_RAYJOB_NAME:
        raise SpecError([(
            "metadata.name",
            f"{owner.name!r} has {len(owner.name)} characters; KubeRay allows at most {MAX_RAYJOB_NAME} "
            "for the RayJob that runs it",
        )])  # fmt: skip
    r = _resolved(cluster, d)
    env = _env(owner, d)
    head_extra = {r["gpu_resource"]: str(math.ceil(head_gpus))} if head_gpus else {}
    head = _container("ray-head", r["image"], r["head_cpu"], r["head_memory"], head_extra, env, r["secret"])
    head["ports"] = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                     {"containerPort": 10001, "name": "client"}]  # fmt: skip
    # The head runs the driver only: training workers must land on the worker pods.
    head_params = {"num-cpus": "0", "dashboard-host": "0.0.0.0"}
    if head_gpus:
        head_params["num-gpus"] = str(math.ceil(head_gpus))
    cluster_spec: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": False,
        "headGroupSpec": {
            "rayStartParams": head_params,
            # The head needs no GPU node (unless it does the work): no GPU selector or tolerations.
            "template": _pod(head, r["sa"], {}, [])
            if not head_gpus
            else _pod(head, r["sa"], r["node_selector"], r["tolerations"]),
        },
    }
    if workers:
        extra = {r["gpu_resource"]: str(math.ceil(gpus))} if gpus else {}
        worker = _container("ray-worker", r["image"], r["worker_cpu"], r["worker_memory"], extra, env, r["secret"])
        params = {"num-gpus": str(math.ceil(gpus))} if gpus else {}
        cluster_spec["workerGroupSpecs"] = [
            {
                "groupName": "gpu-workers" if gpus else "workers",
                "replicas": workers,
                "minReplicas": workers,
                "maxReplicas": workers,
                "rayStartParams": params,
                "template": _pod(worker, r["sa"], r["node_selector"], r["tolerations"]),
            }
        ]
    spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
        "backoffLimit": cluster.backoff_limit if cluster.backoff_limit is not None else d.backoff_limit,
        "rayClusterSpec": cluster_spec,
    }
    if cluster.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = cluster.active_deadline_seconds
    labels = {**MANAGED_BY, JOB_LABEL: owner.name, KIND_LABEL: "train" if owner.kind == "GANJob" else "generate"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": owner.kind,
                    "name": owner.name,
                    "uid": owner.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],  # fmt: skip
        },
        "spec": spec,
    }


def train_rayjob(job: GANJob, owner: Owner, d: Defaults, *, restart: bool = False) -> dict[str, Any]:
    """The RayJob for a GANJob: one worker pod per data-parallel worker."""
    spec = job.spec
    r = _resolved(spec.cluster, d)
    run = job.model_copy(deep=True)
    if spec.scaling.resources_per_worker is None:
        # Reserve the worker pod's CPUs for its Ray Train worker: Ray caps torch's threads at
        # the CPUs a worker reserves (one by default).
        cpus = math.floor(cpu_count(r["worker_cpu"]))
        if cpus >= 1:
            run.spec.scaling.resources_per_worker = {"CPU": float(cpus)}
    gpus = 1 if spec.scaling.use_gpu else 0
    # The GANJob's uid: every attempt of this RayJob shares it, so only the first starts over.
    command = train_command(run, restart=restart, restart_token=owner.uid or None)
    return _rayjob(owner, command, spec.cluster, d, spec.scaling.num_workers, gpus)


def generate_rayjob(gen: GANGeneration, owner: Owner, d: Defaults) -> dict[str, Any]:
    """The RayJob for a GANGeneration. One worker runs in the driver (on the head pod), as
    ``ganops generate --workers 1`` does; more run as Ray actors on worker pods."""
    s = gen.spec
    if s.workers == 1:
        return _rayjob(owner, generate_command(gen), s.cluster, d, 0, 0, head_gpus=s.gpus_per_worker)
    return _rayjob(owner, generate_command(gen), s.cluster, d, s.workers, s.gpus_per_worker)


def render(obj: Mapping[str, Any], d: Defaults) -> dict[str, Any]:
    """A GANJob / GANGeneration object (as stored in Kubernetes) → its RayJob.

    Raises ``SpecError`` when the object's spec is invalid (a permanent error).
    """
    from ganops.spec.loader import validate_model

    meta = obj.get("metadata", {})
    kind = obj.get("kind", "GANJob")
    owner = Owner(kind, meta.get("name", ""), meta.get("namespace") or "default", meta.get("uid", ""))
    doc = {"metadata": {"name": owner.name, "labels": meta.get("labels") or {}}, "spec": obj.get("spec") or {}}
    source = f"{kind} {owner.namespace}/{owner.name}"
    if kind == "GANGeneration":
        return generate_rayjob(validate_model(GANGeneration, doc, source), owner, d)
    restart = (meta.get("annotations") or {}).get(RESTART_ANNOTATION) == "true"
    return train_rayjob(validate_model(GANJob, doc, source), owner, d, restart=restart)
