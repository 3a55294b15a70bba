"""The one path from YAML (plus ``--set`` overrides) to a validated ``GANJob``.

Used by the CLI, the operator and the workers alike, so a spec that validates on a
laptop validates the same way on the cluster.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ganops.errors import SpecError, UserError
from ganops.spec.models import GANJob

# A model-level validator reports a problem with a nested field as "a.b: message"; this
# pulls the path out so the error names it like a field-level one.
_PATH_PREFIX = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*): (.*)$", re.S)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a spec file into a dict; a missing file or bad YAML is a ``UserError``."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping with apiVersion, kind, metadata and spec")
    return doc


def parse_override(item: str) -> tuple[list[str], Any]:
    """``spec.train.epochs=3`` → (["spec", "train", "epochs"], 3). Values are YAML scalars."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected PATH=VALUE, e.g. --set spec.train.epochs=3")
    path = key.strip().split(".")
    if any(not part for part in path):
        raise UserError(f"--set {item!r}: empty component in the path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # Not YAML (e.g. a path with ': '): take it as a string.
    return path, value


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``doc`` with every ``--set PATH=VALUE`` applied."""
    out = copy.deepcopy(doc)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = out
        for depth, part in enumerate(path[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise UserError(f"--set {item}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _fields_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Valid field names of the model found by walking ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_type(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_type(arg)
        if found is not None:
            return found
    return None


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _message(err: dict[str, Any]) -> str:
    """Turn one pydantic error into a short, user-facing sentence."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "greater_than":
        return f"must be > {_num(ctx['gt'])}"
    if kind == "greater_than_equal":
        return f"must be >= {_num(ctx['ge'])}"
    if kind == "less_than":
        return f"must be < {_num(ctx['lt'])}"
    if kind == "less_than_equal":
        return f"must be <= {_num(ctx['le'])}"
    if kind == "missing":
        return "required"
    if kind in ("literal_error", "enum"):
        return f"must be one of: {ctx.get('expected', '').replace(' or ', ', ')} (got {err.get('input')!r})"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer (got {err.get('input')!r})"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number (got {err.get('input')!r})"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false (got {err.get('input')!r})"
    if kind in ("string_type",):
        return f"must be a string (got {err.get('input')!r})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (got {err.get('input')!r})"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list (got {err.get('input')!r})"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} items"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])


def _join(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_errors(exc: ValidationError, model: type[BaseModel] = GANJob) -> list[tuple[str, str]]:
    """(path, message) pairs with did-you-mean for unknown keys, in document order."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            valid = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else (f" (valid: {', '.join(valid)})" if valid else "")
            problems.append((_join(loc), f"unknown field{hint}"))
            continue
        message = _message(err)
        m = _PATH_PREFIX.match(message)
        if err["type"] == "value_error" and m:
            loc = loc + tuple(m.group(1).split("."))
            message = m.group(2)
        problems.append((_join(loc), message))
    return problems


def validate(doc: dict[str, Any], source: str | None = None) -> GANJob:
    """Validate a spec dict into a ``GANJob``; every problem is reported at once."""
    return validate_model(GANJob, doc, source)


M = TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], doc: dict[str, Any], source: str | None = None) -> M:
    """Validate ``doc`` as ``model`` (a GANJob, a GANGeneration) with ganops' error messages."""
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        raise SpecError(format_errors(e), source) from None


def loads(text: str, source: str, overrides: list[str] | None = None) -> GANJob:
    """Like ``load``, from YAML text (a spec that came inline, e.g. in a remote entrypoint)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{source}: expected a mapping with apiVersion, kind, metadata and spec")
    return validate(apply_overrides(doc, overrides or []), source)


def load(path: str | Path, overrides: list[str] | None = None) -> GANJob:
    """Read, override and validate a spec file."""
    doc = apply_overrides(read_yaml(path), overrides or [])
    return validate(doc, str(path))


def dump(job: GANJob) -> str:
    """The resolved spec as YAML, in field order (what gets printed and saved)."""
    return yaml.safe_dump(job.to_dict(), sort_keys=False, default_flow_style=None, width=100)
