"""The RayJob controller: a RayCluster per attempt, the submitter Job, and the RayJob's status.

Follows (ray-project/kuberay) ray-operator/controllers/ray/rayjob_controller.go:
  Reconcile  the jobDeploymentStatus state machine: "" (New) -> Initializing (RayCluster
      created; waits for its state ``ready``) -> Running (submitter Job created; the Ray job's
      status polled from the dashboard) -> Complete | Failed; Suspending -> Suspended -> New;
      Retrying -> New (a new attempt on a new RayCluster); the ray.io/rayjob-finalizer (the Ray
      job is stopped before a RayJob goes away)
  initRayJobStatusIfNeed  jobId (GenerateRayJobId), rayClusterName (GenerateRayClusterName),
      startTime
  getOrCreateRayClusterInstance, constructRayClusterForRayJob  the RayCluster: the RayJob's
      labels and annotations + ray.io/originated-from-*, owned by the RayJob
  createK8sJobIfNeed  (submitter.py)
  checkK8sJobAndUpdateStatusIfNeeded  a Failed submitter Job fails the RayJob (SubmissionFailed,
      or AppFailed when the Ray job had failed)
  checkActiveDeadlineAndUpdateStatusIfNeeded  DeadlineExceeded
  checkTransitionGracePeriodAndUpdateStatusIfNeeded  JobDeploymentStatusTransitionGracePeriodExceeded
  checkBackoffLimitAndUpdateStatusIfNeeded  status.failed/succeeded, Retrying while attempts are
      left (never after DeadlineExceeded)
  updateStatusToSuspendingIfNeeded, deleteClusterResources, deleteSubmitterJob
  the Complete/Failed case  shutdownAfterJobFinishes + ttlSecondsAfterFinished: the RayCluster
      is deleted (the submitter Job is kept, for its logs); the RayJob itself with
      DELETE_RAYJOB_CR_AFTER_JOB_FINISHES=true
  updateRayJobStatus  the status is written only when jobStatus or jobDeploymentStatus changed;
      endTime is set on Complete/Failed
  reconcileServices  (v1.5, PR #3996) a head Service named after the RayJob, ``<rayjob>-head-svc``,
      owned by the RayJob and pointed at the current attempt's head pod, so that its name
      survives retries (common/job.go BuildHeadServiceForRayJob)
and ray-operator/controllers/ray/utils/validation.go (v1.5, PR #3981: an invalid RayJob gets
jobDeploymentStatus ValidationFailed; the checks of ValidateRayJobMetadata and ValidateRayJobSpec
that apply without the refused features below).
Simplifies: K8sJobMode only (no HTTPMode, InteractiveMode/Waiting or SidecarMode: ganops
submits with K8sJobMode); no clusterSelector, deletionStrategy, submitterPodTemplate,
runtimeEnvYAML, metadata or entrypoint resources; such a RayJob is logged and left alone.
"""

from __future__ import annotations

import copy
import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.kuberay import log, submitter
from tests.kuberay import names as n
from tests.kuberay import service as svc
from tests.kuberay.api import ApiError, Kube
from tests.kuberay.dashboard import Dashboard, DashboardError
from tests.kuberay.fields import Reader, Status, check_status_writes

MAX_RAYJOB_NAME = 47  # MaxRayClusterNameLength (53) - 6 for GenerateRayClusterName's suffix
_UNSUPPORTED = ("spec.clusterSelector", "spec.submitterPodTemplate", "spec.runtimeEnvYAML", "spec.metadata",
                "spec.entrypointNumCpus", "spec.entrypointNumGpus", "spec.entrypointResources",
                "spec.deletionStrategy")  # fmt: skip


_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1035_ERROR = (
    "[a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation "
    "is '[a-z]([-a-z0-9]*[a-z0-9])?')]"
)


