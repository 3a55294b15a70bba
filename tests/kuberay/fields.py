"""Every RayJob / RayCluster field the stand-in reads or writes, and the one way to read them.

The lists are checked against KubeRay's real CRD schema (../shared/kuberay/crds) by
tests/test_kuberay_standin.py, so the stand-in cannot depend on a field real KubeRay does not
have. ``Reader.get`` refuses a path that is not listed, so the lists cannot fall behind the code.

Paths are dotted; ``[]`` steps into the items of an array. Reads inside a pod template are
listed relative to the PodTemplateSpec (``TEMPLATE_READS``) and checked under every template
path that the stand-in builds pods from.

Follows the field names of ray-operator/apis/ray/v1/rayjob_types.go and raycluster_types.go.
"""

from __future__ import annotations

from typing import Any

RAYJOB_READS: tuple[str, ...] = (
    "spec.entrypoint",
    "spec.rayClusterSpec",
    "spec.rayClusterSpec.headGroupSpec.template",
    "spec.submissionMode",
    "spec.suspend",
    "spec.shutdownAfterJobFinishes",
    "spec.ttlSecondsAfterFinished",
    "spec.activeDeadlineSeconds",
    "spec.backoffLimit",
    "spec.jobId",
    "spec.submitterConfig.backoffLimit",
    "spec.managedBy",
    # Read only to refuse a RayJob that needs them: the stand-in does not implement them.
    "spec.clusterSelector",
    "spec.submitterPodTemplate",
    "spec.runtimeEnvYAML",
    "spec.metadata",
    "spec.entrypointNumCpus",
    "spec.entrypointNumGpus",
    "spec.entrypointResources",
    "spec.deletionStrategy",
    "status.jobDeploymentStatus",
    "status.jobStatus",
    "status.jobId",
    "status.rayClusterName",
    "status.dashboardURL",
    "status.startTime",
    "status.endTime",
    "status.failed",
    "status.succeeded",
    "status.reason",
    "status.message",
    "status.rayJobInfo",
    "status.rayJobInfo.endTime",
)

RAYCLUSTER_READS: tuple[str, ...] = (
    "spec.headGroupSpec.template",
    "spec.headGroupSpec.rayStartParams",
    "spec.headGroupSpec.serviceType",
    "spec.workerGroupSpecs",
    "spec.workerGroupSpecs[].groupName",
    "spec.workerGroupSpecs[].replicas",
    "spec.workerGroupSpecs[].minReplicas",
    "spec.workerGroupSpecs[].maxReplicas",
    "spec.workerGroupSpecs[].rayStartParams",
    "spec.workerGroupSpecs[].template",
    # Read only to refuse a RayCluster that needs them.
    "spec.enableInTreeAutoscaling",
    "spec.workerGroupSpecs[].numOfHosts",
    "spec.workerGroupSpecs[].suspend",
    "spec.workerGroupSpecs[].resources",
    "spec.workerGroupSpecs[].labels",
    "spec.headGroupSpec.resources",
    "spec.headGroupSpec.labels",
    "spec.suspend",
    "spec.gcsFaultToleranceOptions",
    "spec.authOptions",
    "status.state",
    "status.conditions",
    "status.head.serviceIP",
)

# Read from the PodTemplateSpecs above (spec.rayClusterSpec.headGroupSpec.template in a RayJob,
# spec.headGroupSpec.template and spec.workerGroupSpecs[].template in a RayCluster).
TEMPLATE_READS: tuple[str, ...] = (
    "metadata.labels",
    "spec.containers[].name",
    "spec.containers[].image",
    "spec.containers[].imagePullPolicy",
    "spec.containers[].command",
    "spec.containers[].args",
    "spec.containers[].env",
    "spec.containers[].ports",
    "spec.containers[].resources.limits",
    "spec.containers[].resources.requests",
    "spec.containers[].volumeMounts",
    "spec.containers[].securityContext",
    "spec.containers[].livenessProbe",
    "spec.containers[].readinessProbe",
    "spec.initContainers",
    "spec.volumes",
    "spec.imagePullSecrets",
)
TEMPLATE_PATHS = {
    "RayJob": ("spec.rayClusterSpec.headGroupSpec.template",),
    "RayCluster": ("spec.headGroupSpec.template", "spec.workerGroupSpecs[].template"),
}

