"""One line per action on stderr; a repeated complaint about the same object is logged once.

KubeRay logs through controller-runtime's logger and records Kubernetes Events (CreatedRayCluster,
DeletedRayCluster, CreatedRayJobSubmitter...; utils/constant.go K8sEventType). The stand-in logs
the same actions as lines and records no Events. ``go_json`` follows how Go's encoding/json writes
KubeRay's status structs (apis/ray/v1/rayjob_types.go, raycluster_types.go: ``omitempty``).
"""

from __future__ import annotations

import logging

_log = logging.getLogger("kuberay-standin")


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s kuberay-standin %(message)s"))
    _log.addHandler(handler)
    _log.setLevel(level)
    _log.propagate = False


def action(msg: str) -> None:
    _log.info(msg)


_said: dict[str, str] = {}


def once(key: str, msg: str) -> None:
    """Logs ``msg`` unless it is what was last said about ``key`` (polling repeats errors)."""
    if _said.get(key) != msg:
        _said[key] = msg
        _log.warning(msg)


def forget(key: str) -> None:
    _said.pop(key, None)


def go_json(status: dict, keep: tuple[str, ...] = ()) -> dict:
    """What Go's encoding/json writes for a KubeRay status struct: fields tagged omitempty are
    left out when empty ("", 0, empty map), except pointers and structs (``keep``)."""
    return {k: v for k, v in status.items() if k in keep or v not in ("", 0, None, {}, [])}
