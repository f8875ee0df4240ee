"""Progress of long loops (batches, trials, ETA) on a log line every 30 s, and the console
that shows it.

Progress lines are log records marked :data:`PROGRESS`. On a terminal,
:class:`ConsoleHandler` keeps the latest one as a single live line, rewritten in place and
cleared by the next ordinary line, so a half-hour study shows its stage lines and one line
that moves, not a screenful of ETAs. Anywhere else (``ray job logs``, a file, a pipe) every
progress line is an ordinary line: log files stay readable, with no carriage returns.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("coreset")

PROGRESS = {"progress": True}  # ``extra=`` of a progress record
_CLEAR = "\r\x1b[K"  # back to column 0, erase to the end of the line


class ConsoleHandler(logging.StreamHandler):
    """A stream handler that shows progress records as one live line when its stream is a
    terminal (and as ordinary lines when it is not)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.live = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.stream.isatty():
            super().emit(record)
            return
        try:
            text = self.format(record)
            if getattr(record, "progress", False):
                self.stream.write(_CLEAR + text.splitlines()[0])
                self.live = True
            else:
                self.stream.write((_CLEAR if self.live else "") + text + self.terminator)
                self.live = False
            self.flush()
        except Exception:  # noqa: BLE001 (logging's contract: a failing handler reports, never raises)
            self.handleError(record)

    def end_live_line(self) -> None:
        """Clear the live line before something else writes to the terminal (an error line)."""
        if self.live:
            self.stream.write(_CLEAR)
            self.flush()
            self.live = False


def end_live_lines() -> None:
    """Clear the root logger's live progress line, if any (before a line printed directly)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ConsoleHandler):
            handler.end_live_line()


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``: durations in console lines."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts steps of a loop of known length and logs rate and ETA every ``every_s`` seconds."""

    def __init__(self, label: str, total: int, every_s: float = 30.0) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.done = 0
        self.start = self.last = time.perf_counter()

    def step(self, n: int = 1, **info: object) -> None:
        """Count ``n`` steps; ``info`` values (floats or 0-d tensors) are read only when a line is logged."""
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            rate = self.done / (now - self.start)
            eta = (self.total - self.done) / rate
            extra = " ".join(f"{k}={float(v):.4g}" for k, v in info.items())  # type: ignore[arg-type]
            log.info("%s %d/%d, ETA %s %s", self.label, self.done, self.total, duration(eta), extra, extra=PROGRESS)