# Status fields written (top-level keys, and the nested ones the stand-in fills itself).
RAYJOB_STATUS_WRITES: tuple[str, ...] = (
    "status.jobId",
    "status.rayClusterName",
    "status.dashboardURL",
    "status.jobStatus",
    "status.jobDeploymentStatus",
    "status.reason",
    "status.message",
    "status.startTime",
    "status.endTime",
    "status.succeeded",
    "status.failed",
    "status.rayClusterStatus",  # a copy of the RayCluster's status (RAYCLUSTER_STATUS_WRITES)
    "status.rayJobInfo",
    "status.rayJobInfo.startTime",
    "status.rayJobInfo.endTime",
)

RAYCLUSTER_STATUS_WRITES: tuple[str, ...] = (
    "status.state",
    "status.reason",
    "status.observedGeneration",
    "status.readyWorkerReplicas",
    "status.availableWorkerReplicas",
    "status.desiredWorkerReplicas",
    "status.minWorkerReplicas",
    "status.maxWorkerReplicas",
    "status.desiredCPU",
    "status.desiredMemory",
    "status.desiredGPU",
    "status.desiredTPU",
    "status.endpoints",
    "status.head",
    "status.head.podIP",
    "status.head.podName",
    "status.head.serviceIP",
    "status.head.serviceName",
    "status.lastUpdateTime",
    "status.stateTransitionTimes",
    "status.conditions",
    "status.conditions[].type",
    "status.conditions[].status",
    "status.conditions[].reason",
    "status.conditions[].message",
    "status.conditions[].lastTransitionTime",
)

READS = {"RayJob": RAYJOB_READS, "RayCluster": RAYCLUSTER_READS}
STATUS_WRITES = {"RayJob": RAYJOB_STATUS_WRITES, "RayCluster": RAYCLUSTER_STATUS_WRITES}


class UndeclaredFieldError(KeyError):
    """The stand-in read or wrote a field its lists do not declare (a bug in the stand-in)."""


class Reader:
    """Reads declared fields of a RayJob / RayCluster (or of one item of an array in it)."""

    def __init__(self, kind: str, obj: dict[str, Any], prefix: str = "") -> None:
        self.kind, self.obj, self.prefix = kind, obj, prefix

    def get(self, path: str, default: Any = None) -> Any:
        full = f"{self.prefix}{path}"
        if full not in READS[self.kind]:
            raise UndeclaredFieldError(f"{self.kind} field {full!r} is not in fields.READS")
        node: Any = self.obj
        for key in path.split("."):
            if not isinstance(node, dict) or node.get(key) is None:
                return default
            node = node[key]
        return node

    def items(self, path: str) -> list[Reader]:
        """The items of an array field, each a Reader for ``path[].…``."""
        return [Reader(self.kind, item, f"{self.prefix}{path}[].") for item in self.get(path) or []]


class Status(dict):
    """A status being rewritten: reading a key that is neither declared read nor written by the
    stand-in itself is refused, as ``Reader.get`` refuses it."""

    def __init__(self, kind: str, status: dict[str, Any]) -> None:
        super().__init__(status)
        self.kind = kind

    def _check(self, key: str) -> None:
        path = f"status.{key}"
        if path not in READS[self.kind] and path not in STATUS_WRITES[self.kind]:
            raise UndeclaredFieldError(f"{self.kind} field {path!r} is not in fields.READS")

    def get(self, key: str, default: Any = None) -> Any:
        self._check(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self._check(key)
        return super().__getitem__(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._check(key)
        return super().setdefault(key, default)


def check_status_writes(kind: str, status: dict[str, Any]) -> None:
    """Refuses to write a top-level status field that is not declared."""
    for key in status:
        if f"status.{key}" not in STATUS_WRITES[kind]:
            raise UndeclaredFieldError(f"{kind} status field {key!r} is not in fields.STATUS_WRITES")
