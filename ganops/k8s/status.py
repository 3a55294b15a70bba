"""The status subresource of GANJob / GANGeneration, and how a RayJob's status maps to it."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ganops.phases import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    type: str
    """Submitted, Running, Complete, Failed or Cancelled (the phases), and TrainingHealthy
    (False while a health signal holds: ganops.train.health)."""
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None  # noqa: N815 - Kubernetes field name


class JobObjectStatus(BaseModel):
    """What `kubectl get ganjobs` and `ganops status` show; written only by the operator."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Cancelled"] | None = None
    """Pending (RayJob created, cluster starting), Running, Succeeded, Failed or Cancelled."""
    rayJobName: str | None = None  # noqa: N815
    """The KubeRay RayJob running this job (same namespace)."""
    jobStatus: str | None = None  # noqa: N815
    """The RayJob's status.jobStatus (Ray's job state)."""
    jobDeploymentStatus: str | None = None  # noqa: N815
    """The RayJob's status.jobDeploymentStatus (KubeRay's view of the cluster)."""
    mlflowRunId: str | None = None  # noqa: N815
    """The MLflow run the job logs to."""
    latestCheckpoint: str | None = None  # noqa: N815
    """URI of the newest complete checkpoint."""
    startTime: str | None = None  # noqa: N815
    completionTime: str | None = None  # noqa: N815
    message: str | None = None
    """Why the job is in its phase (an invalid spec, a failure, a cancel)."""
    observedGeneration: int | None = None  # noqa: N815
    conditions: list[Condition] = Field(default_factory=list)


# Ray's job states and KubeRay's deployment states, to our phases. A RayJob that is
# suspended (our cancel) reports jobDeploymentStatus Suspended/Suspending. A failed attempt
# with backoffLimit left reports jobStatus FAILED with jobDeploymentStatus Retrying while
# KubeRay replaces its cluster (rayjob_controller.go, checkBackoffLimitAndUpdateStatusIfNeeded):
# the job is not over, it starts again from its checkpoints.
_JOB_STATUS = {"PENDING": PENDING, "RUNNING": RUNNING, "SUCCEEDED": SUCCEEDED, "FAILED": FAILED, "STOPPED": CANCELLED}
_DEPLOYMENT = {"Failed": FAILED, "ValidationFailed": FAILED, "Suspended": CANCELLED, "Suspending": CANCELLED,
               "Retrying": PENDING, "Complete": None}  # fmt: skip


def phase_of(rayjob_status: dict[str, object]) -> str:
    """Our phase for a RayJob's status (KubeRay's deployment failures win over Ray's job state)."""
    deployment = str(rayjob_status.get("jobDeploymentStatus") or "")
    job = str(rayjob_status.get("jobStatus") or "")
    mapped = _DEPLOYMENT.get(deployment)
    if mapped is not None:
        return mapped
    if job == "FAILED" and deployment != "Complete":
        # A failed attempt is not yet the job's failure: KubeRay reports jobStatus FAILED
        # under jobDeploymentStatus Running until its submitter Job ends, and only then
        # decides between Retrying (backoffLimit left) and Failed. Showing Failed in between
        # tells a user (and `ganops submit --wait`) that a job which then resumes is over.
        return RUNNING if deployment == "Running" else PENDING
    return _JOB_STATUS.get(job, PENDING)


# The condition a phase adds when an owner enters it (Pending adds none: "Submitted"
# comes with the RayJob's creation; "Cancelled" with the cancel request).
CONDITION_OF_PHASE = {RUNNING: "Running", SUCCEEDED: "Complete", FAILED: "Failed"}


def now() -> str:
    """A timestamp as Kubernetes writes them (RFC 3339, UTC, whole seconds)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: str, reason: str, message: str, at: str | None = None) -> dict[str, str]:
    """One entry of ``status.conditions`` (see ``Condition``)."""
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at or now()}
