"""Real faults for the tests that need them: a Ray Train worker SIGKILLed mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from ganops import jobdir


def _rank_pid(job_name: str, rank: int) -> int | None:
    """The process of ``rank`` of this test's job (in this process, on the session's Ray),
    from the job's control actor, once that rank has started."""
    import ray

    prefix = f"ganops-control-{job_name}-{os.getpid()}-"
    for name in ray.util.list_named_actors():
        if name.startswith(prefix):
            return ray.get(ray.get_actor(name).worker_pids.remote()).get(rank)
    return None


def _kill_after_first_checkpoint(jd: jobdir.JobDir, rank: int, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the worker of ``rank`` as soon as the job's first complete checkpoint exists."""
    while not stop.is_set():
        if jd.complete_checkpoints():
            pid = _rank_pid(jd.root.uri.rstrip("/").rsplit("/", 1)[-1], rank)
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


@pytest.fixture
def killer() -> Iterator:
    threads: list[tuple[threading.Thread, threading.Event]] = []

    def start(jd: jobdir.JobDir, rank: int = 0) -> list[int]:
        killed: list[int] = []
        stop = threading.Event()
        t = threading.Thread(target=_kill_after_first_checkpoint, args=(jd, rank, killed, stop), daemon=True)
        t.start()
        threads.append((t, stop))
        return killed

    yield start
    for t, stop in threads:
        stop.set()
        t.join(timeout=5)
