"""Bounded load soak of the serving path (issue 9, part 4): `make soak`.

REQUESTS requests (default 20,000) or SECONDS (default 300), whichever comes first, at concurrency 16 over
loopback HTTP against a small KB served on Ray Serve, mixing single links, images, explain, batches and client
errors. Reports p50/p99 latency, error counts and the RSS growth of the replica processes; asserts no 5xx and
RSS growth under MAX_RSS_GROWTH_MB. Bounds come from MEL_SOAK_REQUESTS / MEL_SOAK_SECONDS for shorter runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.helpers import small_served_app

APP, ROUTE = "mel-soak", "/soak"
REQUESTS = int(os.environ.get("MEL_SOAK_REQUESTS", 20_000))
SECONDS = float(os.environ.get("MEL_SOAK_SECONDS", 300))
CONCURRENCY = 16
WARMUP = 200  # requests before the RSS baseline (models loaded, batches warmed, allocator settled)
MAX_RSS_GROWTH_MB = 200


def replica_rss_mb() -> dict[int, float]:
    """RSS of every process running a replica of APP (Ray titles them `ray::ServeReplica:<app>:<deployment>`)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if f"ServeReplica:{APP}:" not in cmdline:
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        out[int(proc.name)] = kb / 1024
    return out


def request_for(i: int, entities: list[dict]) -> tuple[str, dict, int]:
    """(path, body, expected status) for request i: a fixed mix of the API's uses."""
    e = entities[i % len(entities)]
    kind = i % 10
    if kind in (0, 1, 2, 3):
        return "/link", {"mention": e["name"], "context": e["description"], "top_k": 5}, 200
    if kind in (4, 5) and e["image_uris"]:
        return "/link", {"mention": e["name"], "image": e["image_uris"][0]}, 200
    if kind == 6:
        return "/link", {"mention": e["name"], "explain": True}, 200
    if kind == 7:
        names = [x["name"] for x in entities[i % 20 : i % 20 + 4]]
        return "/link/batch", {"mentions": [{"mention": n} for n in names]}, 200
    if kind == 8:
        return "/link", {"mention": e["name"], "image": "%%%"}, 400  # client errors are part of real traffic
    return "/link", {"mention": e["name"], "filters": {"has_image": True}}, 200


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def soak(url: str, entities: list[dict]) -> dict:
    latencies_ms: list[float] = []
    statuses: dict[int, int] = {}
    unexpected: list[tuple[int, int]] = []
    rss: dict[str, dict[int, float]] = {}
    next_index = 0
    start = time.perf_counter()

    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=CONCURRENCY)
    ) as client:

        async def worker():
            nonlocal next_index
            while next_index < REQUESTS and time.perf_counter() - start < SECONDS:
                i = next_index
                next_index += 1
                if i == WARMUP:
                    rss["baseline"] = replica_rss_mb()
                path, body, expected = request_for(i, entities)
                t0 = time.perf_counter()
                try:
                    status = (await client.post(path, json=body)).status_code
                except httpx.HTTPError:
                    status = 0
                latencies_ms.append((time.perf_counter() - t0) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
                if status != expected:
                    unexpected.append((i, status))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    wall_s = time.perf_counter() - start
    rss["end"] = replica_rss_mb()
    base = rss.get("baseline") or rss["end"]
    growth = {pid: rss["end"].get(pid, 0.0) - mb for pid, mb in base.items()}
    return {
        "requests": len(latencies_ms),
        "wall_s": round(wall_s, 1),
        "rps": round(len(latencies_ms) / wall_s, 1),
        "p50_ms": round(percentile(latencies_ms, 0.50), 1),
        "p99_ms": round(percentile(latencies_ms, 0.99), 1),
        "statuses": dict(sorted(statuses.items())),
        "unexpected": unexpected[:20],
        "n_unexpected": len(unexpected),
        "replica_processes": len(base),
        "rss_baseline_mb": round(sum(base.values()), 1),
        "rss_end_mb": round(sum(rss["end"].values()), 1),
        "rss_growth_max_mb": round(max(growth.values(), default=0.0), 1),
        "rss_growth_total_mb": round(sum(growth.values()), 1),
    }


@pytest.mark.soak
def test_serving_soak_no_5xx_and_bounded_memory(tmp_path_factory, ray_session):
    with small_served_app(tmp_path_factory.mktemp("soak"), APP, ROUTE, n_entities=120) as (_, url, entities):
        report = asyncio.run(soak(url, entities))
    print("\nsoak report: " + json.dumps(report))
    assert report["requests"] >= min(REQUESTS, WARMUP + 1)
    assert not [s for s in report["statuses"] if s >= 500 or s == 0], report
    assert report["n_unexpected"] == 0, report
    assert report["replica_processes"] >= 4, report  # ingress, encoder, retriever, reranker were measured
    assert report["rss_growth_max_mb"] < MAX_RSS_GROWTH_MB, report
