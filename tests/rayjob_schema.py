"""KubeRay's real RayJob schema as a JSON-schema validator, with the API server's
defaulting applied first (a JSON-schema validator checks, it does not default)."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import yaml

from tests.kube import KUBERAY_CRDS


@lru_cache(maxsize=1)
def openapi_schema() -> dict[str, Any]:
    # libyaml's loader when PyYAML has it: the CRD is 1.3 MB (7 s in pure Python, 1 s in C).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((KUBERAY_CRDS / "ray.io_rayjobs.yaml").read_text(), Loader=loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server does before validating: fill ``default``s of absent fields,
    recursively, in the objects that are present."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in props:
                    value[key] = apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def _to_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 → JSON schema: ``nullable`` becomes a null type; k8s extensions go."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    # "properties" maps names to schemas (a name such as "nullable" is no keyword): converted
    # once, as a map (converting it twice doubled the work at every level: 18 s, now 0.1 s).
    out = {k: _to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "properties"}
    if node.get("properties") is not None:
        out["properties"] = {k: _to_json_schema(v) for k, v in node["properties"].items()}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    return out


@lru_cache(maxsize=1)
def validator() -> Any:
    import jsonschema

    schema = _to_json_schema(openapi_schema())
    # OpenAPI's properties are closed only where the CRD says so; unknown fields would be
    # pruned by the API server, which hides typos: refuse them here instead.
    _close(schema)
    return jsonschema.Draft7Validator(schema)


def _close(node: Any) -> None:
    if isinstance(node, dict):
        if (
            node.get("type") in ("object", ["object", "null"])
            and "properties" in node
            and "additionalProperties" not in node
        ):
            node["additionalProperties"] = False
        for v in node.values():
            _close(v)
    elif isinstance(node, list):
        for v in node:
            _close(v)


def errors(rayjob: dict[str, Any]) -> list[str]:
    """Every schema violation of ``rayjob`` (after defaulting), as 'path: message'."""
    body = apply_defaults(copy.deepcopy(rayjob), openapi_schema())
    # metadata is the API server's business (ObjectMeta), not the CRD schema's.
    body["metadata"] = {}
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(body)]
