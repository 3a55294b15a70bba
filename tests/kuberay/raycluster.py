"""The RayCluster controller: head Service, head and worker pods, and the RayCluster's status.

Follows (ray-project/kuberay):
  ray-operator/controllers/ray/raycluster_controller.go  rayClusterReconcile (service, then pods,
      then status), reconcileHeadService, reconcilePods (one head pod; per group: delete unhealthy
      pods (shouldDeletePod), create missing replicas, delete extra ones), calculateStatus (state
      ``ready`` once the head and every desired worker are Running and Ready; the HeadPodReady and
      RayClusterProvisioned conditions; worker counts; desired CPU/memory/GPU/TPU; endpoints;
      head.podIP/podName/serviceIP/serviceName), inconsistentRayClusterStatus,
      updateRayClusterStatus (Status().Update, only when something but the timestamps changed)
  ray-operator/controllers/ray/utils/util.go  GetWorkerGroupDesiredReplicas, CalculateMin/Max/
      Ready/AvailableReplicas, CalculateDesiredResources, CheckAllPodsRunning,
      FindHeadPodReadyCondition
Simplifies: polling instead of watches, so no scale expectations are needed; autoscaling,
suspension, GCS fault tolerance, auth, multi-host groups, ingress and the serve Service are
not implemented (a RayCluster asking for one is logged and left alone).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kuberay import log, pods
from tests.kuberay import names as n
from tests.kuberay import service as svc
from tests.kuberay.api import Kube
from tests.kuberay.fields import Reader, Status, check_status_writes
from tests.kuberay.quantity import Quantity, pod_resources, sum_resources

_MAX_INT32 = 2**31 - 1


def unsupported(r: Reader) -> str | None:
    """What this RayCluster asks for that the stand-in does not do."""
    if r.get("spec.enableInTreeAutoscaling"):
        return "spec.enableInTreeAutoscaling"
    for key in ("spec.suspend", "spec.gcsFaultToleranceOptions", "spec.authOptions", "spec.headGroupSpec.resources",
                "spec.headGroupSpec.labels"):  # fmt: skip
        if r.get(key):
            return key
    for g in r.items("spec.workerGroupSpecs"):
        for key in ("suspend", "resources", "labels"):
            if g.get(key):
                return f"spec.workerGroupSpecs[].{key}"
        if (g.get("numOfHosts") or 1) > 1:
            return "spec.workerGroupSpecs[].numOfHosts"
    return None


def desired_replicas(g: Reader) -> int:
    """GetWorkerGroupDesiredReplicas, with the CRD's defaults (the test API server's permissive
    CRD applies none)."""
    lo, hi = g.get("minReplicas", 0), g.get("maxReplicas", _MAX_INT32)
    replicas = g.get("replicas")
    if lo > hi:
        return hi
    if replicas is None or replicas < lo:
        return lo
    return min(replicas, hi)


def _set_condition(conditions: list[dict[str, Any]], cond: dict[str, Any]) -> None:
    """meta.SetStatusCondition: lastTransitionTime moves only when the status changes."""
    for c in conditions:
        if c["type"] == cond["type"]:
            if c["status"] != cond["status"]:
                c["lastTransitionTime"] = n.rfc3339(n.now())
            c.update(status=cond["status"], reason=cond["reason"], message=cond["message"])
            return
    conditions.append({**cond, "lastTransitionTime": n.rfc3339(n.now())})


def _head_ready_condition(head: dict[str, Any] | None) -> dict[str, Any]:
    """FindHeadPodReadyCondition."""
    if head is None:
        return {
            "type": n.HEAD_POD_READY,
            "status": "False",
            "reason": "HeadPodNotFound",
            "message": "Head Pod not found",
        }
    cond = {"type": n.HEAD_POD_READY, "status": "False", "reason": "Unknown", "message": ""}
    for c in (head.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            cond["status"], cond["message"] = c.get("status", "False"), c.get("message") or ""
            details = []
            for s in (head.get("status") or {}).get("containerStatuses") or []:
                state = s.get("state") or {}
                for kind in ("waiting", "terminated"):
                    if state.get(kind):
                        details.append(
                            f"{s['name']}: {state[kind].get('reason', '')}: {state[kind].get('message', '')}"
                        )
            if details:
                cond["message"] = "; ".join(filter(None, [cond["message"], ", ".join(details)]))
            reason = c.get("reason") or ("HeadPodRunningAndReady" if cond["status"] == "True" else "")
            if reason:
                cond["reason"] = reason
            break
    return cond


def _all_running(all_pods: list[dict[str, Any]]) -> bool:
    """CheckAllPodsRunning: a pod without a Ready condition passes, as in KubeRay."""
    if not all_pods:
        return False
    for p in all_pods:
        st = p.get("status") or {}
        if st.get("phase") != "Running":
            return False
        if any(c.get("type") == "Ready" and c.get("status") != "True" for c in st.get("conditions") or []):
            return False
    return True


class RayClusterController:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def reconcile(self, cluster: dict[str, Any]) -> None:
        meta = cluster["metadata"]
        if meta.get("deletionTimestamp"):
            return
        key = f"RayCluster {meta['namespace']}/{meta['name']}"
        r = Reader("RayCluster", cluster)
        why = unsupported(r)
        if why:
            log.once(key, f"{key}: {why} is not supported by the stand-in; leaving it alone")
            return
        service = self._head_service(cluster, r)
        error = self._pods(cluster, r, key)
        self._status(cluster, r, service, error)

    # --- head Service ---------------------------------------------------------------------------

    def _head_service(self, cluster: dict[str, Any], r: Reader) -> dict[str, Any]:
        meta = cluster["metadata"]
        path = self.kube.core_path("services", meta["namespace"])
        found = self.kube.list(path, {n.CLUSTER_LABEL: meta["name"], n.NODE_TYPE_LABEL: n.HEAD})
        if len(found) > 1:
            raise RuntimeError(f"{len(found)} head services found for RayCluster {meta['name']}")
        if found:
            return found[0]
        body = svc.build_head_service(
            cluster, r.get("spec.headGroupSpec.template"), r.get("spec.headGroupSpec.serviceType")
        )
        created = self.kube.create(path, body)
        log.action(
            f"created head Service {meta['namespace']}/{created['metadata']['name']} for RayCluster {meta['name']}"
        )
        return created

    # --- pods -----------------------------------------------------------------------------------

    def _pods(self, cluster: dict[str, Any], r: Reader, key: str) -> str | None:
        """reconcilePods; returns the reconcile error, as KubeRay hands it to calculateStatus."""
        meta = cluster["metadata"]
        ns, name = meta["namespace"], meta["name"]
        path = self.kube.core_path("pods", ns)
        head_params = dict(r.get("spec.headGroupSpec.rayStartParams") or {})
        heads = self.kube.list(path, {n.CLUSTER_LABEL: name, n.NODE_TYPE_LABEL: n.HEAD})
        if len(heads) == 1:
            why = pods.should_delete(heads[0])
            if why:
                self._delete_pod(ns, heads[0], why)
                return why
        elif not heads:
            pod = pods.build_head_pod(cluster, r.get("spec.headGroupSpec.template"), head_params)
            created = self.kube.create(path, pod)
            log.action(f"created head pod {ns}/{created['metadata']['name']} for RayCluster {name}")
        else:
            for extra in [p for p in heads if (p.get("status") or {}).get("phase") not in ("Running", "Pending")]:
                self._delete_pod(ns, extra, "more than one head pod")
        for g in r.items("spec.workerGroupSpecs"):
            group = g.get("groupName")
            workers = self.kube.list(path, {n.CLUSTER_LABEL: name, n.GROUP_LABEL: group})
            unhealthy = [(p, why) for p in workers if (why := pods.should_delete(p))]
            for p, why in unhealthy:
                self._delete_pod(ns, p, why)
            if unhealthy:
                # KubeRay creates replacements in the next reconcile, not this one.
                return f"deleted {len(unhealthy)} unhealthy worker pods"
            diff = desired_replicas(g) - len(workers)
            for _ in range(diff):
                pod = pods.build_worker_pod(cluster, group, g.get("template"), dict(g.get("rayStartParams") or {}),
                                            head_params)  # fmt: skip
                created = self.kube.create(path, pod)
                log.action(
                    f"created worker pod {ns}/{created['metadata']['name']} (group {group}) for RayCluster {name}"
                )
            for p in workers[: max(0, -diff)]:
                self._delete_pod(ns, p, "more workers than replicas")
        log.forget(key)
        return None

    def _delete_pod(self, ns: str, pod: dict[str, Any], why: str) -> None:
        if self.kube.delete(self.kube.core_path("pods", ns, pod["metadata"]["name"])):
            log.action(f"deleted pod {ns}/{pod['metadata']['name']}: {why}")

    # --- status ---------------------------------------------------------------------------------

    def _status(self, cluster: dict[str, Any], r: Reader, service: dict[str, Any], error: str | None) -> None:
        """calculateStatus + updateRayClusterStatus."""
        meta = cluster["metadata"]
        ns, name = meta["namespace"], meta["name"]
        old = Status("RayCluster", cluster.get("status") or {})
        new = Status("RayCluster", copy.deepcopy(dict(old)))
        all_pods = self.kube.list(self.kube.core_path("pods", ns), {n.CLUSTER_LABEL: name})
        workers = [p for p in all_pods if p["metadata"].get("labels", {}).get(n.NODE_TYPE_LABEL) == n.WORKER]
        heads = [p for p in all_pods if p["metadata"].get("labels", {}).get(n.NODE_TYPE_LABEL) == n.HEAD]
        groups = r.items("spec.workerGroupSpecs")
        desired = sum(desired_replicas(g) for g in groups)
        new.update(
            observedGeneration=meta.get("generation", 0),
            readyWorkerReplicas=sum(pods.is_running_and_ready(p) for p in workers),
            availableWorkerReplicas=sum((p.get("status") or {}).get("phase") == "Running" for p in workers),
            desiredWorkerReplicas=desired,
            minWorkerReplicas=sum(g.get("minReplicas", 0) for g in groups),
            maxWorkerReplicas=min(_MAX_INT32, sum(g.get("maxReplicas", _MAX_INT32) for g in groups)),
        )
        head_spec = r.get("spec.headGroupSpec.template")["spec"]
        per_pod = [pod_resources(head_spec)]
        for g in groups:
            per_pod += [pod_resources(g.get("template")["spec"])] * (g.get("replicas") or 0)
        total = sum_resources(per_pod)
        gpus = [q for k, q in total.items() if pods.is_gpu_key(k)]
        new.update(
            desiredCPU=str(total.get("cpu", Quantity(0))),
            desiredMemory=str(total.get("memory", Quantity(0))),
            desiredGPU=str(sum(gpus[1:], gpus[0]) if gpus else Quantity(0)),
            desiredTPU=str(total.get("google.com/tpu", Quantity(0))),
        )
        if error is None and len(all_pods) == desired + 1 and _all_running(all_pods):
            new["state"], new["reason"] = n.CLUSTER_READY, ""
        conditions = new.setdefault("conditions", [])
        head = heads[0] if len(heads) == 1 else None
        _set_condition(conditions, _head_ready_condition(head))
        provisioned = next((c for c in conditions if c["type"] == n.RAYCLUSTER_PROVISIONED), None)
        if not provisioned or provisioned["status"] != "True":
            # Set once: True the first time all pods are ready, then never changed.
            _set_condition(conditions, {"type": n.RAYCLUSTER_PROVISIONED, "status": "True",
                                        "reason": "AllPodRunningAndReadyFirstTime",
                                        "message": "All Ray Pods are ready for the first time"}
                           if _all_running(all_pods) else
                           {"type": n.RAYCLUSTER_PROVISIONED, "status": "False", "reason": "RayClusterPodsProvisioning",
                            "message": "RayCluster Pods are being provisioned for first time"})  # fmt: skip
        new["endpoints"] = {**(new.get("endpoints") or {}), **svc.endpoints(service)}
        cluster_ip = service["spec"].get("clusterIP")
        head_ip = ((head or {}).get("status") or {}).get("podIP", "")
        head_info = {
            "podIP": head_ip,
            "podName": head["metadata"]["name"] if head else "",
            # A headless Service has no IP: KubeRay reports the head pod's instead.
            "serviceIP": head_ip if cluster_ip == "None" else cluster_ip,
            "serviceName": service["metadata"]["name"],
        }
        new["head"] = log.go_json(head_info)
        stamp = n.rfc3339(n.now())
        new["lastUpdateTime"] = stamp
        if old.get("state") != new.get("state"):
            new["stateTransitionTimes"] = {**(new.get("stateTransitionTimes") or {}), new.get("state", ""): stamp}
        if not _inconsistent(old, new):
            return
        body = log.go_json(dict(new), keep=("head", "desiredCPU", "desiredMemory", "desiredGPU", "desiredTPU"))
        check_status_writes("RayCluster", body)
        self.kube.replace_status("RayCluster", cluster, body)
        if old.get("state") != new.get("state"):
            log.action(f"RayCluster {ns}/{name} is {new.get('state')}")


def _inconsistent(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """inconsistentRayClusterStatus: everything but lastUpdateTime and observedGeneration."""
    keys = ("state", "reason", "readyWorkerReplicas", "availableWorkerReplicas", "desiredWorkerReplicas",
            "minWorkerReplicas", "maxWorkerReplicas", "endpoints", "head", "conditions")  # fmt: skip
    old, new = log.go_json(old), log.go_json(new)  # an omitted 0 or "" equals a written one
    return any(old.get(k) != new.get(k) for k in keys)
