"""The live progress line of every long command, in one place so that they all read alike.

Training (``ganops.train.progress``), reference statistics, ``ganops evaluate`` and
``ganops generate`` write through ``LiveLine``: on a terminal one line rewritten in place;
in logs (a file, ``ganops logs``, CI) a line every 10 s at most and always the last one,
because a redraw per batch would be thousands of lines there. ``ImageProgress`` is the
line of a phase that works through a known number of images. Imports nothing heavy.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_INTERVAL_S = 10.0
"""Logs: at most one line per this many seconds (plus the last)."""
REDRAW_S = 0.1
"""Terminal: redraws closer than this are merged; faster than the eye gains nothing and costs writes."""
_ERASE = "\r\033[K"  # back to column 0, clear to the end of the line


def duration(seconds: float) -> str:
    """7s, 2m05s, 1h03m: short enough for a line that is redrawn."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class LiveLine:
    """One status line on stderr (or ``stream``): redrawn on a TTY, throttled lines in logs."""

    def __init__(
        self, stream: TextIO | None = None, log_interval_s: float = LOG_INTERVAL_S, redraw_s: float = REDRAW_S
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.wait_s = redraw_s if self.tty else log_interval_s
        self._last_write: float | None = None
        self._pending: str | None = None  # the newest line, held back by the throttle
        self._on_screen = False  # TTY: a line is drawn and the cursor stands after it

    def show(self, line: str, final: bool = False) -> None:
        """Draw ``line``, unless one was drawn very recently; ``final`` always draws."""
        now = time.monotonic()
        if not final and self._last_write is not None and now - self._last_write < self.wait_s:
            self._pending = line
            return
        self._write(line, now)

    def flush(self) -> None:
        """Draw the line the throttle held back, if any."""
        if self._pending is not None:
            self._write(self._pending, time.monotonic())

    def discard(self) -> None:
        """Forget the line the throttle held back."""
        self._pending = None

    def clear(self) -> None:
        """Erase the drawn line (TTY), so that another message can take its place."""
        if self.tty and self._on_screen:
            self.stream.write(_ERASE)
            self.stream.flush()
            self._on_screen = False

    def close(self) -> None:
        """Draw what was held back and end the line: what follows starts on a fresh one."""
        self.flush()
        if self.tty and self._on_screen:
            self.stream.write("\n")
            self.stream.flush()
            self._on_screen = False

    def _write(self, line: str, now: float) -> None:
        if self.tty:
            self.stream.write(_ERASE + line)
            self._on_screen = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._pending = None
        self._last_write = now


class ImageProgress:
    """``reference statistics  4,000/10,000 images  812 img/s  ETA 7s`` for one phase.

    The rate counts from the phase's start, so the first line already has an ETA. The last
    line says how long the phase took. Disabled (``-q``, or a rank other than 0), it only counts.
    """

    def __init__(self, label: str, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.line = LiveLine(stream) if enabled else None
        self.t0 = time.perf_counter()
        self._closed = False

    def __enter__(self) -> ImageProgress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(finished=exc_type is None)

    def add(self, n: int) -> None:
        self.done += n
        if self.line is not None:
            self.line.show(self._format(time.perf_counter() - self.t0, final=False))

    def close(self, finished: bool = True) -> None:
        """The last line (unless the phase failed: its error says more), then a fresh line."""
        if self._closed or self.line is None:
            return
        self._closed = True
        if finished:
            self.line.show(self._format(time.perf_counter() - self.t0, final=True), final=True)
        else:
            self.line.discard()  # a failed phase's last count is not worth a line
        self.line.close()

    def _format(self, elapsed: float, final: bool) -> str:
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if final:
            # A short phase's "in 0s" says nothing: tenths below 10 s.
            tail = f"  in {elapsed:.1f}s" if elapsed < 10 else f"  in {duration(elapsed)}"
        else:
            tail = f"  ETA {duration((self.total - self.done) / rate)}" if rate > 0 else ""
        return f"{self.label}  {self.done:,}/{self.total:,} images  {rate:.0f} img/s{tail}"
