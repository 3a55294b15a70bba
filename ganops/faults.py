"""Crashes on purpose, for the tests of what a crash leaves behind (tests/test_failures.py,
tests/test_operator.py): the faults that cannot be timed from outside the process.

``GANOPS_FAULT=POINT:NAME:FLAG`` SIGKILLs the process at ``POINT`` while it handles
``NAME`` (a checkpoint directory, a job), once: only if the file ``FLAG`` does not exist
yet (it is created first). Unset, a fault point is one dictionary lookup.

Points: ``before-marker`` (a checkpoint's files written, its marker not yet),
``after-rayjob-create`` (the operator created a RayJob, the job's status not yet written).
"""

from __future__ import annotations

import os
import signal

ENV = "GANOPS_FAULT"


def fault_point(point: str, name: str) -> None:
    """SIGKILL this process here if ``GANOPS_FAULT`` names this point and ``name``."""
    fault = os.environ.get(ENV)
    if not fault:
        return
    at, target, flag = (fault.split(":", 2) + ["", ""])[:3]
    if at != point or target != name or not flag:
        return
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
