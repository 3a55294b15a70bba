"""Helpers every test module may share: the repository's paths, a free port, the CLI.

Plain functions (no fixtures, no pytest hooks): ``conftest.py`` holds the session fixtures
and imports these too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the kernel just handed out (and nobody listens on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``ganops ARGS`` in a child process of this interpreter, from the repository root.

    ``env`` replaces the environment; None: this process's without GANOPS_DEBUG (so that a
    traceback in the output is a real failure), with unbuffered output.
    """
    if env is not None:
        base = dict(env)
    else:
        base = {k: v for k, v in os.environ.items() if k != "GANOPS_DEBUG"}
        base["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "ganops.cli", *args], capture_output=True, text=True, cwd=REPO, env=base,
        timeout=timeout,
    )  # fmt: skip


def cli_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``ganops ARGS`` in this process (the API server and fixtures are reachable): (exit code, stdout, stderr)."""
    from ganops.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def generation(out: str = "/nowhere", *, run_id: str = "run", formats: tuple[str, ...] | None = None, **fields: object):
    """A validated ``GANGeneration`` (what ``client.generate`` runs), its fields as keyword
    arguments; ``formats`` as a tuple of ``png``/``npz`` stands for ``format``."""
    from ganops.spec.generation import GANGeneration
    from ganops.spec.loader import validate_model

    if formats is not None:
        fields["format"] = "both" if set(formats) == {"png", "npz"} else formats[0]
    spec = {"run_id": run_id, "out": out, **fields}
    return validate_model(GANGeneration, {"metadata": {"name": "gen"}, "spec": spec})


class MlflowServer:
    """A real ``mlflow server`` (SQLite metadata, artifacts in ``artifacts`` or under ``home``)
    on a free port, that can be killed and started again on the same port and store."""

    def __init__(self, home: Path, artifacts: str | None = None, env: dict[str, str] | None = None) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.artifacts = artifacts or str(home / "artifacts")
        self.env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180) -> None:
        log = open(self.home / "server.log", "ab")  # the server writes it; our handle closes below
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.home}/mlflow.db",
             "--artifacts-destination", self.artifacts, "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True,  # its own process group: uvicorn and its job runners go with it
        )  # fmt: skip
        log.close()
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not start; see {self.home / 'server.log'}") from None
                time.sleep(0.3)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """The whole process group (``mlflow server`` serves from worker processes of its own,
        which would go on answering if only the parent died): SIGKILL is a crash, refused
        connections at once; SIGTERM a shutdown."""
        if self.proc is None:
            return
        for s in (sig, signal.SIGKILL):  # then whatever a SIGTERM left behind
            try:
                os.killpg(self.proc.pid, s)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                continue
        self.proc = None


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30, every: float = 0.2, *,
             retry: tuple[type[BaseException], ...] = ()) -> Any:  # fmt: skip
    """``fn()``'s first truthy value, polling every ``every`` s; an AssertionError naming
    ``what`` (and the last value or ``retry`` exception seen) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except retry as e:  # not there yet
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(every)
