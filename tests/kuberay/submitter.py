"""The submitter: the batch/v1 Job that runs ``ray job submit`` (submissionMode K8sJobMode).

Follows (ray-project/kuberay):
  ray-operator/controllers/ray/common/job.go  the K8sJobMode command (v1.4+, PR #3216, kept by
      v1.5's BuildJobSubmitCommand): ``if ! ray job status ...; then ray job submit --no-wait ...;
      fi; ray job logs --follow ...``, so a retried submitter neither resubmits the job nor fails
      because the Ray job failed; GetDefaultSubmitterTemplate (the head's image, 1 CPU / 1Gi)
  ray-operator/controllers/ray/rayjob_controller.go  getSubmitterTemplate (bash -ce; env
      PYTHONUNBUFFERED, RAY_DASHBOARD_ADDRESS, RAY_JOB_SUBMISSION_ID), createNewK8sJob (named
      after the RayJob, backoffLimit 2 unless submitterConfig.backoffLimit, owned by the RayJob),
      checkK8sJobAndUpdateStatusIfNeeded (the Job's Failed condition)
  ray-operator/controllers/ray/utils/util.go  IsJobFinished
Simplifies: no submitterPodTemplate, runtimeEnvYAML, metadata or entrypoint resources (ganops
sets none; rayjob.py refuses a RayJob that does).
"""

from __future__ import annotations

from typing import Any

from tests.kuberay import names as n


def submit_command(dashboard_url: str, job_id: str, entrypoint: str) -> list[str]:
    """The words of the submitter's shell command (joined with spaces, run by bash -ce)."""
    address = dashboard_url if dashboard_url.startswith("http://") else "http://" + dashboard_url
    return [
        "if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1", ";", "then",
        "ray", "job", "submit", "--address", address, "--no-wait", "--submission-id", job_id,
        "--", entrypoint.strip(), ";", "fi", ";",
        "ray", "job", "logs", "--address", address, "--follow", job_id,
    ]  # fmt: skip


def build_submitter_job(rayjob: dict[str, Any], head_template: dict[str, Any], dashboard_url: str, job_id: str,
                        entrypoint: str, backoff_limit: int) -> dict[str, Any]:  # fmt: skip
    name = rayjob["metadata"]["name"]
    head = head_template["spec"]["containers"][n.RAY_CONTAINER]
    container: dict[str, Any] = {
        "name": "ray-job-submitter",
        # The head's image: the submitter's Ray must match the cluster's.
        "image": head["image"],
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "200Mi"}},
        "command": n.container_command("e"),  # -e: a failing command fails the pod
        "args": [" ".join(submit_command(dashboard_url, job_id, entrypoint))],
        "env": [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "RAY_DASHBOARD_ADDRESS", "value": dashboard_url},
            {"name": "RAY_JOB_SUBMISSION_ID", "value": job_id},
        ],
    }
    if head.get("imagePullPolicy"):
        container["imagePullPolicy"] = head["imagePullPolicy"]
    pod_spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
    if head_template["spec"].get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = head_template["spec"]["imagePullSecrets"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": rayjob["metadata"]["namespace"],
            "labels": {
                n.ORIGINATED_FROM_CR_NAME: name,
                n.ORIGINATED_FROM_CRD: "RayJob",
                n.CREATED_BY_LABEL: n.COMPONENT_NAME,
            },  # fmt: skip
            "ownerReferences": [n.controller_ref(rayjob)],
        },
        # Few retries: a submitter that cannot submit rarely succeeds on the fourth try.
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": pod_spec}},
    }


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next(
        (
            c
            for c in (job.get("status") or {}).get("conditions") or []
            if c.get("type") == kind and c.get("status") == "True"
        ),
        None,
    )


def finished(job: dict[str, Any]) -> bool:
    """IsJobFinished: Complete or Failed."""
    return _condition(job, "Complete") is not None or _condition(job, "Failed") is not None


def failed_condition(job: dict[str, Any]) -> dict[str, Any] | None:
    """The Job's Failed condition (the Job controller sets it once status.failed exceeds backoffLimit)."""
    return _condition(job, "Failed")
