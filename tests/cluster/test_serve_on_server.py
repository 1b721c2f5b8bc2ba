"""Serving on the session's real Milvus 2.3 server (issue 18, item 2, and item 4 through `/link`): two replicas
of every deployment, the retriever's included (a Lite file allows one); `mel index` writing a new collection
while the app answers, its alias picked up without a restart; partition-key filters through HTTP."""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import pytest

from tests.fixtures import free_port, wait_until

pytestmark = [pytest.mark.milvus_server, pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_session, milvus_server):
    from ray import serve

    from cluster.config import load_config
    from cluster.index.run import run_index_job
    from cluster.serve.app import start_serve
    from cluster.serve.client import wait_ready
    from kb_builder.build import build_kb
    from kb_builder.shards import read_entities
    from kb_builder.storage import Storage

    uri, _ = milvus_server
    tmp = tmp_path_factory.mktemp("serve_server")
    cfg = load_config(
        overrides=[
            f"storage.root={tmp / 'data'}",
            f"storage.cache_dir={tmp / 'cache'}",
            "kb.sample_entities=60",
            "kb.sample_mentions=20",
            f"milvus.uri={uri}",
            f"milvus.collection=srv{uuid.uuid4().hex[:8]}",
            "milvus.partition_key=type",
            f"serve.port={free_port()}",
            "serve.num_replicas=2",
            "serve.layout=split",  # the retriever as its own deployment, at two replicas
            "serve.num_cpus_per_replica=0.1",
        ]
    )
    build_kb(cfg.kb, cfg.storage, progress=False)
    first = run_index_job(cfg)
    url = start_serve(cfg)
    wait_ready(url)
    entities = read_entities(Storage(cfg.storage), cfg.kb.name).to_dicts()
    yield cfg, url, first, entities
    serve.shutdown()


def test_every_deployment_runs_two_replicas_on_a_server(served):
    from ray import serve

    status = serve.status().applications
    replicas = {
        name: sum(n for state, n in dep.replica_states.items() if str(state).endswith("RUNNING"))
        for app in status.values()
        for name, dep in app.deployments.items()
    }
    assert replicas and all(n == 2 for n in replicas.values()), replicas
    assert "Retriever" in replicas


def test_an_index_job_while_serving_is_picked_up_without_restart(served):
    import copy

    from cluster.index.run import run_index_job
    from kb_builder.build import build_kb

    cfg, url, first, entities = served
    grown = copy.deepcopy(cfg)
    grown.kb.sample_entities = len(entities) + 4  # a new KB version: `mel index` writes a new collection
    name = entities[0]["name"]
    seen, errors, stop = set(), [], threading.Event()

    def keep_linking():
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                reply = client.post("/link", json={"mention": name})
                if reply.status_code != 200:
                    errors.append((reply.status_code, reply.text))
                else:
                    seen.add(reply.json()["collection"])

    reader = threading.Thread(target=keep_linking, daemon=True)
    reader.start()
    try:
        build_kb(grown.kb, grown.storage, progress=False)
        second = run_index_job(grown)  # a full run: a new versioned collection, then the alias swap
        assert second.swapped and second.collection != first.collection
        assert second.total == len(entities) + 4
        wait_until(lambda: second.collection in seen, timeout_s=30, what="answers from the new collection")
    finally:
        stop.set()
        reader.join(timeout=60)
    assert not errors, errors[:3]
    assert first.collection in seen  # answered throughout: before the swap from the old collection


def test_a_partition_filter_through_link_stays_in_its_partition(served):
    from kb_builder.shards import read_entities
    from kb_builder.storage import Storage

    cfg, url, _, _ = served
    entities = read_entities(
        Storage(cfg.storage), cfg.kb.name
    ).to_dicts()  # as served now (the KB may have grown)
    types = {e["entity_id"]: json.loads(e["attributes"])["type"] for e in entities}
    kinds = sorted(set(types.values()))
    assert len(kinds) > 1
    with httpx.Client(base_url=url, timeout=60) as client:
        for kind in kinds:
            body = {"mention": entities[0]["name"], "top_k": 50, "filters": {"partition": kind}}
            reply = client.post("/link", json=body)
            assert reply.status_code == 200, reply.text
            got = [types[c["entity_id"]] for c in reply.json()["candidates"]]
            assert got and set(got) == {kind}
            assert len(got) == min(50, sum(t == kind for t in types.values()))
