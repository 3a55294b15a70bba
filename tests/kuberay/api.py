"""The few Kubernetes API calls the stand-in makes, on plain JSON dicts.

Stands in for the controller-runtime client that KubeRay's controllers use
(ray-operator/controllers/ray/rayjob_controller.go and raycluster_controller.go: r.Get, r.List
with label selectors, r.Create, r.Delete with background propagation, r.Update,
r.Status().Update with its resourceVersion conflict check). Simplifies: KubeRay reads from a
watch-fed cache; the stand-in reads straight from the API server, so no cache can lag behind its
own writes (KubeRay needs its "expectations" for that; the stand-in does not). Objects stay dicts
exactly as the API server serves them, through the ``kubernetes`` client's configuration and
authentication.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes import client, config

from tests.kuberay import names as n

PLURALS = {"RayJob": "rayjobs", "RayCluster": "rayclusters"}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def load_client(kubeconfig: str | None) -> client.ApiClient:
    """From ``kubeconfig``, else the in-cluster ServiceAccount, else the default kubeconfig."""
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
    if not cfg.verify_ssl:
        import urllib3

        # The kubeconfig asks for it (a test cluster's own certificate): a warning per request
        # would drown the one line per action.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return client.ApiClient(cfg)


class Kube:
    def __init__(self, api_client: client.ApiClient, timeout: float = 10) -> None:
        self.client, self.timeout = api_client, timeout

    def request(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
                content_type: str = "application/json") -> dict[str, Any]:  # fmt: skip
        if query:
            path = f"{path}?{urlencode(query)}"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, headers, body, _ = self.client.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = self.client.call_api(m, url, header_params=headers, body=body, _request_timeout=self.timeout)
        resp.read()
        try:
            data = json.loads(resp.data) if resp.data else {}
        except ValueError:  # a proxy's or a dying server's plain-text error
            data = {"message": resp.data[:300].decode(errors="replace")}
        if not 200 <= resp.status <= 299:
            raise ApiError(resp.status, str(data.get("message", data)) if isinstance(data, dict) else str(data))
        return data

    # --- paths ---------------------------------------------------------------------------------

    @staticmethod
    def ray_path(kind: str, namespace: str | None, name: str | None = None) -> str:
        base = f"/apis/{n.API_VERSION}" + (f"/namespaces/{namespace}" if namespace else "") + f"/{PLURALS[kind]}"
        return f"{base}/{quote(name)}" if name else base

    @staticmethod
    def core_path(plural: str, namespace: str, name: str | None = None, group: str = "/api/v1") -> str:
        base = f"{group}/namespaces/{namespace}/{plural}"
        return f"{base}/{quote(name)}" if name else base

    # --- verbs ---------------------------------------------------------------------------------

    def list(self, path: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        return self.request("GET", path, query=query).get("items") or []

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def delete(self, path: str, propagation: str | None = None) -> bool:
        """True if it was there (and is being deleted now)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation} if propagation else None
        try:
            self.request("DELETE", path, body)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def replace_status(self, kind: str, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Status().Update: conflicts (409) when the object changed since it was read."""
        meta = obj["metadata"]
        body = {"apiVersion": obj["apiVersion"], "kind": kind, "status": status,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "resourceVersion": meta["resourceVersion"]}}  # fmt: skip
        return self.request("PUT", self.ray_path(kind, meta["namespace"], meta["name"]) + "/status", body)