def invalid(name: str, r: Reader) -> str | None:
    """ValidateRayJobMetadata + ValidateRayJobSpec (the checks that concern what the stand-in does)."""
    if len(name) > MAX_RAYJOB_NAME:
        return f"The RayJob metadata is invalid: RayJob name should be no more than {MAX_RAYJOB_NAME} characters"
    if not _DNS1035.fullmatch(name):
        return f"The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label: {_DNS1035_ERROR}"
    spec = "The RayJob spec is invalid: "
    shutdown, ttl = r.get("spec.shutdownAfterJobFinishes", False), r.get("spec.ttlSecondsAfterFinished", 0)
    if r.get("spec.suspend") and not shutdown:
        return spec + "a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended"
    if ttl < 0:
        return spec + "TTLSecondsAfterFinished must be a non-negative integer"
    if not shutdown and ttl > 0:
        return spec + "a RayJob with shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished"
    if r.get("spec.rayClusterSpec") is None and not r.get("spec.clusterSelector"):
        return spec + "one of RayClusterSpec or ClusterSelector must be set"
    deadline, backoff = r.get("spec.activeDeadlineSeconds"), r.get("spec.backoffLimit")
    if deadline is not None and deadline <= 0:
        return spec + "activeDeadlineSeconds must be a positive integer"
    if backoff is not None and backoff < 0:
        return spec + "backoffLimit must be a positive integer"
    return None


def unsupported(r: Reader) -> str | None:
    mode = r.get("spec.submissionMode", n.K8S_JOB_MODE)  # the CRD's default
    if mode != n.K8S_JOB_MODE:
        return f"spec.submissionMode={mode}"
    return next((key for key in _UNSUPPORTED if r.get(key)), None)


def _ms(ms: int) -> str:
    return n.rfc3339(datetime.fromtimestamp(ms / 1000, tz=timezone.utc))


class _RequeueError(Exception):
    """Stop this reconcile without writing the status (KubeRay returns early)."""


