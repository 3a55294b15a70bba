"""The spec reference (``docs/spec-reference.md``), generated from the pydantic models.

Every field of the three kinds (GANJob, GANGeneration, GANEvaluation) with its path, type,
default and docstring: the models are the one source, and a test fails when the file is
stale or a field has no docstring. ``make docs`` (``python -m ganops.spec.reference``)
writes it; ``--check`` only says whether it is up to date.

The models are walked here, not through ``ganops.k8s.crd``'s JSON schema: the spec layer
imports nothing above it, and the docstrings and constraints are on the fields already.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ganops.spec.evaluation import GANEvaluation
from ganops.spec.generation import GANGeneration
from ganops.spec.models import CpuQuantity, GANJob, MemoryQuantity

# The kinds in the order the reference lists them.
KINDS: tuple[type[BaseModel], ...] = (GANJob, GANGeneration, GANEvaluation)

# Where `make docs` writes the reference: docs/ at the root of the checkout.
REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "spec-reference.md"

# Named string types whose meaning their validators carry (a constraint the walk cannot see).
_NAMED = {
    id(CpuQuantity): "CPU quantity (`2`, `500m`, `1.5`)",
    id(MemoryQuantity): "memory quantity (`16Gi`, `512Mi`)",
}

# What the kinds' envelope fields mean (the kind models themselves carry no field docs).
_ENVELOPE = {
    "apiVersion": "The API group and version of the ganops kinds.",
    "kind": "Which kind the file holds.",
    "metadata": "The object's name and labels.",
    "spec": "What to run.",
}

_KIND_INTRO = {
    "GANJob": "A training job: `ganops submit`, and the object the operator runs on Kubernetes.",
    "GANGeneration": (
        "A generation job: the options of `ganops generate`, which builds one from its flags for every target "
        "(and the object the operator runs on Kubernetes)."
    ),
    "GANEvaluation": (
        "An evaluation: the options of `ganops evaluate`, which builds one from its flags; "
        "unset fields take the training run's `spec.eval`."
    ),
}


def _model_of(tp: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, directly or in an optional, list or dict."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    origin = get_origin(tp)
    if origin is Annotated:
        return _model_of(get_args(tp)[0])
    if origin in (Union, types.UnionType, list, dict, tuple):
        for arg in get_args(tp):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _child_path(path: str, name: str, tp: Any) -> str:
    """The path of a nested model's section: `[]` marks a list of models, `{}` a map."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _child_path(path, name, args[0]) if len(args) == 1 else f"{path}.{name}"
    if origin is list:
        return f"{path}.{name}[]"
    if origin is dict:
        return f"{path}.{name}{{}}"
    return f"{path}.{name}"


def sections() -> Iterator[tuple[type[BaseModel], str, type[BaseModel]]]:
    """(kind, path, model) for every model the reference documents, each model once, in order:
    the kinds' metadata and spec, then every nested model depth first in field order."""
    seen: set[type[BaseModel]] = set()

    def walk(kind: type[BaseModel], path: str, model: type[BaseModel]) -> Iterator:
        if model in seen:
            return
        seen.add(model)
        yield kind, path, model
        for name, info in model.model_fields.items():
            child = _model_of(info.annotation)
            if child is not None:
                yield from walk(kind, _child_path(path, name, info.annotation), child)

    for kind in KINDS:
        for name in ("metadata", "spec"):
            info = kind.model_fields[name]
            model = _model_of(info.annotation)
            if model is None:  # pragma: no cover - every kind has both
                raise TypeError(f"{kind.__name__}.{name} is not a model")
            yield from walk(kind, name, model)


def undocumented() -> list[str]:
    """``Model.field`` (at its path) for every documented model's field without a docstring."""
    missing = []
    for _kind, path, model in sections():
        for name, info in model.model_fields.items():
            if not (info.description or "").strip():
                missing.append(f"{model.__name__}.{name} ({path}.{name})")
    return missing


