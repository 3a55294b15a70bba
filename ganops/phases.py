"""The phases every target reports a job in: a GANJob's ``status.phase``, a Ray job's state
mapped onto them, the CLI's status column. One spelling for all of them."""

from __future__ import annotations

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "Pending", "Running", "Succeeded", "Failed", "Cancelled"
PHASES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
