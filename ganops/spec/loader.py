"""The one path from YAML (plus ``--set`` overrides) to a validated ``GANJob``.

Used by the CLI, the operator and the workers alike, so a spec that validates on a
laptop validates the same way on the cluster.
"""

from __future__ import annotations

import copy
import difflib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ganops.errors import FieldValueError, SpecError, UserError, clip, short
from ganops.spec.models import GANJob

# Bounds on what a spec may be, so that hostile input is refused at once instead of
# costing minutes, gigabytes or a RecursionError. A real spec is ~2 KB, ~100 nodes,
# 4 levels deep; these leave ample room.
MAX_SPEC_BYTES = 1 << 20
"""Largest spec file (or inline spec) read; checked before reading."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists."""
MAX_ITEMS = 1000
"""Most entries in one mapping or list."""
MAX_NODES = 20_000
"""Most values in a document with every alias expanded (bounds "billion laughs")."""
MAX_INT_CHARS = 64
"""Longest integer literal (Python refuses to parse ints over 4,300 digits; no field needs 20)."""
MAX_OVERRIDE_DEPTH = 16
"""Most components in a --set path."""

_INT_TAG = "tag:yaml.org,2002:int"
_RESOLVER = yaml.resolver.Resolver()
# libyaml when present: its parser is fast and not recursive. Either way the checks below
# run on the event stream, before any node tree is built.
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SpecLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader that refuses duplicate keys (YAML keeps the last one silently)."""

    source = "<spec>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        # Before flatten_mapping: keys merged in with `<<: *base` may be overridden.
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                mark = key_node.start_mark
                raise UserError(
                    f"{self.source}:{mark.line + 1}:{mark.column + 1}: duplicate key {short(key)} "
                    "(YAML would silently keep the last one)",
                    field=self.source,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _YAMLSyntaxError(UserError):
    """Text that is not YAML at all (as opposed to YAML refused for its size or shape)."""


@dataclass
class _Frame:
    """An open mapping or list while checking the event stream."""

    path: str
    is_map: bool
    anchor: str | None
    start: int  # node count when it opened (its expanded size is the difference at its end)
    items: int = 0
    key: str = "?"
    want_key: bool = True
    keys: set[tuple[str, str]] = field(default_factory=set)


def _child_path(parent: _Frame | None, root: str) -> str:
    if parent is None:
        return root
    if parent.is_map:
        return f"{parent.path}.{parent.key}" if parent.path else parent.key
    return f"{parent.path}[{parent.items - 1}]"


def _check_events(text: str, source: str, root: str) -> None:
    """Walk the YAML events once, refusing what is too deep, too long, too big once its
    aliases are expanded, or an integer too long to parse. Errors name the field path."""
    stack: list[_Frame] = []
    sizes: dict[str, int] = {}  # anchor -> expanded node count
    nodes = 0

    def fail(path: str, mark: Any, what: str) -> UserError:
        # Line and column help in a file; a --set value is one short line.
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None and not root else ""
        name = clip(path or root or "document")
        # A --set names its field already: "--set spec.train.seed: ..." says it once.
        shown = "" if path == root else f" {name}:"
        return UserError(f"{source}{where}:{shown} {what}", field=name if path or root else source)

    for ev in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(ev, yaml.CollectionEndEvent):
            frame = stack.pop()
            if frame.anchor is not None:
                sizes[frame.anchor] = nodes - frame.start
            continue
        if not isinstance(ev, yaml.NodeEvent):
            continue  # stream and document boundaries
        parent = stack[-1] if stack else None
        if parent is not None:
            parent.items += 1
            if parent.items > (2 * MAX_ITEMS if parent.is_map else MAX_ITEMS):
                raise fail(parent.path, ev.start_mark, f"more than {MAX_ITEMS} entries")
        is_key = parent is not None and parent.is_map and parent.want_key
        path = parent.path if is_key else _child_path(parent, root)
        if parent is not None and parent.is_map:
            parent.want_key = not parent.want_key
        if isinstance(ev, yaml.AliasEvent):
            if ev.anchor not in sizes:
                raise fail(path, ev.start_mark, f"alias *{clip(str(ev.anchor))} refers to itself or to nothing")
            nodes += sizes[ev.anchor]
        elif isinstance(ev, yaml.ScalarEvent):
            nodes += 1
            _check_scalar(ev, path, fail)
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
            if is_key:
                assert parent is not None
                _check_duplicate(parent, ev, fail)
        else:  # a mapping or a list opens
            if len(stack) >= MAX_DEPTH:
                raise fail(path, ev.start_mark, f"nested deeper than {MAX_DEPTH} levels")
            nodes += 1
            if is_key:
                assert parent is not None
                parent.key = "?"
            stack.append(_Frame(path, isinstance(ev, yaml.MappingStartEvent), ev.anchor, nodes - 1))
        if nodes > MAX_NODES:
            raise fail(path, ev.start_mark, f"more than {MAX_NODES} values once aliases are expanded")


def _check_duplicate(parent: _Frame, ev: yaml.ScalarEvent, fail: Any) -> None:
    parent.key = clip(ev.value, 40)
    tag = ev.tag if ev.tag not in (None, "!") else _RESOLVER.resolve(yaml.ScalarNode, ev.value, ev.implicit)
    if tag == "tag:yaml.org,2002:merge":
        return  # `<<: *base` merges; the keys after it may override the merged ones
    if (tag, ev.value) in parent.keys:
        raise fail(
            _child_path(parent, ""), ev.start_mark, f"duplicate key {short(ev.value)} (YAML would keep only the last)"
        )
    parent.keys.add((tag, ev.value))


def _check_scalar(ev: yaml.ScalarEvent, path: str, fail: Any) -> None:
    tag = ev.tag if ev.tag not in (None, "!") else _RESOLVER.resolve(yaml.ScalarNode, ev.value, ev.implicit)
    if tag == _INT_TAG and len(ev.value) > MAX_INT_CHARS:
        raise fail(
            path, ev.start_mark, f"an integer of {len(ev.value)} characters is too long (at most {MAX_INT_CHARS})"
        )


def parse_yaml(text: str, source: str, root: str = "") -> Any:
    """The one YAML reader for spec files, inline specs and --set values: bounded in
    size, depth, entries and alias expansion, no duplicate keys. ``source`` names the
    file or flag in errors; ``root`` is the field path the text stands for (a --set)."""
    if len(text) > MAX_SPEC_BYTES:
        raise UserError(
            f"{source}: {len(text)} characters is too long (at most {MAX_SPEC_BYTES})", field=root or source
        )
    try:
        _check_events(text, source, root)
        loader = _SpecLoader(text)
        loader.source = source
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark and not root else ""
        why = clip(str(getattr(e, "problem", None) or e), 200)
        raise _YAMLSyntaxError(f"{source}{where}: not valid YAML ({why})", field=root or source) from None


def _read_text(path: str | Path) -> str:
    """A spec file's text: regular files only, at most MAX_SPEC_BYTES, UTF-8."""
    name = str(path)
    if "\0" in name:
        shown = clip(name.replace("\0", "\\0"))
        raise UserError(f"{shown}: a file name cannot contain a NUL byte", field=shown)
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat on the open file then
    # decides, so nothing can swap the file between the check and the read.
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise UserError(f"{clip(name)}: no such file", field=clip(name)) from None
    except OSError as e:
        raise UserError(f"{clip(name)}: cannot read ({e.strerror})", field=clip(name)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe or device?)"
            raise UserError(f"{clip(name)}: {kind}; a spec must be a regular file", field=clip(name))
        if st.st_size > MAX_SPEC_BYTES:
            raise UserError(
                f"{clip(name)}: {st.st_size} bytes is too large for a spec (at most {MAX_SPEC_BYTES})", field=clip(name)
            )
        if st.st_size == 0:
            # Also /proc files, which claim 0 bytes and may never end (or, like /proc/kmsg,
            # lose what is read): nothing is read from them.
            raise UserError(f"{clip(name)}: empty; a spec is a mapping with apiVersion, kind, metadata and spec",
                            field=clip(name))  # fmt: skip
        data = _read_upto(fd, st.st_size)
    except OSError as e:
        raise UserError(f"{clip(name)}: cannot read ({e.strerror})", field=clip(name)) from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{clip(name)}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})", field=clip(name)
        ) from None


