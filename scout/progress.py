"""A progress bar for long operator commands (`import-users`): count, rate and time left, on
standard error so the command's report on standard output stays clean. On a terminal it is
redrawn in place a few times a second; otherwise (a log, CI) a line is written every tenth."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 24
REDRAW_EVERY = 0.2  # seconds between redraws on a terminal


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, total: int, what: str, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.what = what
        self.out = out or sys.stderr
        self.clock = clock
        self.started = clock()
        self.done = 0
        self._interactive = self.out.isatty()
        self._last_drawn = -1.0
        self._last_tenth = -1

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        filled = WIDTH * self.done // self.total if self.total else WIDTH
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = "done" if self.done >= self.total else (f"{_duration(left)} left" if left is not None else "-:-- left")
        return (f"[{'#' * filled}{'.' * (WIDTH - filled)}] {self.done:,}/{self.total:,} {self.what}  "
                f"{rate:,.0f}/s  {eta}")

    def advance(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if self._interactive:
            if now - self._last_drawn >= REDRAW_EVERY or done >= self.total:
                self._last_drawn = now
                self.out.write("\r" + self.line() + ("\n" if done >= self.total else ""))
                self.out.flush()
            return
        tenth = 10 * done // self.total if self.total else 10
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.out.write(self.line() + "\n")
            self.out.flush()
