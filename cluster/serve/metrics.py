"""Prometheus metrics of the linker through Ray Serve's metrics API (`ray.serve.metrics`).

They are exported on each Ray node's metrics endpoint (`ray_` prefixed, with Serve's deployment, replica and
application tags added by Ray), next to Serve's own request metrics:

| name (as scraped)                    | type      | tags            | what                                         |
|--------------------------------------|-----------|-----------------|----------------------------------------------|
| `ray_mel_requests_total`             | counter   | path, status    | every HTTP answer of the ingress             |
| `ray_mel_errors_total`               | counter   | path, status    | answers with status >= 400                   |
| `ray_mel_nil_answers_total`          | counter   |                 | linked mentions answered NIL                 |
| `ray_mel_stage_latency_ms_bucket`... | histogram | stage           | each `timings_ms` stage of every answer      |
| `ray_mel_dme_answers_total`          | counter   | outcome, why    | answers of a DME-trained model, by how DME went: outcome `selected`, `no_match`, `no_candidates` or `fallback` (then `why`: `timeout`, `unparsable`, `http_500`...) |

`NoMetrics` stands in where no Serve replica runs (the in-process app of the tests and benchmarks).

`ServeMetrics` records off the request path: an answer's dozen observations are queued and handed to Ray every
`FLUSH_S` seconds by the replica's event loop. Recorded inline they cost 1.4 ms of a 17 ms `/link` at
concurrency 1 (bench_serve: each Ray metric call takes the core worker's lock beside the request's own work);
Ray exports every few seconds anyway, so the delay does not show.
"""

from __future__ import annotations

import asyncio

# ms; the tiny model's stages take 0.1-20 ms on CPU, a CLIP model's forward 10-500 ms
LATENCY_BOUNDARIES_MS = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
FLUSH_S = 0.5  # how long a recorded value may wait before it reaches Ray


def dme_tags(reason: str) -> dict[str, str]:
    """`fallback:timeout` -> outcome `fallback`, why `timeout`: few tag values, so the series stay few."""
    outcome, _, why = reason.partition(":")
    return {"outcome": outcome, "why": why}


class NoMetrics:
    """The same calls, recording nothing."""

    def request(self, path: str, status: int) -> None:
        pass

    def answered(self, answer: dict) -> None:
        pass


class ServeMetrics(NoMetrics):
    """Counters and per-stage latency histograms; create it inside a Serve replica (its tags come from there)."""

    def __init__(self):
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter("mel_requests", "HTTP answers of the linker", tag_keys=("path", "status"))
        self.errors = Counter("mel_errors", "HTTP answers with status >= 400", tag_keys=("path", "status"))
        self.nil = Counter("mel_nil_answers", "linked mentions answered NIL")
        self.dme = Counter(
            "mel_dme_answers", "answers of a DME-trained model by DME outcome", tag_keys=("outcome", "why")
        )
        self.stage_ms = Histogram(
            "mel_stage_latency_ms",
            "latency of one pipeline stage of one answer (timings_ms)",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("stage",),
        )
        self._pending: list[tuple] = []  # (bound record method, value, tags)
        self._flush_due = False

    def _record(self, method, value: float, tags: dict | None = None) -> None:
        """Queue one record; the running event loop flushes the queue within FLUSH_S (no loop: now)."""
        self._pending.append((method, value, tags))
        if self._flush_due:
            return
        try:
            asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
        except RuntimeError:  # called outside the replica's event loop
            self.flush()
            return
        self._flush_due = True

    def flush(self) -> None:
        """Hand every queued record to Ray."""
        self._flush_due = False
        pending, self._pending = self._pending, []
        for method, value, tags in pending:
            method(value, tags=tags)

    def request(self, path: str, status: int) -> None:
        tags = {"path": path, "status": str(status)}
        self._record(self.requests.inc, 1.0, tags)
        if status >= 400:
            self._record(self.errors.inc, 1.0, dict(tags))

    def answered(self, answer: dict) -> None:
        """One mention's answer: NIL count and every stage of its `timings_ms`."""
        if answer.get("nil"):
            self._record(self.nil.inc, 1.0)
        if answer.get("dme"):
            self._record(self.dme.inc, 1.0, dme_tags(answer["dme"]))
        for stage, ms in answer.get("timings_ms", {}).items():
            self._record(self.stage_ms.observe, max(0.0, float(ms)), {"stage": stage})
