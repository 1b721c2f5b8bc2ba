"""The linker's Prometheus metrics (cluster.serve.metrics) on Ray's metrics endpoint, after real requests.

Ray exports application metrics on each node's metrics port (`ray_` prefixed); the metrics agent pushes them
every few seconds, so the scrape is polled until every name is there.
"""

from __future__ import annotations

import httpx

from tests.cluster.serving.test_serve_app import gold_body
from tests.fixtures import wait_until

NAMES = (
    "ray_mel_requests_total",
    "ray_mel_errors_total",
    "ray_mel_nil_answers_total",
    "ray_mel_stage_latency_ms_bucket",
)


def metrics_url() -> str:
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port  # no public API names it
    return f"http://127.0.0.1:{port}/metrics"


def scrape() -> str:
    try:
        return httpx.get(metrics_url(), timeout=10).text
    except httpx.HTTPError:
        return ""


def test_counters_and_stage_histograms_reach_rays_metrics_endpoint(served_kb, client):
    entity = served_kb.entities[0]
    for _ in range(3):
        assert client.post("/link", json=gold_body(entity, top_k=3)).status_code == 200
    assert client.post("/link", json={"mention": "x", "topk": 3}).status_code == 422  # an error to count
    nil = client.post("/link", json={**gold_body(entity, top_k=1), "filters": {"entity_ids": ["no-such-id"]}})
    assert nil.status_code == 200 and nil.json()["nil"] is True  # nothing retrieved: a NIL answer

    text = wait_until(
        lambda: (t := scrape()) and all(name in t for name in NAMES) and t,
        timeout_s=60,
        interval_s=1.0,
        what=f"{NAMES} on {metrics_url()}",
    )
    lines = text.splitlines()
    for stage in ("parse", "encode", "search", "fetch", "rerank", "assemble", "total"):
        assert any(
            line.startswith("ray_mel_stage_latency_ms_bucket") and f'stage="{stage}"' in line
            for line in lines
        ), stage
    assert any(line.startswith("ray_mel_errors_total") and 'status="422"' in line for line in lines)
    assert any(
        line.startswith("ray_mel_requests_total") and 'path="/link"' in line and 'status="200"' in line
        for line in lines
    )
