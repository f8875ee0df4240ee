"""Progress of long loops (batches, ETA) on a log line at most every few seconds.

Log files of cluster jobs stay readable: no carriage-return bars, no per-batch lines.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("coreset")


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
            log.info("%s %d/%d, ETA %s %s", self.label, self.done, self.total, duration(eta), extra)
