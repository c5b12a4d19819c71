"""Progress lines for long loops in a job's log: `label done/total  details  rate  ETA`.

The log is a file, so progress is a line every few units rather than a terminal bar. Shared by
training (optimizer steps) and inference (images), so it imports nothing of either.
"""

from __future__ import annotations

import logging
import math
import time


class Progress:
    """Logs one line every `every` units (and at the last), timed from this run's start, so a
    resumed run's rate counts only the units done since `start`."""

    def __init__(self, log: logging.Logger, total: int, start: int = 0, every: int = 1, label: str = "step", unit: str = "it"):
        self.log, self.total, self.start, self.every = log, total, start, max(1, every)
        self.label, self.unit = label, unit
        self.started = time.perf_counter()

    def update(self, done: int, details: str = "") -> None:
        """`done` units of `total` are finished; `details` goes into the line as it is."""
        if done % self.every and done != self.total:
            return
        rate = (done - self.start) / max(time.perf_counter() - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        parts = [f"{self.label} {done}/{self.total}", details, f"{rate:.2f} {self.unit}/s", f"ETA {duration(eta)}"]
        self.log.info("  ".join(part for part in parts if part))


def duration(seconds: float) -> str:
    """`h:mm:ss`, or `?` when unknown (no unit finished yet)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
