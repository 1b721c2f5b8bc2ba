"""`mel link` against the served app, and a bounded concurrent load that must produce no 5xx."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import pytest

from cluster.serve.client import format_table, link, request_body


def test_link_client_prints_a_ranked_table(served_kb):
    entity = next(e for e in served_kb.entities if e["image_uris"])
    table = link(
        served_kb.url, entity["name"], context=entity["description"], image=entity["image_uris"][0], top_k=3
    )
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["rank", "confidence", "score", "entity_id", "name"]
    assert lines[2].split()[0] == "1" and lines[2].split()[3] == entity["entity_id"]
    assert 0.0 <= float(lines[2].split()[1]) <= 1.0
    assert len([ln for ln in lines if ln[:1].isdigit()]) == 3
    assert "linked" in table


def test_link_client_sends_local_files_as_base64_and_uris_as_is(served_kb, tmp_path):
    image = Path(served_kb.entities[0]["image_uris"][0])
    body = request_body("m", image=str(image))
    assert base64.b64decode(body["image"]) == image.read_bytes()
    assert request_body("m", image="s3://bucket/x.png")["image"] == "s3://bucket/x.png"
    with pytest.raises(FileNotFoundError):
        request_body("m", image=str(tmp_path / "missing.png"))


def test_link_client_reports_server_errors(served_kb):
    with pytest.raises(ValueError, match="413.*max_text_chars"):
        link(served_kb.url, "x" * 1000)


def test_format_table_truncates_and_marks_nil():
    reply = {
        "candidates": [
            {
                "rank": 1,
                "score": 0.5,
                "confidence": 0.4213,
                "entity_id": "E1",
                "name": "N",
                "description": "d" * 500,
            }
        ],
        "nil": True,
        "nil_threshold": 0.9,
        "collection": "c",
        "timings_ms": {"total": 3.0},
    }
    table = format_table(reply)
    assert "d" * 57 + "..." in table and "d" * 61 not in table
    assert "NIL" in table and "nil_threshold=0.9 (confidence)" in table
    header, _, row = table.splitlines()[:3]
    assert header.split()[:3] == ["rank", "confidence", "score"]
    assert row.split()[:4] == ["1", "0.421", "0.5000", "E1"]


def test_bounded_concurrent_load_has_no_5xx(served_kb):
    """200 requests at concurrency 16, mixing good mentions, images, explain, batches and client errors."""
    entities = served_kb.entities

    def body(i: int) -> tuple[str, dict]:
        e = entities[i % len(entities)]
        kind = i % 5
        if kind == 0:
            return "/link", {"mention": e["name"], "context": e["description"], "top_k": 3}
        if kind == 1:
            return "/link", {"mention": e["name"], "image": e["image_uris"][0], "explain": True}
        if kind == 2:
            return "/link/batch", {
                "mentions": [{"mention": x["name"]} for x in entities[i % 50 : i % 50 + 3]]
            }
        if kind == 3:
            return "/link", {"mention": e["name"], "image": "%%%"}  # a client error under load
        return "/link", {"mention": e["name"], "filters": {"has_image": True}}

    async def run() -> list[int]:
        limit = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=served_kb.url, timeout=600) as client:

            async def one(i: int) -> int:
                path, payload = body(i)
                async with limit:
                    return (await client.post(path, json=payload)).status_code

            return await asyncio.gather(*(one(i) for i in range(200)))

    statuses = asyncio.run(run())
    assert not [s for s in statuses if s >= 500]
    assert statuses.count(400) == 40 and statuses.count(200) == 160
    assert httpx.get(f"{served_kb.url}/readyz", timeout=30).status_code == 200
