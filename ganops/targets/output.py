"""kubectl-style output of job rows: an aligned table, or YAML/JSON of every field."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import yaml

from ganops.targets.base import JobStatus

FORMATS = ("table", "wide", "yaml", "json")


def age(ts: str | None, now: dt.datetime | None = None) -> str:
    """'3m', '2h', '5d' like kubectl's AGE column; '-' when unknown."""
    if not ts:
        return "-"
    try:
        t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    s = int(((now or dt.datetime.now(dt.timezone.utc)) - t).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size * (2 if unit != "m" else 1):
            return f"{s // size}{unit}"
    return f"{max(s, 0)}s"


def _columns(rows: Sequence[JobStatus], wide: bool) -> list[tuple[str, Any]]:
    cols: list[tuple[str, Any]] = []
    if any(r.namespace for r in rows) and len({r.namespace for r in rows}) > 1:
        cols.append(("NAMESPACE", lambda r: r.namespace or "-"))
    cols += [
        ("NAME", lambda r: r.name),
        ("KIND", lambda r: r.kind),
        ("PHASE", lambda r: r.phase),
        ("AGE", lambda r: age(r.submitted)),
        ("MLFLOW RUN", lambda r: r.mlflow_run_id or "-"),
    ]
    if wide:
        cols += [
            ("ID", lambda r: r.id or "-"),
            ("CHECKPOINT", lambda r: r.latest_checkpoint or "-"),
            ("MESSAGE", lambda r: (r.message or "-").replace("\n", " ")[:80]),
        ]
    return cols


def table(rows: Sequence[JobStatus], wide: bool = False) -> str:
    if not rows:
        return "No jobs found.\n"
    cols = _columns(rows, wide)
    cells = [[h for h, _ in cols]] + [[str(f(r)) for _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def render(rows: Sequence[JobStatus], fmt: str, single: bool = False) -> str:
    """``single``: one job (``status``): YAML/JSON of the object rather than a list."""
    if fmt in ("table", "wide"):
        return table(rows, wide=fmt == "wide")
    data: Any = rows[0].to_dict() if single and rows else {"items": [r.to_dict() for r in rows]}
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False)
