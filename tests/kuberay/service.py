"""The head Service of a RayCluster, as KubeRay v1.5 builds it.

Follows (ray-project/kuberay):
  ray-operator/controllers/ray/common/service.go  HeadServiceLabels, BuildServiceForHeadPod,
      getServicePorts, getPortsFromCluster, getDefaultPorts (headless unless
      ENABLE_RAY_HEAD_CLUSTER_IP_SERVICE=true)
  ray-operator/controllers/ray/raycluster_controller.go  reconcileHeadService, createService
      (the name goes through CheckName), getHeadServiceIPAndName, updateEndpoints
Simplifies: no user-supplied headService and no headServiceAnnotations (ganops sets neither).
"""

from __future__ import annotations

from typing import Any

from tests.kuberay import names as n


def selector(cluster_name: str) -> dict[str, str]:
    """HeadServiceLabels: also the labels the controller finds its head Service by."""
    return {
        n.CLUSTER_LABEL: cluster_name,
        n.NODE_TYPE_LABEL: n.HEAD,
        n.IDENTIFIER_LABEL: n.identifier(cluster_name, n.HEAD),
        n.APP_NAME_LABEL: n.APPLICATION_NAME,
        n.CREATED_BY_LABEL: n.COMPONENT_NAME,
    }


def _ports(head_container: dict[str, Any]) -> list[dict[str, Any]]:
    """getServicePorts: the head container's ports (or KubeRay's defaults), plus metrics."""
    ports = {
        p.get("name") or f"{p['containerPort']}-port": p["containerPort"] for p in head_container.get("ports") or []
    }
    if not ports:
        ports = {n.CLIENT_PORT_NAME: n.DEFAULT_CLIENT_PORT, n.GCS_PORT_NAME: n.DEFAULT_GCS_PORT,
                 n.DASHBOARD_PORT_NAME: n.DEFAULT_DASHBOARD_PORT, n.METRICS_PORT_NAME: n.DEFAULT_METRICS_PORT,
                 n.SERVING_PORT_NAME: n.DEFAULT_SERVING_PORT}  # fmt: skip
    ports.setdefault(n.METRICS_PORT_NAME, n.DEFAULT_METRICS_PORT)
    # Sorted by name, so that the Service spec does not change with map order.
    return [{"name": name, "port": port, "appProtocol": "tcp"} for name, port in sorted(ports.items())]


def build_head_service(
    cluster: dict[str, Any], head_template: dict[str, Any], service_type: str | None
) -> dict[str, Any]:
    name, ns = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    labels = selector(name)
    template_labels = (head_template.get("metadata") or {}).get("labels") or {}
    if n.APP_NAME_LABEL in template_labels:  # reconcileHeadService keeps this one label of the template's
        labels[n.APP_NAME_LABEL] = template_labels[n.APP_NAME_LABEL]
    spec: dict[str, Any] = {
        "selector": dict(labels),
        "ports": _ports(head_template["spec"]["containers"][n.RAY_CONTAINER]),
    }
    if service_type:
        spec["type"] = service_type
    if not n.env_true(n.ENV_HEAD_CLUSTER_IP_SERVICE) and service_type in (None, "", "ClusterIP"):
        # Headless: a RayCluster has one head pod, whose address the name resolves to.
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": n.check_name(n.head_service_name(name)),
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [n.controller_ref(cluster)],
        },  # fmt: skip
        "spec": spec,
    }


def endpoints(service: dict[str, Any]) -> dict[str, str]:
    """updateEndpoints: port name -> node port, else target port."""
    out: dict[str, str] = {}
    for p in service["spec"].get("ports") or []:
        if not p.get("name"):
            continue
        if p.get("nodePort"):
            out[p["name"]] = str(p["nodePort"])
        elif p.get("targetPort") not in (None, "", 0):
            out[p["name"]] = str(p["targetPort"])
    return out


def dashboard_port(service: dict[str, Any]) -> int | None:
    """The Service port named "dashboard" (FetchHeadServiceURL)."""
    return next((p["port"] for p in service["spec"].get("ports") or [] if p.get("name") == n.DASHBOARD_PORT_NAME), None)
