"""Connecting to Kubernetes the way kubectl does: in-cluster config inside a pod, else
the kube config file ($KUBECONFIG or ~/.kube/config) and its current context."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ganops.errors import UserError

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def configuration(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.Configuration``; a ``UserError`` when there is no cluster to talk to."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config(client_configuration=cfg)
        return cfg
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube/config")
    try:
        config.load_kube_config(config_file=path, client_configuration=cfg)
    except (config.ConfigException, FileNotFoundError, OSError) as e:
        raise UserError(
            f"--target k8s: no usable kube config at {path} ({e}); set KUBECONFIG or run inside the cluster"
        ) from None
    return cfg


def api_client(kubeconfig: str | None = None) -> Any:
    from kubernetes import client

    cfg = configuration(kubeconfig)
    if not cfg.verify_ssl:
        import urllib3

        # The user chose insecure-skip-tls-verify in their kube config; one warning per
        # request would drown the output.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return client.ApiClient(cfg)


def default_namespace(kubeconfig: str | None = None) -> str:
    """The current context's namespace (kubectl's default), the pod's own inside a cluster."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and _SA_NAMESPACE.exists():
        return _SA_NAMESPACE.read_text().strip()
    from kubernetes import config

    try:
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        _, active = config.list_kube_config_contexts(config_file=path)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except (config.ConfigException, FileNotFoundError, OSError):
        return "default"


def api_error(e: Any) -> str:
    """The API server's own message from an ApiException (its JSON body), else the reason."""
    import json

    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(e, "reason", e))
