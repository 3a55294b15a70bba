"""A tiny actor between the driver and the workers: progress and messages up, stop down,
and what the job has been through (worker-group attempts, a failure not worth retrying).

Ray Train V2 runs its callbacks in the controller actor, not in the driver, so the
driver's live display and Ctrl-C handling need their own channel. The actor lives as long
as the driver's submit, across Ray Train's restarts of the worker group.
"""

from __future__ import annotations

from typing import Any

import ray


@ray.remote(num_cpus=0)
class JobControl:
    def __init__(self) -> None:
        self._progress: dict[str, Any] = {}
        self._messages: list[tuple[str, str]] = []
        self._stop = False
        self._attempts = 0
        self._failure: dict[str, Any] | None = None
        self._pids: dict[int, int] = {}

    def push(self, progress: dict[str, Any]) -> None:
        self._progress = progress

    def progress(self) -> dict[str, Any]:
        return self._progress

    def warn(self, message: str) -> None:
        self._messages.append(("warning", message))

    def note(self, message: str) -> None:
        """A line the person running the job should see (not a warning): e.g. a recovery."""
        self._messages.append(("note", message))

    def messages(self, since: int = 0) -> list[tuple[str, str]]:
        """(level, text) of every message from the ``since``-th on."""
        return self._messages[since:]

    def request_stop(self) -> None:
        self._stop = True

    def stop_requested(self) -> bool:
        return self._stop

    def start_attempt(self) -> int:
        """Rank 0 of each worker group calls this once: 1 for the first group, 2 after the
        first restart, ..."""
        self._attempts += 1
        return self._attempts

    def attempts(self) -> int:
        return self._attempts

    def worker_started(self, rank: int, pid: int) -> None:
        self._pids[rank] = pid

    def worker_pids(self) -> dict[int, int]:
        """The process of each rank of the current worker group (which one to look at, or kill)."""
        return dict(self._pids)

    def fail(self, error: Exception, kind: str) -> None:
        """A failure that retrying cannot fix (``kind``: ``user`` for bad input, ``diverged``),
        as the error the driver should raise: the first one is kept, and a restarted worker
        group ends at once instead of retrying."""
        if self._failure is None:
            self._failure = {"error": error, "kind": kind}

    def failure(self) -> dict[str, Any] | None:
        return self._failure