def _anchor(text: str) -> str:
    """GitHub's heading anchor: markdown stripped, lowercase, punctuation but '-' and '_' dropped."""
    text = re.sub(r"`([^`]*)`", r"\1", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _heading(path: str, model: type[BaseModel]) -> str:
    return f"{model.__name__} (`{path}`)"


def _constraints(metadata: list[Any], unit: str = "long") -> list[str]:
    """Bounds and lengths from a field's (or an Annotated type's) constraint objects."""
    out: list[str] = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            out += _constraints(list(m.metadata), unit)
            continue
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(m, attr, None)
            if value is not None:
                out.append(f"{sign} {value:,}" if isinstance(value, int) else f"{sign} {value}")
        if getattr(m, "min_length", None) is not None:
            out.append(f"at least {m.min_length:,} {unit}")
        if getattr(m, "max_length", None) is not None:
            out.append(f"at most {m.max_length:,} {unit}")
        if getattr(m, "pattern", None) is not None:
            out.append(f"matching `{m.pattern}`")
    return out


def _type(tp: Any, metadata: list[Any] | None = None) -> str:
    """A field's type as the reference shows it: choices, bounds, nested models as links."""
    for alias, text in _NAMED.items():
        if id(tp) == alias:
            return text
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extra = get_args(tp)
        return _type(base, [*extra, *(metadata or [])])
    metadata = metadata or []
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        text = " or ".join(_type(a, metadata) for a in args)
        return ("null or " if len(args) < len(get_args(tp)) else "") + text
    if origin is Literal:
        choices = get_args(tp)
        return f"`{choices[0]}`" if len(choices) == 1 else "one of " + ", ".join(f"`{c}`" for c in choices)
    if origin is list:
        item = _type(get_args(tp)[0])
        bounds = _constraints(metadata, "items")
        text = f"list, each {item}" if item.startswith("one of") else f"list of {item}"
        return text + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is tuple:
        items = [_type(a) for a in get_args(tp)]
        if len(set(items)) == 1:
            return f"list of {len(items)}, each {items[0]}"
        return "list: " + "; ".join(items)
    if origin is dict:
        key, value = get_args(tp)
        return f"map of {_type(key)} to {_type(value)}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for _kind, path, model in sections():
            if model is tp:
                return f"[{tp.__name__}](#{_anchor(_heading(path, model))})"
    name = {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))
    bounds = _constraints(metadata, "characters" if tp is str else "long")
    return name + (" " + ", ".join(bounds) if bounds else "")


def _value(v: Any) -> str:
    if isinstance(v, BaseModel):
        return "its defaults"
    if isinstance(v, float):
        return f"`{v:g}`"
    if isinstance(v, tuple):
        v = list(v)
    return f"`{json.dumps(v, ensure_ascii=False)}`" if not isinstance(v, str) else f"`{v}`"


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return _value(info.default_factory())  # type: ignore[call-arg]
    if info.default is PydanticUndefined:
        return "required"
    return _value(info.default)


def _cell(text: str) -> str:
    """Table-safe: one line, pipes escaped; outside code spans `<` and `*` read as text, not as
    HTML or emphasis."""
    parts = " ".join(text.split()).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|")


def _table(path: str, model: type[BaseModel]) -> list[str]:
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        rows.append(
            f"| `{path}.{name}` | {_cell(_type(info.annotation, list(info.metadata)))} | {_cell(_default(info))} "
            f"| {_cell(info.description or '')} |"
        )
    return rows


def render() -> str:
    """The text of docs/spec-reference.md."""
    all_sections = list(sections())
    lines = [
        "# Spec reference",
        "",
        "<!-- Generated by `make docs` (python -m ganops.spec.reference) from the pydantic models in",
        "     ganops/spec/; do not edit: change the field docstrings and run `make docs`. -->",
        "",
        "Every field of the ganops kinds, generated from the pydantic models in",
        "[`ganops/spec/`](../ganops/spec) that the CLI, the workers and the operator validate with.",
        "Unknown keys are errors; `ganops validate SPEC` prints a spec with every default filled in, and",
        "`--set PATH=VALUE` sets any field by the paths below. The [user guide](user-guide.md#job-specs)",
        "explains the job specs; a test fails when this file is stale or a field has no docstring.",
        "",
        "Types: `null` means unset (the description says what unset does); a path with `[]` is each item",
        "of a list, `{}` each value of a map. A model shared by several kinds is described once, at its",
        "first place.",
        "",
    ]
    for kind in KINDS:
        lines.append(f"- [{kind.__name__}](#{_anchor(kind.__name__)})")
        for k, path, model in all_sections:
            if k is kind:
                lines.append(f"  - [{_heading(path, model)}](#{_anchor(_heading(path, model))})")
    for kind in KINDS:
        name = kind.__name__
        lines += ["", f"## {name}", "", _KIND_INTRO[name], ""]
        lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
        for field, info in kind.model_fields.items():
            lines.append(
                f"| `{field}` | {_cell(_type(info.annotation))} | {_cell(_default(info))} | {_ENVELOPE[field]} |"
            )
        for k, path, model in all_sections:
            if k is not kind:
                continue
            lines += ["", f"### {_heading(path, model)}", ""]
            doc = model.__dict__.get("__doc__")
            if doc:
                lines += [" ".join(inspect.cleandoc(doc).split()), ""]
            lines += _table(path, model)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganops.spec.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale; write nothing")
    parser.add_argument("--out", type=Path, default=REFERENCE, help=f"where the reference goes (default: {REFERENCE})")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if current != text:
            state = "missing" if current is None else "stale"
            print(f"{args.out} is {state}: run `make docs` (python -m ganops.spec.reference)", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
