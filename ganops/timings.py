"""Where a run's wall time goes: phase marks, written only when ``GANOPS_TIMINGS`` names a file.

``GANOPS_TIMINGS=/tmp/t.jsonl ganops submit ...`` makes the driver and rank 0 append one
JSON line per phase end (``{"phase": ..., "t": <unix time>, "pid": ...}``) to that file;
``bench/first_run.py`` turns them into the split of a first run's wall time. A file, not
the driver's memory, because the workers are other processes; on the embedded Ray they
inherit the variable and share the disk. Unset, ``mark`` costs one environment lookup.
"""

from __future__ import annotations

import json
import os
import time

ENV = "GANOPS_TIMINGS"


def mark(phase: str) -> None:
    """Record that ``phase`` ended now (a no-op unless ``GANOPS_TIMINGS`` is set)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"phase": phase, "t": time.time(), "pid": os.getpid()}) + "\n"
    try:
        # One write of a short line in append mode: lines of concurrent processes do not interleave.
        with open(path, "a") as f:
            f.write(line)
    except OSError:
        pass  # a measurement aid must never fail a run


def load_average() -> str:
    """The machine's load, for a benchmark's report lines (these machines are shared)."""
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"
