"""Names, labels, ports and environment variable names, spelled as KubeRay v1.5 spells them.

Follows (ray-project/kuberay):
  ray-operator/controllers/ray/utils/constant.go  label keys, ports, env names, probe settings
  ray-operator/controllers/ray/utils/util.go      GenerateRayClusterName, GenerateRayJobId,
      PodGenerateName, CheckName, CheckLabel, GenerateHeadServiceName, GenerateFQDNServiceName,
      GenerateIdentifier, GetContainerCommand, GetClusterDomainName
  ray-operator/apis/ray/v1/rayjob_types.go        JobStatus, JobDeploymentStatus, reasons
  ray-operator/apis/ray/v1/raycluster_types.go    node types, condition types and reasons
  controller-runtime SetControllerReference       the owner reference
Simplifies: a user-named head Service (headGroupSpec.headService) is not supported, so the head
Service is always ``<cluster>-head-svc`` (what ganops gets).
"""

from __future__ import annotations

import os
import random
import unicodedata
from datetime import datetime, timezone
from typing import Any

GROUP = "ray.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
# The release ganops runs with (helm/ganops/Chart.yaml, ganops.io/kuberay-version); KubeRay
# puts its version into the head's RAY_USAGE_STATS_EXTRA_TAGS.
KUBERAY_VERSION = "v1.5.1"

# Labels (utils/constant.go).
ORIGINATED_FROM_CR_NAME = "ray.io/originated-from-cr-name"
ORIGINATED_FROM_CRD = "ray.io/originated-from-crd"
CLUSTER_LABEL = "ray.io/cluster"
NODE_TYPE_LABEL = "ray.io/node-type"
GROUP_LABEL = "ray.io/group"
IS_RAY_NODE_LABEL = "ray.io/is-ray-node"
IDENTIFIER_LABEL = "ray.io/identifier"
APP_NAME_LABEL = "app.kubernetes.io/name"
CREATED_BY_LABEL = "app.kubernetes.io/created-by"
APPLICATION_NAME = "kuberay"
COMPONENT_NAME = "kuberay-operator"
HEAD_GROUP = "headgroup"
FT_ENABLED_ANNOTATION = "ray.io/ft-enabled"
OVERWRITE_CMD_ANNOTATION = "ray.io/overwrite-container-cmd"
RAYJOB_FINALIZER = "ray.io/rayjob-finalizer"
KUBERAY_CONTROLLER = "ray.io/kuberay-operator"

HEAD = "head"
WORKER = "worker"

# Ports (utils/constant.go).
DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_CLIENT_PORT = 10001
DEFAULT_METRICS_PORT = 8080
DEFAULT_SERVING_PORT = 8000
DEFAULT_DASHBOARD_AGENT_LISTEN_PORT = 52365
CLIENT_PORT_NAME = "client"
GCS_PORT_NAME = "gcs-server"
DASHBOARD_PORT_NAME = "dashboard"
METRICS_PORT_NAME = "metrics"
SERVING_PORT_NAME = "serve"
LOCAL_HOST = "127.0.0.1"

# Ray container index: KubeRay treats the first container as the Ray container.
RAY_CONTAINER = 0

# Probe settings (utils/constant.go, v1.4/v1.5 values).
READINESS = {"initialDelaySeconds": 10, "timeoutSeconds": 2, "periodSeconds": 5, "successThreshold": 1,
             "failureThreshold": 10}  # fmt: skip
LIVENESS = {"initialDelaySeconds": 30, "timeoutSeconds": 2, "periodSeconds": 5, "successThreshold": 1,
            "failureThreshold": 120}  # fmt: skip
HEAD_PROBE_TIMEOUT_SECONDS = 5  # the head's probe queries two endpoints
RAYLET_HEALTH_PATH = "api/local_raylet_healthz"
GCS_HEALTH_PATH = "api/gcs_healthz"
WGET_HEALTH_COMMAND = "wget --tries 1 -T {timeout} -q -O- http://localhost:{port}/{path} | grep success"

# RayJob job statuses and deployment statuses (apis/ray/v1/rayjob_types.go). "New" is the
# empty string in KubeRay: a RayJob without a status is new.
JOB_NEW, JOB_PENDING, JOB_RUNNING = "", "PENDING", "RUNNING"
JOB_STOPPED, JOB_SUCCEEDED, JOB_FAILED = "STOPPED", "SUCCEEDED", "FAILED"
TERMINAL_JOB_STATUSES = frozenset({JOB_STOPPED, JOB_SUCCEEDED, JOB_FAILED})
NEW, INITIALIZING, RUNNING, COMPLETE, FAILED = "", "Initializing", "Running", "Complete", "Failed"
SUSPENDING, SUSPENDED, RETRYING, WAITING = "Suspending", "Suspended", "Retrying", "Waiting"
VALIDATION_FAILED = "ValidationFailed"  # both a deployment status and a reason (v1.5, PR #3981)
SUBMISSION_FAILED, DEADLINE_EXCEEDED, APP_FAILED = "SubmissionFailed", "DeadlineExceeded", "AppFailed"
GRACE_PERIOD_EXCEEDED = "JobDeploymentStatusTransitionGracePeriodExceeded"
K8S_JOB_MODE = "K8sJobMode"