def _read_upto(fd: int, size: int) -> bytes:
    """At most ``size`` bytes: what fstat promised, even if the file grows meanwhile."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _as_spec(doc: Any, source: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise UserError(f"{source}: expected a mapping with apiVersion, kind, metadata and spec", field=source)
    return doc


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a spec file into a dict; a missing, special or oversized file, or bad YAML, is a ``UserError``."""
    return _as_spec(parse_yaml(_read_text(path), clip(str(path))), clip(str(path)))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``spec.train.epochs=3`` → (["spec", "train", "epochs"], 3). Values are YAML scalars."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {short(item)}: expected PATH=VALUE, e.g. --set spec.train.epochs=3", field="--set")
    path = key.strip().split(".")
    if any(not part for part in path):
        raise UserError(f"--set {short(item)}: empty component in the path", field="--set")
    if len(path) > MAX_OVERRIDE_DEPTH:
        raise UserError(f"--set {short(item)}: more than {MAX_OVERRIDE_DEPTH} components in the path", field="--set")
    name = clip(".".join(path))
    if not raw.strip():
        return path, ""
    try:
        value = parse_yaml(raw, f"--set {name}", name)
    except _YAMLSyntaxError:
        # Not YAML (e.g. a path with ': '): take it as a string. (YAML refused for its
        # size, depth or duplicate keys is an error, not a string.)
        value = raw
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
                where = clip(".".join(path[: depth + 1]))
                raise UserError(f"--set {short(item)}: {where} is a value, not a section", field=where)
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
    if kind == "finite_number":
        return f"must be a finite number (got {short(err.get('input'))})"
    if kind in ("literal_error", "enum"):
        return f"must be one of: {ctx.get('expected', '').replace(' or ', ', ')} (got {short(err.get('input'))})"
    if kind in ("int_type", "int_parsing", "int_from_float", "int_parsing_size"):
        return f"must be an integer (got {short(err.get('input'))})"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number (got {short(err.get('input'))})"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false (got {short(err.get('input'))})"
    if kind in ("string_type",):
        return f"must be a string (got {short(err.get('input'))})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (got {short(err.get('input'))})"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list (got {short(err.get('input'))})"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} items"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "value_error":
        error = ctx.get("error")
        return error.message if isinstance(error, FieldValueError) else clip(str(error or err["msg"]), 400)
    return clip(str(err["msg"]), 400)


