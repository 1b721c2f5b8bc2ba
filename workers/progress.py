"""Progress of long jobs: entities done, entities/s and ETA, printed at most every `every_s` seconds.

Plain text lines (not a redrawn bar) so logs from Ray jobs and CI stay readable.
"""

from __future__ import annotations

import sys
import time


def format_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or inf: nothing measured yet
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """`update(n)` after each unit of work; `line()` is the current status; `close()` prints the final one."""

    def __init__(self, total: int, label: str = "entities", every_s: float = 5.0, stream=None, enabled=True):
        self.total = int(total)
        self.label = label
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self._last_print = 0.0

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {rate:.1f} {self.label}/s "
            f"elapsed {format_eta(self.elapsed_s)} ETA {format_eta(eta)}"
        )

    def update(self, n: int) -> None:
        self.done += int(n)
        now = time.perf_counter()
        if self.enabled and (now - self._last_print >= self.every_s or self.done >= self.total):
            self._last_print = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> str:
        line = self.line()
        if self.enabled:
            print(line + " (done)", file=self.stream, flush=True)
        return line
