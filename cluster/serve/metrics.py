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
"""

from __future__ import annotations

# ms; the tiny model's stages take 0.1-20 ms on CPU, a CLIP model's forward 10-500 ms
LATENCY_BOUNDARIES_MS = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


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

    def request(self, path: str, status: int) -> None:
        tags = {"path": path, "status": str(status)}
        self.requests.inc(tags=tags)
        if status >= 400:
            self.errors.inc(tags=dict(tags))

    def answered(self, answer: dict) -> None:
        """One mention's answer: NIL count and every stage of its `timings_ms`."""
        if answer.get("nil"):
            self.nil.inc()
        if answer.get("dme"):
            self.dme.inc(tags=dme_tags(answer["dme"]))
        for stage, ms in answer.get("timings_ms", {}).items():
            self.stage_ms.observe(max(0.0, float(ms)), tags={"stage": stage})
