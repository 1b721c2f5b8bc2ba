"""`serve.layout: split` (a deployment per stage) answers as the default single deployment does.

The split app runs beside the package's single-layout app, on the same Milvus Lite server and alias, under its
own name and route prefix, and is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from tests.cluster.serving.helpers import wait_ready
from tests.cluster.serving.test_serve_app import gold_body


@pytest.fixture(scope="module")
def split_url(served_kb):
    from ray import serve

    from cluster.serve.app import build_app

    cfg = dataclasses.replace(served_kb.cfg, serve=dataclasses.replace(served_kb.cfg.serve, layout="split"))
    serve.run(build_app(cfg), name="mel-split", route_prefix="/split")
    url = f"{served_kb.url}/split"
    try:
        assert wait_ready(url) == 200
        yield url
    finally:
        serve.delete("mel-split")


def test_split_layout_gives_the_single_layouts_answers_with_its_hops_timed(served_kb, client, split_url):
    for entity in served_kb.entities[:4]:
        body = gold_body(entity, top_k=5)
        single = client.post("/link", json=body).json()
        split = httpx.post(f"{split_url}/link", json=body, timeout=60).json()
        assert [c["entity_id"] for c in split["candidates"]] == [c["entity_id"] for c in single["candidates"]]
        for a, b in zip(single["candidates"], split["candidates"]):
            assert abs(a["score"] - b["score"]) < 1e-4
        assert {"encode_wait", "search_wait", "rerank_wait"} <= set(split["timings_ms"])


async def _concurrent(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        replies = await asyncio.gather(*(c.post("/link", json=b) for b in bodies))
    assert [r.status_code for r in replies] == [200] * len(bodies)
    return [r.json() for r in replies]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served_kb, split_url):
    """16 requests at once: each answer is the one its own mention gets alone (batching mixes nothing up)."""
    entities = served_kb.entities[:16]
    bodies = [gold_body(e, top_k=3) for e in entities]
    for url in (served_kb.url, split_url):
        answers = asyncio.run(_concurrent(url, bodies))
        assert [a["candidates"][0]["entity_id"] for a in answers] == [e["entity_id"] for e in entities]
