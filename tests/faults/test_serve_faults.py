"""Serve replica death under load (issue 9, 1e), over real HTTP on Ray Serve.

A bounded load (REQUESTS requests at CONCURRENCY) runs against a small served KB; when request KILL_AT has been
answered, one replica (the reranker, then the HTTP ingress) is killed with `ray.kill`. Promise: only requests
in flight around the kill may fail (each a clean 5xx or a dropped connection, never a hang), Serve starts a
replacement replica, and every request after recovery answers 200.

How many: a reranker's death fails at most the CONCURRENCY requests in flight. The ingress replica is where
HAProxy (`serve.ingress: haproxy`) hands connections over, so its death drops every request it holds (status 0),
and a request that a slot freed by a finishing one sends while the replica is still dying can fail too (a 500):
at most 2 x CONCURRENCY, all within the window around the kill.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import ray

from tests.cluster.serving.helpers import wait_ready
from tests.faults.helpers import APP

REQUESTS = 120
CONCURRENCY = 8
KILL_AT = 30  # answered requests before the kill
AFTER = 20  # sequential requests after the load, all of which must be 200


def replica_names(deployment: str) -> list[str]:
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#{deployment}#")
    )


async def load_with_a_kill(url: str, entities: list[dict], deployment: str) -> list[tuple[int, dict]]:
    """(status, body) per request, in request order; the replica dies after KILL_AT answers."""
    limit = asyncio.Semaphore(CONCURRENCY)
    answered = 0
    killed = asyncio.Event()
    (victim,) = replica_names(deployment)

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(i: int):
            nonlocal answered
            e = entities[i % len(entities)]
            async with limit:
                try:
                    reply = await client.post(
                        "/link",
                        json={"mention": e["name"], "context": e["description"]},
                        headers={"x-request-id": f"r{i}"},
                    )
                    result = (
                        reply.status_code,
                        reply.json()
                        if reply.headers.get("content-type", "").startswith("application/json")
                        else {"text": reply.text[:200]},
                    )
                except httpx.HTTPError as exc:  # a dropped connection counts as a failure too
                    result = (0, {"error": type(exc).__name__})
            answered += 1
            if answered == KILL_AT and not killed.is_set():
                killed.set()
                ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            return result

        return await asyncio.gather(*(one(i) for i in range(REQUESTS)))


@pytest.mark.parametrize("deployment", ["Reranker", "LinkIngress"])
def test_replica_death_fails_a_bounded_number_of_requests_then_recovers(fault_app, deployment):
    cfg, url, entities = fault_app
    (before,) = replica_names(deployment)
    results = asyncio.run(load_with_a_kill(url, entities, deployment))
    failures = [(i, s, b) for i, (s, b) in enumerate(results) if s != 200]
    print(
        f"\n{deployment}: {len(failures)} of {REQUESTS} requests failed around the kill: "
        f"{[(i, s) for i, s, _ in failures]}"
    )
    assert len(failures) <= (CONCURRENCY if deployment == "Reranker" else 2 * CONCURRENCY)
    for i, status, body in failures:  # only requests around the kill, each a clean error
        assert KILL_AT - CONCURRENCY <= i < KILL_AT + 2 * CONCURRENCY, (i, status)
        assert status in (0, 500, 502, 503), (status, body)
        assert "Traceback" not in str(body)
    # recovery: Serve replaced the replica, and every later request answers 200
    assert wait_ready(url) == 200
    with httpx.Client(base_url=url, timeout=120) as client:
        statuses = [
            client.post("/link", json={"mention": entities[i]["name"]}).status_code for i in range(AFTER)
        ]
    assert statuses == [200] * AFTER
    after = replica_names(deployment)
    assert len(after) == 1 and after != [before]
