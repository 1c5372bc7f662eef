"""A progress line for long jobs on stderr: done / total, images per second, ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """``update(n)`` after each ``n`` images. On a terminal one line redrawn in place (at
    most 5 times a second); elsewhere (a log) a line every ``every`` seconds and at the end.
    The rate counts the images done in this run (not those skipped on resume)."""

    def __init__(
        self, total: int, label: str = "explaining", file: TextIO | None = None, every: float = 10.0
    ):
        self.total, self.label = total, label
        self.file = file or sys.stderr
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.every = 0.2 if self.tty else every
        self.done = self.skipped = 0
        self.started = self.last = time.perf_counter()
        self.first = True

    def skip(self, n: int) -> None:
        """``n`` images already done by an earlier run."""
        self.skipped += n
        self.done += n

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self._show(now)

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        ran = self.done - self.skipped
        elapsed = max(now - self.started, 1e-9)
        rate = ran / elapsed
        text = f"{self.label} {self.done}/{self.total}"
        if ran:
            text += f"  {rate:.1f} img/s"
            left = self.total - self.done
            text += f"  ETA {_duration(left / rate)}" if left else f"  in {_duration(elapsed)}"
        return text

    def _show(self, now: float) -> None:
        text = self.line(now)
        if self.tty:
            self.file.write("\r" + text.ljust(60))
        else:
            self.file.write(text + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.tty:
            self.file.write("\n")
            self.file.flush()
        elif self.done and self.done < self.total:
            self._show(time.perf_counter())
