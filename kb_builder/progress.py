"""The one progress meter of the project, on tqdm: items done, rate and time left, then a one-line summary.

Every long phase (KB build, indexing, DME, entity encoding, scoring, mining, checkpointing) uses it. tqdm does
the counting, throttling, rate and ETA; we only print each status as a whole line instead of redrawing one,
so the logs of Ray workers and CI stay readable. Lines go to stdout: the stream Ray forwards from workers to the
console (their stderr, where Ray's own loggers write, stays in Ray's log files; see cluster.runtime).
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class _LineBar(tqdm):
    """A tqdm bar that prints whole lines; no monitor thread (Ray workers and tests start many meters)."""

    monitor_interval = 0

    def __init__(self, *args, line_stream=None, **kwargs):
        self.line_stream = line_stream
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg is not None:  # tqdm passes msg="" to clear a line: nothing to clear in line mode
            return False
        print(str(self), file=self.line_stream, flush=True)
        return True


class Progress:
    """`update(n)` after each unit of work; `done()` prints and returns the summary (`close` is the same).

    A known `total` gives percent and ETA; without one, `update(n, fraction_done)` estimates it.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "rows",
        enabled: bool = True,
        every_s: float = 2.0,
        stream=None,
    ):
        self.label, self.unit, self.enabled = label, unit, enabled
        self.stream = stream if stream is not None else sys.stdout
        self.bar = _LineBar(
            total=total,
            desc=label,
            unit=f" {unit}",
            unit_scale=True,
            line_stream=self.stream,
            file=self.stream,
            disable=not enabled,
            mininterval=every_s,
            miniters=1,
            delay=max(every_s, 1e-6),  # quick phases print only their summary
            leave=False,
            bar_format=self._format(total),
        )
        self.bar.n = 0
        self._closed_summary: str | None = None

    def _format(self, total: int | None) -> str:
        if total:
            return "{desc}: {n:,}/{total:,}{unit} ({percentage:.0f}%), {rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}"
        return "{desc}: {n:,}{unit}, {rate_fmt}, elapsed {elapsed}{postfix}"

    @property
    def rows(self) -> int:
        return int(self.bar.n)

    @property
    def elapsed_s(self) -> float:
        return self.bar.format_dict["elapsed"]

    def update(self, n: int, fraction_done: float | None = None, note: str = "") -> None:
        """Add `n` items done; `fraction_done` (0..1 of all input) sets the total when it is not known;
        `note` (e.g. the loss) ends the next status line."""
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        if fraction_done and 0 < fraction_done <= 1 and not self.bar.total:
            done = self.bar.n + n
            self.bar.total = max(done, int(round(done / fraction_done)))
            self.bar.bar_format = self._format(self.bar.total)
        elif fraction_done and self.bar.total:
            done = self.bar.n + n
            self.bar.total = max(done, int(round(done / min(1.0, fraction_done))))
        self.bar.update(int(n))

    def done(self, extra: str = "") -> str:
        """Print and return `label: done, N unit in 1m05s (R unit/s); extra` (once)."""
        if self._closed_summary is not None:
            return self._closed_summary
        elapsed = self.elapsed_s
        rate = self.bar.n / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}: done, {self.bar.n:,} {self.unit} in {tqdm.format_interval(elapsed)}"
        text += f" ({rate:,.1f} {self.unit}/s)" + (f"; {extra}" if extra else "")
        self.bar.close()
        if self.enabled:
            print(text, file=self.stream, flush=True)
        self._closed_summary = text
        return text

    close = done

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.done()
