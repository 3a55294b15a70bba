"""A tiny actor between the driver and the workers: progress and warnings up, stop down.

Ray Train V2 runs its callbacks in the controller actor, not in the driver, so the
driver's live display and Ctrl-C handling need their own channel.
"""

from __future__ import annotations

from typing import Any

import ray


@ray.remote(num_cpus=0)
class JobControl:
    def __init__(self) -> None:
        self._progress: dict[str, Any] = {}
        self._warnings: list[str] = []
        self._stop = False

    def push(self, progress: dict[str, Any]) -> None:
        self._progress = progress

    def progress(self) -> dict[str, Any]:
        return self._progress

    def warn(self, message: str) -> None:
        self._warnings.append(message)

    def warnings(self, since: int = 0) -> list[str]:
        return self._warnings[since:]

    def request_stop(self) -> None:
        self._stop = True

    def stop_requested(self) -> bool:
        return self._stop