def _join(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        # Keys come from the user's document: a 1 MB key must not make a 1 MB message.
        out += f"[{part}]" if isinstance(part, int) else (f".{clip(str(part), 40)}" if out else clip(str(part), 40))
    return out


def format_errors(exc: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """(path, message) pairs with did-you-mean for unknown keys, in document order.

    ``model`` is the model ``exc`` came from: the did-you-mean suggestions are its fields.
    """
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            valid = _fields_at(model, loc[:-1])
            # difflib is quadratic in the key's length: a long key is no typo of a field name.
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6) if len(key) <= 64 else []
            hint = f" (did you mean '{close[0]}'?)" if close else (f" (valid: {', '.join(valid)})" if valid else "")
            problems.append((_join(loc), f"unknown field{hint}"))
            continue
        message = _message(err)
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, FieldValueError):
            # A model-level validator names the nested field it is about.
            loc = loc + tuple(error.field.split("."))
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
        raise SpecError(format_errors(e, model), source) from None


def loads(text: str, source: str, overrides: list[str] | None = None) -> GANJob:
    """Like ``load``, from YAML text (a spec that came inline, e.g. in a remote entrypoint)."""
    doc = _as_spec(parse_yaml(text, source), source)
    return validate(apply_overrides(doc, overrides or []), source)


def loads_model(model: type[M], text: str, source: str) -> M:
    """YAML text as ``model`` (e.g. a GANGeneration given inline to a remote driver)."""
    return validate_model(model, _as_spec(parse_yaml(text, source), source), source)


def load(path: str | Path, overrides: list[str] | None = None) -> GANJob:
    """Read, override and validate a spec file."""
    doc = apply_overrides(read_yaml(path), overrides or [])
    return validate(doc, str(path))


def kinds() -> dict[str, type[BaseModel]]:
    """Every kind ganops defines, by the ``kind:`` its files carry."""
    from ganops.spec.evaluation import GANEvaluation  # they import this module's neighbours
    from ganops.spec.generation import GANGeneration

    return {"GANJob": GANJob, "GANGeneration": GANGeneration, "GANEvaluation": GANEvaluation}


def load_resource(path: str | Path, overrides: list[str] | None = None) -> BaseModel:
    """Read, override and validate a spec file of any kind, as its ``kind:`` says (none: a
    GANJob, as `ganops submit` reads it); its typos are answered with that kind's fields."""
    doc = apply_overrides(read_yaml(path), overrides or [])
    known = kinds()
    kind = doc.get("kind", "GANJob")
    if not isinstance(kind, str) or kind not in known:
        raise SpecError([("kind", f"must be one of: {', '.join(known)} (got {short(kind)})")], str(path))
    return validate_model(known[kind], doc, str(path))


def dump(job: BaseModel) -> str:
    """The resolved spec as YAML, in field order (what gets printed and saved)."""
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)
