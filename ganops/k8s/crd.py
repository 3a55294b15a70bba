"""The GANJob and GANGeneration CRDs, generated from the pydantic models.

The spec schema is the JSON schema pydantic derives from ``GANJobSpec`` (the same
models the CLI and the workers validate with), turned into the structural OpenAPI v3
subset Kubernetes accepts: ``$ref``s inlined, ``anyOf [X, null]`` as ``nullable``,
tuples as fixed-length arrays, numeric exclusive bounds in the v3.0 form. A test fails
when the files in ``helm/ganops/crds`` drift from what this produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ganops.k8s import GROUP, PLURALS, VERSION
from ganops.k8s.status import JobObjectStatus
from ganops.spec.generation import GANGenerationSpec
from ganops.spec.models import GANJobSpec

# Keywords of JSON schema that Kubernetes' structural schemas do not take (or need).
_DROP = {"title", "$defs", "default", "examples"}


class _Kind(BaseModel):
    kind: str
    plural: str
    singular: str
    short_names: list[str]
    spec_model: Any
    columns: list[dict[str, Any]]


def _k8s_schema(node: Any, defs: dict[str, Any]) -> Any:
    """One JSON-schema node → its structural OpenAPI v3 form."""
    if isinstance(node, list):
        return [_k8s_schema(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _k8s_schema(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']} as a structural schema")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        out = _k8s_schema({**options[0], **rest}, defs)
        if nullable:
            out["nullable"] = True
        return out
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "prefixItems":  # a tuple: one item schema (they agree in ganops' tuples)
            out["items"] = _k8s_schema(value[0], defs)
        elif key == "const":  # not in Kubernetes' schema dialect; a one-value enum is
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {k: _k8s_schema(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _k8s_schema(value, defs) if isinstance(value, dict) else value
        else:
            out[key] = value
    if out.get("additionalProperties") is False:
        # Kubernetes prunes unknown fields itself; `false` is not allowed in a CRD.
        del out["additionalProperties"]
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(mode="validation")
    return _k8s_schema(raw, raw.get("$defs", {}))


_TRAIN_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Dataset", "type": "string", "jsonPath": ".spec.data.dataset"},
    {"name": "Workers", "type": "integer", "jsonPath": ".spec.scaling.num_workers"},
    {"name": "GPU", "type": "boolean", "jsonPath": ".spec.scaling.use_gpu"},
    {"name": "Epochs", "type": "integer", "jsonPath": ".spec.train.epochs"},
    {"name": "RayJob", "type": "string", "jsonPath": ".status.rayJobName"},
    {"name": "MLflow Run", "type": "string", "jsonPath": ".status.mlflowRunId", "priority": 1},
    {"name": "Checkpoint", "type": "string", "jsonPath": ".status.latestCheckpoint", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
_GENERATE_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Run", "type": "string", "jsonPath": ".spec.run_id"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "Images", "type": "integer", "jsonPath": ".spec.num"},
    {"name": "Out", "type": "string", "jsonPath": ".spec.out"},
    {"name": "RayJob", "type": "string", "jsonPath": ".status.rayJobName"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

KINDS = {
    "GANJob": _Kind(kind="GANJob", plural=PLURALS["GANJob"], singular="ganjob", short_names=["gj"],
                    spec_model=GANJobSpec, columns=_TRAIN_COLUMNS),
    "GANGeneration": _Kind(kind="GANGeneration", plural=PLURALS["GANGeneration"], singular="gangeneration",
                           short_names=["ggen"], spec_model=GANGenerationSpec, columns=_GENERATE_COLUMNS),
}  # fmt: skip


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of ``kind`` (GANJob or GANGeneration)."""
    k = KINDS[kind]
    spec_schema = model_schema(k.spec_model)
    spec_schema["description"] = f"The {k.kind} spec: the same fields as a ganops spec file's `spec`."
    status_schema = model_schema(JobObjectStatus)
    status_schema["description"] = "Written by the ganops operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{k.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "ganops"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": k.kind,
                "listKind": f"{k.kind}List",
                "plural": k.plural,
                "singular": k.singular,
                "shortNames": k.short_names,
                "categories": ["ganops"],
            },  # fmt: skip
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": k.columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_files() -> dict[str, str]:
    """File name → YAML text, as kept in helm/ganops/crds."""
    header = "# Generated by `ganops operator crd` from the pydantic models; do not edit.\n"
    return {
        f"{GROUP}_{KINDS[kind].plural}.yaml": header + yaml.safe_dump(crd(kind), sort_keys=False, width=120)
        for kind in KINDS
    }


def write(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in crd_files().items():
        path = out / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        paths.append(path)
    return paths
