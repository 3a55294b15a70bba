"""The driver's live progress display, fed by rank 0 through the control actor."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from ganops.progress import LiveLine, duration


def format_line(p: dict[str, Any], eta_s: float | None) -> str:
    eta = f"  ETA {duration(eta_s)}" if eta_s is not None else ""
    if "d_x" in p:  # probabilities (bce, minimax)
        outputs = f"D(x) {p['d_x']:.2f}  D(G(z)) {p['d_g_z']:.2f}"
    else:  # raw critic scores (hinge, wgan_gp, lsgan): no probabilities
        outputs = f"C(x) {p['critic_real']:.3g}  C(G(z)) {p['critic_fake']:.3g}"
    # Unhealthy training (ganops.train.health) shows on the line itself, not only in a warning.
    health = f"  [{', '.join(p['health'])}]" if p.get("health") else ""
    precision = f" {p['precision']}" if p.get("precision") else ""  # fp32 or bf16, as resolved
    return (
        f"epoch {p['epoch']}/{p['epochs']}  step {p['step']}  {p['images_per_s']:.0f} img/s{precision}  "
        f"D {p['d_loss']:.3f}  G {p['g_loss']:.3f}  {outputs}{health}{eta}"
    )


class ProgressDisplay:
    """Polls the control actor in a thread; the line itself is a ``LiveLine`` (redrawn on a
    TTY, a line every 10 s at most in logs, and the last one).

    Warnings and notes from the workers (whose own output stays in Ray's logs) are printed too,
    with or without the progress line.
    """

    def __init__(
        self,
        control: Any,
        total_steps: int,
        interval_s: float = 1.0,
        show_line: bool = True,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.control = control
        self.total_steps = total_steps
        self.interval_s = interval_s
        self.show_line = show_line
        self.echo = echo or (lambda m: print(m, file=sys.stderr, flush=True))
        self.line = LiveLine(redraw_s=0.0)  # a TTY redraw per poll (interval_s) is already few
        self.tty = self.line.tty and show_line
        self._messages_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ganops-progress")
        self._last_step = -1
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
        self.line.close()

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

    def _relay_messages(self) -> None:
        new = ray.get(self.control.messages.remote(self._messages_seen), timeout=5)
        self._messages_seen += len(new)
        for level, message in new:
            self.line.clear()
            self.echo(f"warning: {message}" if level == "warning" else message)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll()
        self._poll(final=True)  # what arrived in the last interval, printed even in logs

    def _poll(self, final: bool = False) -> None:
        try:
            self._relay_messages()
            p = ray.get(self.control.progress.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - the display must never take the run down
            return
        if self.show_line:
            self._show(p, final)

    def _show(self, p: dict[str, Any], final: bool = False) -> None:
        if not p:
            return
        if p.get("step") == self._last_step:
            if final:
                self.line.flush()  # logs: the newest report, held back by the 10 s throttle
            return
        self.last = p
        self._last_step = p["step"]
        self.line.show(format_line(p, self._eta(p["step"])), final)