class RayJobController:
    def __init__(self, kube: Kube, dashboard: Dashboard) -> None:
        self.kube, self.dashboard = kube, dashboard

    # --- entry ----------------------------------------------------------------------------------

    def reconcile(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        key = f"RayJob {ns}/{name}"
        r = Reader("RayJob", job)
        managed_by = r.get("spec.managedBy")
        if managed_by and managed_by != n.KUBERAY_CONTROLLER:
            return  # another controller (e.g. MultiKueue) owns it
        if meta.get("deletionTimestamp"):
            self._finalize(job)
            return
        original = Status("RayJob", job.get("status") or {})
        status = Status("RayJob", copy.deepcopy(dict(original)))
        error = invalid(name, r)
        if error:
            # KubeRay fails an invalid RayJob right away, and then leaves it alone.
            status.update(jobDeploymentStatus=n.VALIDATION_FAILED, reason=n.VALIDATION_FAILED, message=error)
            self._write_status(job, original, status)
            return
        why = unsupported(r)
        if why:
            log.once(key, f"{key}: {why} is not supported by the stand-in; leaving it alone")
            return
        try:
            self._step(job, r, status, key)
        except _RequeueError:
            return
        except (ApiError, DashboardError) as e:
            log.once(key, f"{key}: {e}")
            return
        log.forget(key)
        self._backoff(r, status)
        self._write_status(job, original, status)

    def _step(self, job: dict[str, Any], r: Reader, st: dict[str, Any], key: str) -> None:
        ds = st.get("jobDeploymentStatus", n.NEW)
        if ds == n.NEW:
            self._add_finalizer(job)
            self._init_status(job, r, st)
        elif ds == n.INITIALIZING:
            if self._to_suspending(r, st) or self._deadline(r, st):
                return
            cluster = self._get_or_create_cluster(job, r, st)
            if not st.get("dashboardURL"):
                if Reader("RayCluster", cluster).get("status.state") != n.CLUSTER_READY:
                    raise _RequeueError  # wait for the cluster before submitting
                st["dashboardURL"] = self._dashboard_url(cluster)
            self._create_submitter_if_needed(job, r, cluster, st)
            st["jobDeploymentStatus"] = n.RUNNING
        elif ds == n.RUNNING:
            self._running(job, r, st)
        elif ds in (n.SUSPENDING, n.RETRYING):
            # Atomic: everything of this attempt goes, then the status moves on.
            cluster_gone = self._delete_cluster(job, st)
            job_gone = self._delete_submitter(job)
            if not (cluster_gone and job_gone):
                raise _RequeueError
            for k in ("rayClusterName", "dashboardURL", "jobId", "message", "reason", "jobStatus"):
                st.pop(k, None)
            st["rayClusterStatus"], st["rayJobInfo"] = {}, {}
            st["jobDeploymentStatus"] = n.SUSPENDED if ds == n.SUSPENDING else n.NEW
        elif ds == n.SUSPENDED:
            if r.get("spec.suspend"):
                raise _RequeueError
            st.pop("jobStatus", None)
            st["jobDeploymentStatus"] = n.NEW
        elif ds in (n.COMPLETE, n.FAILED):
            self._finished(job, r, st)
            raise _RequeueError  # KubeRay does not update the status here
        elif ds == n.VALIDATION_FAILED:
            raise _RequeueError  # the spec became valid again: KubeRay does not pick it up
        else:
            log.once(key, f"{key}: unknown jobDeploymentStatus {ds!r}")
            raise _RequeueError

    # --- New ------------------------------------------------------------------------------------

    def _add_finalizer(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        finalizers = meta.get("finalizers") or []
        if n.RAYJOB_FINALIZER in finalizers:
            return
        patched = self.kube.merge_patch(
            self.kube.ray_path("RayJob", meta["namespace"], meta["name"]),
            {"metadata": {"finalizers": [*finalizers, n.RAYJOB_FINALIZER], "resourceVersion": meta["resourceVersion"]}},
        )
        meta["resourceVersion"] = patched["metadata"]["resourceVersion"]
        meta["finalizers"] = patched["metadata"]["finalizers"]

    def _init_status(self, job: dict[str, Any], r: Reader, st: dict[str, Any]) -> None:
        """initRayJobStatusIfNeed."""
        name = job["metadata"]["name"]
        if st.get("jobId") and st.get("rayClusterName") and st.get("jobStatus"):
            return
        if not st.get("jobId"):
            st["jobId"] = r.get("spec.jobId") or n.generate_ray_job_id(name)
        if not st.get("rayClusterName"):
            st["rayClusterName"] = n.generate_ray_cluster_name(name)
        st["jobDeploymentStatus"] = n.INITIALIZING
        st["startTime"] = n.rfc3339(n.now())

    # --- Initializing ---------------------------------------------------------------------------

    def _get_or_create_cluster(self, job: dict[str, Any], r: Reader, st: dict[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        path = self.kube.ray_path("RayCluster", meta["namespace"], st["rayClusterName"])
        cluster = self.kube.get(path)
        if cluster is not None:
            return cluster
        body = {
            "apiVersion": n.API_VERSION,
            "kind": "RayCluster",
            "metadata": {
                "name": st["rayClusterName"],
                "namespace": meta["namespace"],
                "labels": {
                    **(meta.get("labels") or {}),
                    n.ORIGINATED_FROM_CR_NAME: meta["name"],
                    n.ORIGINATED_FROM_CRD: "RayJob",
                },  # fmt: skip
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [n.controller_ref(job)],
            },
            "spec": copy.deepcopy(r.get("spec.rayClusterSpec")),
        }
        if not body["metadata"]["annotations"]:
            del body["metadata"]["annotations"]
        cluster = self.kube.create(self.kube.ray_path("RayCluster", meta["namespace"]), body)
        log.action(f"created RayCluster {meta['namespace']}/{st['rayClusterName']} for RayJob {meta['name']}")
        return cluster

    def _dashboard_url(self, cluster: dict[str, Any]) -> str:
        """FetchHeadServiceURL: <head Service>.<namespace>.svc.<domain>:<dashboard port>."""
        meta = cluster["metadata"]
        service = self.kube.get(self.kube.core_path("services", meta["namespace"], n.head_service_name(meta["name"])))
        if service is None:
            raise DashboardError(f"head Service {n.head_service_name(meta['name'])} not found")
        port = next(
            (p["port"] for p in service["spec"].get("ports") or [] if p.get("name") == n.DASHBOARD_PORT_NAME), None
        )
        if port is None:
            raise DashboardError(f"{n.DASHBOARD_PORT_NAME} port is not found")
        return f"{service['metadata']['name']}.{meta['namespace']}.svc.{n.cluster_domain()}:{port}"

    def _create_submitter_if_needed(self, job: dict[str, Any], r: Reader, cluster: dict[str, Any],
                                    st: dict[str, Any]) -> None:  # fmt: skip
        meta = job["metadata"]
        path = self.kube.core_path("jobs", meta["namespace"], group="/apis/batch/v1")
        if self.kube.get(f"{path}/{meta['name']}") is not None:
            return
        backoff = r.get("spec.submitterConfig.backoffLimit", 2)
        body = submitter.build_submitter_job(job, Reader("RayCluster", cluster).get("spec.headGroupSpec.template"),
                                             st["dashboardURL"], st["jobId"], r.get("spec.entrypoint", ""), backoff)  # fmt: skip
        self.kube.create(path, body)
        log.action(f"created submitter Job {meta['namespace']}/{meta['name']} (submission id {st['jobId']})")

    # --- Running --------------------------------------------------------------------------------

    def _running(self, job: dict[str, Any], r: Reader, st: dict[str, Any]) -> None:
        if self._to_suspending(r, st) or self._deadline(r, st) or self._grace_period(st):
            return
        meta = job["metadata"]
        cluster = self._get_or_create_cluster(job, r, st)
        self._rayjob_head_service(job, cluster)
        sub = self.kube.get(self.kube.core_path("jobs", meta["namespace"], meta["name"], group="/apis/batch/v1"))
        if sub is None:
            raise DashboardError(f"submitter Job {meta['namespace']}/{meta['name']} not found")
        failed = submitter.failed_condition(sub)
        if failed:
            # The submitter can submit nothing any more: the attempt is over.
            st["jobDeploymentStatus"] = n.FAILED
            if st.get("jobStatus") == n.JOB_FAILED:
                st["reason"] = n.APP_FAILED
            else:
                st["reason"] = n.SUBMISSION_FAILED
                st["message"] = (
                    f"Job submission has failed. Reason: {failed.get('reason', '')}. Message: {failed.get('message', '')}"
                )
            return
        view = {**job, "status": st}
        info = self.dashboard.job_info(view, cluster, st["jobId"])
        if info is None:
            raise DashboardError(f"Ray job {st['jobId']} not found on the cluster yet")
        deployment, reason = n.RUNNING, ""
        if info.status in n.TERMINAL_JOB_STATUSES and submitter.finished(sub):
            deployment = n.FAILED if info.status == n.JOB_FAILED else n.COMPLETE
            reason = n.APP_FAILED if info.status == n.JOB_FAILED else ""
        st["rayClusterStatus"] = copy.deepcopy(cluster.get("status") or {})
        st.update(jobStatus=info.status, jobDeploymentStatus=deployment, reason=reason, message=info.message)
        ray_info = st.setdefault("rayJobInfo", {})
        if info.start_time:
            ray_info["startTime"] = _ms(info.start_time)
        if info.end_time:
            ray_info["endTime"] = _ms(info.end_time)

    def _rayjob_head_service(self, job: dict[str, Any], cluster: dict[str, Any]) -> None:
        """reconcileServices: ``<rayjob>-head-svc`` follows the head of the current attempt."""
        meta = job["metadata"]
        c = Reader("RayCluster", cluster)
        body = svc.build_head_service(
            cluster, c.get("spec.headGroupSpec.template"), c.get("spec.headGroupSpec.serviceType")
        )
        name = f"{meta['name']}-head-svc"
        body["metadata"] = {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {n.ORIGINATED_FROM_CR_NAME: meta["name"], n.ORIGINATED_FROM_CRD: "RayJob",
                       n.NODE_TYPE_LABEL: n.HEAD, n.IDENTIFIER_LABEL: n.identifier(meta["name"], n.HEAD)},
            "ownerReferences": [n.controller_ref(job)],
        }  # fmt: skip
        path = self.kube.core_path("services", meta["namespace"], name)
        old = self.kube.get(path)
        if old is None:
            self.kube.create(self.kube.core_path("services", meta["namespace"]), body)
            log.action(f"created head Service {meta['namespace']}/{name} of RayJob {meta['name']}")
        elif old["spec"]["selector"].get(n.CLUSTER_LABEL) != body["spec"]["selector"][n.CLUSTER_LABEL]:
            # Only when the cluster changed (a retry); the Service keeps its IP.
            spec = {**body["spec"], "clusterIP": old["spec"].get("clusterIP")}
            self.kube.request("PUT", path, {**old, "spec": spec})
            log.action(f"pointed head Service {meta['namespace']}/{name} at RayCluster {cluster['metadata']['name']}")

    def _to_suspending(self, r: Reader, st: dict[str, Any]) -> bool:
        """updateStatusToSuspendingIfNeeded (from Initializing or Running only)."""
        if not r.get("spec.suspend"):
            return False
        st["jobDeploymentStatus"] = n.SUSPENDING
        return True

    def _deadline(self, r: Reader, st: dict[str, Any]) -> bool:
        """checkActiveDeadlineAndUpdateStatusIfNeeded."""
        seconds, start = r.get("spec.activeDeadlineSeconds"), n.parse_time(st.get("startTime"))
        if seconds is None or start is None or n.now() < start + timedelta(seconds=seconds):
            return False
        st.update(jobDeploymentStatus=n.FAILED, reason=n.DEADLINE_EXCEEDED,
                  message=f"The RayJob has passed the activeDeadlineSeconds. StartTime: {n.go_time(start)}. "
                          f"ActiveDeadlineSeconds: {seconds}")  # fmt: skip
        return True

    def _grace_period(self, st: dict[str, Any]) -> bool:
        """checkTransitionGracePeriodAndUpdateStatusIfNeeded: a submitter that never exits."""
        if st.get("jobStatus") not in n.TERMINAL_JOB_STATUSES:
            return False
        end = n.parse_time((st.get("rayJobInfo") or {}).get("endTime"))
        try:
            grace = int(os.environ.get(n.ENV_GRACE_PERIOD, ""))
        except ValueError:
            grace = n.DEFAULT_GRACE_PERIOD_SECONDS
        if end is None or n.now() < end + timedelta(seconds=grace):
            return False
        st.update(jobDeploymentStatus=n.FAILED if st["jobStatus"] == n.JOB_FAILED else n.COMPLETE,
                  reason=n.GRACE_PERIOD_EXCEEDED,
                  message="JobDeploymentStatus does not transition to Complete or Failed within the grace period "
                          "after JobStatus reaches a terminal state.")  # fmt: skip
        return True

    # --- Suspending / Retrying / Complete / Failed ----------------------------------------------

    def _delete_cluster(self, job: dict[str, Any], st: dict[str, Any]) -> bool:
        """deleteClusterResources: True once the RayCluster is gone."""
        name = st.get("rayClusterName")
        if not name:
            return True
        path = self.kube.ray_path("RayCluster", job["metadata"]["namespace"], name)
        cluster = self.kube.get(path)
        if cluster is None:
            return True
        if not cluster["metadata"].get("deletionTimestamp") and self.kube.delete(path):
            log.action(f"deleted RayCluster {job['metadata']['namespace']}/{name} of RayJob {job['metadata']['name']}")
        return False

    def _delete_submitter(self, job: dict[str, Any]) -> bool:
        """deleteSubmitterJob: True once the submitter Job is gone."""
        meta = job["metadata"]
        path = self.kube.core_path("jobs", meta["namespace"], meta["name"], group="/apis/batch/v1")
        sub = self.kube.get(path)
        if sub is None:
            return True
        if not sub["metadata"].get("deletionTimestamp") and self.kube.delete(path, propagation="Background"):
            log.action(f"deleted submitter Job {meta['namespace']}/{meta['name']}")
        return False

    def _finished(self, job: dict[str, Any], r: Reader, st: dict[str, Any]) -> None:
        if not r.get("spec.shutdownAfterJobFinishes"):
            return
        end = n.parse_time(st.get("endTime"))
        if end is None or n.now() < end + timedelta(seconds=r.get("spec.ttlSecondsAfterFinished", 0)):
            return
        meta = job["metadata"]
        if n.env_true(n.ENV_DELETE_RAYJOB_AFTER_FINISH):
            if self.kube.delete(self.kube.ray_path("RayJob", meta["namespace"], meta["name"])):
                log.action(f"deleted RayJob {meta['namespace']}/{meta['name']} after it finished")
            return
        # The submitter Job stays: its pod has the driver's logs, and uses nothing any more.
        self._delete_cluster(job, st)

    def _finalize(self, job: dict[str, Any]) -> None:
        """A RayJob being deleted: stop its Ray job (best effort), then let it go."""
        meta = job["metadata"]
        if n.RAYJOB_FINALIZER not in (meta.get("finalizers") or []):
            return
        st = Status("RayJob", job.get("status") or {})
        if st.get("jobStatus") not in n.TERMINAL_JOB_STATUSES and st.get("jobId") and st.get("rayClusterName"):
            cluster = self.kube.get(self.kube.ray_path("RayCluster", meta["namespace"], st["rayClusterName"])) or {}
            try:
                self.dashboard.stop_job(job, cluster, st["jobId"])
                log.action(f"stopped Ray job {st['jobId']} of deleted RayJob {meta['namespace']}/{meta['name']}")
            except DashboardError as e:
                log.action(f"could not stop Ray job {st['jobId']} of deleted RayJob {meta['name']} ({e}); going on")
        finalizers = [f for f in meta["finalizers"] if f != n.RAYJOB_FINALIZER]
        self.kube.merge_patch(self.kube.ray_path("RayJob", meta["namespace"], meta["name"]),
                              {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}})  # fmt: skip
        log.action(f"removed the finalizer of deleted RayJob {meta['namespace']}/{meta['name']}")

    # --- after every step -----------------------------------------------------------------------

    def _backoff(self, r: Reader, st: dict[str, Any]) -> None:
        """checkBackoffLimitAndUpdateStatusIfNeeded."""
        failed, succeeded = st.get("failed") or 0, st.get("succeeded") or 0
        if st.get("jobDeploymentStatus") == n.FAILED:
            failed += 1
        if st.get("jobStatus") == n.JOB_SUCCEEDED and st.get("jobDeploymentStatus") == n.COMPLETE:
            succeeded += 1
        st["failed"], st["succeeded"] = failed, succeeded
        limit = r.get("spec.backoffLimit")
        if st.get("jobDeploymentStatus") == n.FAILED and limit is not None and failed < limit + 1:
            if st.get("reason") != n.DEADLINE_EXCEEDED:  # a deadline is not retried
                st["jobDeploymentStatus"] = n.RETRYING

    def _write_status(self, job: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        """updateRayJobStatus: only a new jobStatus or jobDeploymentStatus is written."""
        if old.get("jobStatus", "") == new.get("jobStatus", "") and \
                old.get("jobDeploymentStatus", "") == new.get("jobDeploymentStatus", ""):  # fmt: skip
            return
        if new.get("jobDeploymentStatus") in (n.COMPLETE, n.FAILED):
            new["endTime"] = n.rfc3339(n.now())
        new.setdefault("rayClusterStatus", {})
        new.setdefault("rayJobInfo", {})
        body = log.go_json(dict(new), keep=("failed", "succeeded", "rayClusterStatus", "rayJobInfo"))
        check_status_writes("RayJob", body)
        self.kube.replace_status("RayJob", job, body)
        meta = job["metadata"]
        detail = ", ".join(
            f"{k}={body[k]}"
            for k in ("jobStatus", "reason", "rayClusterName", "failed", "succeeded")
            if body.get(k) not in (None, "")
        )
        log.action(f"RayJob {meta['namespace']}/{meta['name']}: {old.get('jobDeploymentStatus') or 'New'} -> "
                   f"{new.get('jobDeploymentStatus') or 'New'} ({detail})")  # fmt: skip