# RayCluster state and conditions (apis/ray/v1/raycluster_types.go).
CLUSTER_READY = "ready"
HEAD_POD_READY = "HeadPodReady"
RAYCLUSTER_PROVISIONED = "RayClusterProvisioned"

# Operator settings KubeRay reads from its own environment; the stand-in reads the same names.
ENV_CLUSTER_DOMAIN = "CLUSTER_DOMAIN"
ENV_LOGIN_SHELL = "ENABLE_LOGIN_SHELL"
ENV_PROBES_INJECTION = "ENABLE_PROBES_INJECTION"
ENV_INIT_CONTAINER_INJECTION = "ENABLE_INIT_CONTAINER_INJECTION"
ENV_HEAD_CLUSTER_IP_SERVICE = "ENABLE_RAY_HEAD_CLUSTER_IP_SERVICE"
ENV_DELETE_RAYJOB_AFTER_FINISH = "DELETE_RAYJOB_CR_AFTER_JOB_FINISHES"
ENV_GRACE_PERIOD = "RAYJOB_DEPLOYMENT_STATUS_TRANSITION_GRACE_PERIOD_SECONDS"
DEFAULT_GRACE_PERIOD_SECONDS = 300

# k8s.io/apimachinery/pkg/util/rand: no vowels, so that no words form by chance.
_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
_random = random.SystemRandom()


def env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() == "true"


def env_false(name: str) -> bool:
    return os.environ.get(name, "").lower() == "false"


def rand_string(n: int = 5) -> str:
    return "".join(_random.choice(_ALPHANUMS) for _ in range(n))


def generate_ray_cluster_name(rayjob_name: str) -> str:
    """GenerateRayClusterName: every attempt of a RayJob gets a cluster of its own."""
    return f"{rayjob_name}-{rand_string()}"


def generate_ray_job_id(rayjob_name: str) -> str:
    """GenerateRayJobId: the Ray job's submission id."""
    return f"{rayjob_name}-{rand_string()}"


def pod_generate_name(prefix: str, node_type: str) -> str:
    """PodGenerateName: at most 50 characters of prefix, so that the 5 random ones fit in 63."""
    return f"{prefix[:50]}-{node_type}-".lower()


def _starts_badly(s: str) -> bool:
    return s[0].isdigit() or unicodedata.category(s[0]).startswith("P")


def check_name(s: str) -> str:
    """CheckName: keeps the last 50 characters, and no leading digit or punctuation."""
    if len(s) > 50:
        s = s[len(s) - 50 :]
    if _starts_badly(s):
        s = "r" + s[1:]
    return s


def check_label(s: str) -> str:
    """CheckLabel: keeps the last 63 characters, and no leading punctuation."""
    if len(s) > 63:
        s = s[len(s) - 63 :]
    if unicodedata.category(s[0]).startswith("P"):
        s = "r" + s[1:]
    return s


def identifier(cluster_name: str, node_type: str) -> str:
    return check_label(f"{cluster_name}-{node_type}")


def head_service_name(cluster_name: str) -> str:
    """GenerateHeadServiceName for a RayCluster (no headService override)."""
    return f"{cluster_name}-head-svc"


def cluster_domain() -> str:
    return os.environ.get(ENV_CLUSTER_DOMAIN) or "cluster.local"


def fqdn_head_service(cluster_name: str, namespace: str) -> str:
    """GenerateFQDNServiceName: what workers and the submitter dial."""
    return f"{head_service_name(cluster_name)}.{namespace}.svc.{cluster_domain()}"


def container_command(extra_options: str = "") -> list[str]:
    """GetContainerCommand: bash -c (plus -l only when ENABLE_LOGIN_SHELL=true, since v1.4)."""
    options = "c" + extra_options + ("l" if env_true(ENV_LOGIN_SHELL) else "")
    return ["/bin/bash", f"-{options}", "--"]


def controller_ref(owner: dict[str, Any]) -> dict[str, Any]:
    """controllerutil.SetControllerReference: the garbage collector deletes the object with its owner."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def rfc3339(t: datetime) -> str:
    """metav1.Time's JSON form: whole seconds, UTC."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def go_time(t: datetime) -> str:
    """How Go's fmt prints a *metav1.Time (KubeRay puts it into the deadline message)."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
