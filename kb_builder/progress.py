"""Progress lines for long work: rows done, rate and ETA, at most every few seconds, then a summary."""

from __future__ import annotations

import sys
import time


def _fmt_s(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


class Progress:
    """`update(rows, fraction_done)` prints `label: 1,200,000 rows, 95,000 rows/s, 38% ETA 0m25s`."""

    def __init__(self, label: str, enabled: bool = True, every_s: float = 2.0, stream=None):
        self.label, self.enabled, self.every_s = label, enabled, every_s
        self.stream = stream or sys.stderr
        self.rows = 0
        self.fraction = 0.0
        self.start_s = time.monotonic()
        self._last_print_s = self.start_s  # first line after `every_s`: quick jobs print only the summary

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.start_s

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.elapsed_s, 1e-9)

    def update(self, rows: int, fraction_done: float | None = None) -> None:
        """Add `rows` done; `fraction_done` (0..1 of all input) lets us print an ETA."""
        self.rows += rows
        if fraction_done is not None:
            self.fraction = min(1.0, max(self.fraction, fraction_done))
        now = time.monotonic()
        if self.enabled and now - self._last_print_s >= self.every_s:
            self._last_print_s = now
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        text = f"{self.label}: {self.rows:,} rows, {self.rows_per_s:,.0f} rows/s"
        if 0 < self.fraction < 1:
            eta_s = self.elapsed_s * (1 - self.fraction) / self.fraction
            text += f", {self.fraction:.0%} ETA {_fmt_s(eta_s)}"
        return text

    def done(self, extra: str = "") -> str:
        """Print and return the closing summary line."""
        text = f"{self.label}: done, {self.rows:,} rows in {_fmt_s(self.elapsed_s)}"
        text += f" ({self.rows_per_s:,.0f} rows/s)"
        text += f"; {extra}" if extra else ""
        if self.enabled:
            print(text, file=self.stream, flush=True)
        return text
