"""The driver's live progress display, fed by rank 0 through the control actor."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import ray


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_line(p: dict[str, Any], eta_s: float | None) -> str:
    eta = f"  ETA {_duration(eta_s)}" if eta_s is not None else ""
    return (
        f"epoch {p['epoch']}/{p['epochs']}  step {p['step']}  {p['images_per_s']:.0f} img/s  "
        f"D {p['d_loss']:.3f}  G {p['g_loss']:.3f}  D(x) {p['d_x']:.2f}  D(G(z)) {p['d_g_z']:.2f}{eta}"
    )


class ProgressDisplay:
    """Polls the control actor in a thread; redraws one line on a TTY, prints lines otherwise."""

    def __init__(self, control: Any, total_steps: int, interval_s: float = 1.0) -> None:
        self.control = control
        self.total_steps = total_steps
        self.interval_s = interval_s
        self.tty = sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ganops-progress")
        self._last_step = -1
        self._last_print = 0.0
        # The rate is measured from the first report, not from submit: Ray's start-up
        # (tens of seconds here) would otherwise inflate the first ETAs.
        self._first: tuple[int, float] | None = None
        self.last: dict[str, Any] = {}

    def __enter__(self) -> ProgressDisplay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.tty and self._last_step >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _eta(self, step: int) -> float | None:
        now = time.time()
        if self._first is None:
            self._first = (step, now)
            return None
        done = step - self._first[0]
        if done <= 0:
            return None
        rate = done / (now - self._first[1])
        return (self.total_steps - step) / rate

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                p = ray.get(self.control.progress.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - the display must never take the run down
                continue
            if not p or p.get("step") == self._last_step:
                continue
            self.last = p
            self._last_step = p["step"]
            line = format_line(p, self._eta(p["step"]))
            if self.tty:
                sys.stderr.write("\r\033[K" + line)
                sys.stderr.flush()
            elif time.time() - self._last_print >= 10:  # logs: a line every 10 s at most
                print(line, file=sys.stderr, flush=True)
                self._last_print = time.time()
