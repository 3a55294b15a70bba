"""Connecting to Kubernetes the way kubectl does: in-cluster config inside a pod, else
the kube config file ($KUBECONFIG or ~/.kube/config) and its current context."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ganops.errors import UserError

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def configuration(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.Configuration``; a ``UserError`` when there is no cluster to talk to."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as e:
            raise UserError(f"in-cluster Kubernetes config: {e}; set KUBECONFIG to use a kube config instead") from None
        return cfg
    path = kubeconfig_path(kubeconfig)
    if not Path(path).is_file():
        raise UserError(f"no kube config at {path}; set KUBECONFIG or run inside the cluster")
    with _readable(path):
        config.load_kube_config(config_file=path, client_configuration=cfg)
    return cfg


def kubeconfig_path(kubeconfig: str | None = None) -> str:
    """The file kubectl would read: ``kubeconfig``, else $KUBECONFIG, else ~/.kube/config.

    Of a path list (``a:b``, as $KUBECONFIG may be, and ``--kubeconfig`` takes it from
    there) the first file: ganops does not merge kube configs.
    """
    listed = kubeconfig or os.environ.get("KUBECONFIG", "")
    return listed.split(os.pathsep)[0] or str(Path.home() / ".kube/config")


@contextlib.contextmanager
def _readable(path: str) -> Iterator[None]:
    """Turn any failure to read the kube config at ``path`` into a ``UserError`` naming it.

    The kubernetes client reports a malformed file as whatever its parser hit: a YAML
    error, or a TypeError/KeyError from a document that is not the mapping it expects.
    None of them is a bug of ours, and a traceback would hide which file is at fault.
    """
    import yaml
    from kubernetes import config

    def one_line(e: Exception) -> str:
        return " ".join(str(e).split()) or type(e).__name__

    try:
        yield
    except yaml.YAMLError as e:
        raise UserError(f"kube config {path} is not valid YAML: {one_line(e)}") from None
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        raise UserError(
            f"kube config {path} is not a kube config (a mapping of clusters, users, contexts and "
            f"current-context): {one_line(e)}"
        ) from None
    except (config.ConfigException, OSError) as e:
        raise UserError(f"kube config {path} is not usable: {one_line(e)}") from None


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

    path = kubeconfig_path(kubeconfig)
    try:
        with _readable(path):
            _, active = config.list_kube_config_contexts(config_file=path)
    except UserError:
        if not Path(path).exists():
            return "default"  # no file: kubectl's default too; `configuration` says what is missing
        raise
    return (active or {}).get("context", {}).get("namespace") or "default"


def api_error(e: Any) -> str:
    """The API server's own message from an ApiException (its JSON body), else the reason."""
    import json

    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(e, "reason", e))
