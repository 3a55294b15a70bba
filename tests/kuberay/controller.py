"""The reconcile loop: every RayJob, then every RayCluster, once per interval.

KubeRay runs two controller-runtime controllers on watches and requeues (RayJob every 3 s,
RayCluster on events); the stand-in polls the API server instead, which is simpler and
survives anything a watch can lose. One object's failure is logged and never stops the loop.
Follows ray-operator/main.go only in spirit (which controllers run, and over which namespaces).
"""

from __future__ import annotations

import threading
import traceback

from tests.kuberay import log
from tests.kuberay.api import ApiError, Kube
from tests.kuberay.dashboard import Dashboard
from tests.kuberay.raycluster import RayClusterController
from tests.kuberay.rayjob import RayJobController


class StandIn:
    def __init__(self, kube: Kube, dashboard: Dashboard, namespace: str | None = None) -> None:
        self.kube, self.namespace = kube, namespace
        self.rayjobs = RayJobController(kube, dashboard)
        self.rayclusters = RayClusterController(kube)

    def tick(self) -> None:
        for kind, controller in (("RayJob", self.rayjobs), ("RayCluster", self.rayclusters)):
            try:
                objects = self.kube.list(self.kube.ray_path(kind, self.namespace))
            except (ApiError, OSError) as e:  # the API server away, or the CRD not installed yet
                log.once(f"list {kind}", f"cannot list {kind}s: {e}")
                continue
            log.forget(f"list {kind}")
            for obj in objects:
                meta = obj["metadata"]
                key = f"{kind} {meta['namespace']}/{meta['name']}"
                try:
                    controller.reconcile(obj)
                except ApiError as e:
                    # 409: the object changed since it was listed; the next tick reads it again.
                    if e.status != 409:
                        log.once(key, f"{key}: {e}")
                except Exception:  # noqa: BLE001 - a bug for one object must not stop the others
                    log.once(key, f"{key}: reconcile failed:\n{traceback.format_exc()}")

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        log.action(f"watching RayJobs and RayClusters in {self.namespace or 'all namespaces'} every {interval:g}s")
        while not stop.is_set():
            self.tick()
            stop.wait(interval)
        log.action("stopped")
