"""The ``k8s`` target: GANJob / GANGeneration objects for the ganops operator.

The CLI only talks to the API server (as the user, through their kube config); the
operator does the rest. Logs are the RayJob submitter pod's, which streams the Ray
driver's output.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from ganops.errors import UserError
from ganops.k8s import CANCEL_ANNOTATION, GROUP, PLURALS, RESTART_ANNOTATION, VERSION
from ganops.k8s.client import api_client, api_error, default_namespace
from ganops.k8s.objects import custom_object
from ganops.k8s.status import now
from ganops.phases import PENDING, TERMINAL
from ganops.targets.base import JobStatus


def _row(obj: dict[str, Any]) -> JobStatus:
    st = obj.get("status") or {}
    meta = obj["metadata"]
    return JobStatus(
        name=meta["name"], kind="train" if obj["kind"] == "GANJob" else "generate",
        phase=st.get("phase") or PENDING, target="k8s", id=st.get("rayJobName"), namespace=meta.get("namespace"),
        submitted=meta.get("creationTimestamp"), started=st.get("startTime"), finished=st.get("completionTime"),
        message=st.get("message"), mlflow_run_id=st.get("mlflowRunId"), latest_checkpoint=st.get("latestCheckpoint"),
        details={k: st[k] for k in ("jobStatus", "jobDeploymentStatus") if st.get(k)},
    )  # fmt: skip


class K8sTarget:
    name = "k8s"

    def __init__(self, namespace: str | None = None, *, all_namespaces: bool = False,
                 kubeconfig: str | None = None) -> None:  # fmt: skip
        from kubernetes import client

        self.api = api_client(kubeconfig)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.namespace = namespace or default_namespace(kubeconfig)
        self.all_namespaces = all_namespaces

    # --- helpers ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kw)
        except ApiException as e:
            if e.status == 404 and "the server could not find the requested resource" in api_error(e):
                raise UserError(
                    "--target k8s: the cluster has no GANJob kind; install the ganops chart (helm/ganops) first"
                ) from None
            if e.status == 403:
                raise UserError(
                    f"--target k8s: not allowed to {what} in namespace {self.namespace}: {api_error(e)}"
                ) from None
            raise
        except (HTTPError, OSError) as e:
            raise UserError(f"--target k8s: cannot reach the API server ({e})") from None

    def _get(self, name: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        for plural in PLURALS.values():
            try:
                return self._call(f"get {plural}", self.custom.get_namespaced_custom_object,
                                  GROUP, VERSION, self.namespace, plural, name)  # fmt: skip
            except ApiException as e:
                if e.status != 404:
                    raise UserError(f"--target k8s: {api_error(e)}") from None
        raise UserError(f"no GANJob or GANGeneration named {name!r} in namespace {self.namespace}")

    def _create(self, job: Any, annotations: dict[str, str]) -> JobStatus:
        from kubernetes.client.exceptions import ApiException

        body = custom_object(job, self.namespace)
        if annotations:
            body["metadata"]["annotations"] = annotations
        plural = PLURALS[body["kind"]]
        try:
            created = self._call(f"create {plural}", self.custom.create_namespaced_custom_object,
                                 GROUP, VERSION, self.namespace, plural, body)  # fmt: skip
        except ApiException as e:
            if e.status == 422:
                raise UserError(f"the API server refused the {body['kind']}: {api_error(e)}") from None
            if e.status != 409:
                raise UserError(f"--target k8s: {api_error(e)}") from None
            existing = self._get(job.name)
            phase = (existing.get("status") or {}).get("phase")
            if phase not in TERMINAL:
                raise UserError(
                    f"{existing['kind']} {job.name} is {phase or PENDING} in namespace {self.namespace}; "
                    f"`ganops cancel {job.name}` first"
                ) from None
            # A finished job of the same name: replace it (its checkpoints stay in storage,
            # so a training job resumes from them).
            self._call(f"delete {plural}", self.custom.delete_namespaced_custom_object,
                       GROUP, VERSION, self.namespace, PLURALS[existing["kind"]], job.name)  # fmt: skip
            created = self._call(f"create {plural}", self.custom.create_namespaced_custom_object,
                                 GROUP, VERSION, self.namespace, plural, body)  # fmt: skip
        return _row(created)

    # --- verbs -----------------------------------------------------------------------------
    def submit_train(self, job: Any, *, restart: bool = False) -> JobStatus:
        return self._create(job, {RESTART_ANNOTATION: "true"} if restart else {})

    def submit_generate(self, gen: Any) -> JobStatus:
        return self._create(gen, {})

    def status(self, name: str) -> JobStatus:
        return _row(self._get(name))

    def list(self) -> list[JobStatus]:
        rows = []
        for plural in PLURALS.values():
            if self.all_namespaces:
                res = self._call(f"list {plural}", self.custom.list_cluster_custom_object, GROUP, VERSION, plural)
            else:
                res = self._call(f"list {plural}", self.custom.list_namespaced_custom_object,
                                 GROUP, VERSION, self.namespace, plural)  # fmt: skip
            rows += [_row(o) for o in res.get("items", [])]
        return sorted(rows, key=lambda r: r.submitted or "", reverse=True)

    def cancel(self, name: str) -> JobStatus:
        obj = self._get(name)
        phase = (obj.get("status") or {}).get("phase")
        if phase in TERMINAL:
            return _row(obj)
        patch = {"metadata": {"annotations": {CANCEL_ANNOTATION: f"requested at {now()}"}}}
        updated = self._call("patch", self.custom.patch_namespaced_custom_object,
                             GROUP, VERSION, self.namespace, PLURALS[obj["kind"]], name, patch)  # fmt: skip
        row = _row(updated)
        row.message = row.message if row.phase in TERMINAL else "cancel requested; the operator suspends the RayJob"
        return row

    def _pod(self, rayjob: str) -> str | None:
        """The submitter pod of the RayJob (K8sJobMode: a Job named after the RayJob)."""
        pods = self._call("list pods", self.core.list_namespaced_pod, self.namespace,
                          label_selector=f"job-name={rayjob}").items  # fmt: skip
        pods.sort(key=lambda p: p.metadata.creation_timestamp or dt.datetime.min.replace(tzinfo=dt.timezone.utc))
        return pods[-1].metadata.name if pods else None

    def logs(self, name: str, *, follow: bool = False) -> Iterator[str]:
        from kubernetes.client.exceptions import ApiException

        row = self.status(name)
        pod = self._pod(row.id) if row.id else None
        if pod is None:
            hint = f" ({row.message})" if row.message else ""
            raise UserError(f"{name}: no driver pod yet; the job is {row.phase}{hint}")
        try:
            resp = self._call("read pod logs", self.core.read_namespaced_pod_log, pod, self.namespace,
                              follow=follow, _preload_content=False)  # fmt: skip
        except ApiException as e:
            raise UserError(f"{name}: cannot read the logs of pod {pod}: {api_error(e)}") from None
        try:
            for chunk in resp.stream(4096):
                yield chunk.decode(errors="replace")
        finally:
            resp.release_conn()
