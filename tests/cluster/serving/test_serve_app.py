"""The served linker over real HTTP on Ray Serve: health, readiness, linking, explain, entities, batch, alias swap.

Gold mentions: an entity's own name as the mention, its description as the context and its own image. The text
then equals the entity text exactly (mmoe.texts), so even the untrained model must rank that entity first.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import yaml

from tests.cluster.serving.helpers import index_collection, swap_alias
from tests.fixtures import wait_until


def gold_body(entity: dict, with_image: bool = True, **extra) -> dict:
    body = {"mention": entity["name"], "context": entity["description"], **extra}
    if with_image and entity["image_uris"]:
        body["image"] = base64.b64encode(Path(entity["image_uris"][0]).read_bytes()).decode()
    return body


def test_health_and_readiness(served_kb, client):
    assert served_kb.ready_before_index == 503  # no alias yet: not ready
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["entities"] == len(served_kb.entities)
    assert ready.json()["ingress"] == "haproxy"  # the default serve.ingress: HAProxy to the replica itself
    assert client.get("/docs").status_code == 200
    assert "/link/batch" in client.get("/openapi.json").json()["paths"]


def test_known_mentions_link_to_gold(served_kb, client):
    sample = served_kb.entities[:12]
    for entity in sample:
        reply = client.post("/link", json=gold_body(entity, top_k=5))
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert [c["rank"] for c in body["candidates"]] == [1, 2, 3, 4, 5]
        assert body["candidates"][0]["entity_id"] == entity["entity_id"]
        assert body["candidates"][0]["description"] == entity["description"]
        scores = [c["score"] for c in body["candidates"]]
        assert scores == sorted(scores, reverse=True)
        assert body["nil"] is False and body["collection"] == served_kb.collection
        stages = {"parse", "encode_wait", "encode", "search", "fetch", "rerank", "assemble", "total"}
        assert stages <= set(body["timings_ms"]), body["timings_ms"]


def test_image_uri_under_the_kb_root(served_kb, client):
    entity = next(e for e in served_kb.entities if e["image_uris"])
    body = gold_body(entity, with_image=False, image=entity["image_uris"][0])
    reply = client.post("/link", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["candidates"][0]["entity_id"] == entity["entity_id"]


def test_explain_adds_gates_and_unit_scores(served_kb, client):
    entity = served_kb.entities[0]
    body = client.post("/link", json=gold_body(entity, top_k=3, explain=True)).json()
    usage = body["explain"]["expert_usage"]
    assert set(usage) == {"text_intra", "image_intra", "cross_text", "cross_image"}
    for layer in usage.values():
        assert abs(sum(layer["share"]) - 1.0) < 1e-3
    for cand in body["candidates"]:
        units = cand["units"]
        assert abs((units["text"] + units["image"] + units["cross"]) / 3 - cand["score"]) < 1e-3
    plain = client.post("/link", json=gold_body(entity, top_k=3)).json()
    assert "explain" not in plain and "units" not in plain["candidates"][0]


def test_filters_restrict_candidates(served_kb, client):
    entity = served_kb.entities[0]
    allowed = [e["entity_id"] for e in served_kb.entities[20:23]]
    by_id = client.post("/link", json=gold_body(entity, top_k=10, filters={"entity_ids": allowed})).json()
    assert sorted(c["entity_id"] for c in by_id["candidates"]) == sorted(allowed)
    by_name = client.post("/link", json=gold_body(entity, filters={"name": entity["name"]})).json()
    assert {c["name"] for c in by_name["candidates"]} == {entity["name"]}
    assert entity["entity_id"] == by_name["candidates"][0]["entity_id"]
    with_image = client.post("/link", json=gold_body(entity, filters={"has_image": True})).json()
    assert with_image["candidates"][0]["entity_id"] == entity["entity_id"]
    none = client.post(
        "/link", json=gold_body(entity, filters={"has_image": False})
    ).json()  # all have images
    assert none["candidates"] == [] and none["nil"] is True
    quoted = client.post("/link", json=gold_body(entity, filters={"name": 'x" or name != "'}))
    assert quoted.status_code == 200 and quoted.json()["candidates"] == []  # a literal, not an expression


def test_batch_matches_single(served_kb, client):
    sample = served_kb.entities[:4]
    batch = client.post("/link/batch", json={"mentions": [gold_body(e, top_k=3) for e in sample]})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["candidates"][0]["entity_id"] for r in results] == [e["entity_id"] for e in sample]
    single = client.post("/link", json=gold_body(sample[1], top_k=3)).json()
    assert [c["entity_id"] for c in single["candidates"]] == [
        c["entity_id"] for c in results[1]["candidates"]
    ]


def test_entities_endpoint(served_kb, client):
    entity = served_kb.entities[3]
    reply = client.get(f"/entities/{entity['entity_id']}")
    assert reply.status_code == 200
    assert reply.json()["name"] == entity["name"]
    missing = client.get("/entities/NO_SUCH_ID")
    assert missing.status_code == 404
    assert missing.json()["field"] == "entity_id" and missing.json()["request_id"]


def test_in_process_linker_equals_http(served_kb, client):
    from PIL import Image

    from cluster.serve.pipeline import Linker, MentionQuery

    linker = Linker.from_config(served_kb.cfg, device="cpu")
    for entity in served_kb.entities[5:8]:
        image = Image.open(entity["image_uris"][0]).convert("RGB") if entity["image_uris"] else None
        (local,) = linker.link([MentionQuery(entity["name"], entity["description"], image, top_k=5)])
        remote = client.post("/link", json=gold_body(entity, top_k=5)).json()
        assert [c["entity_id"] for c in local["candidates"]] == [c["entity_id"] for c in remote["candidates"]]
        for a, b in zip(local["candidates"], remote["candidates"]):
            assert abs(a["score"] - b["score"]) < 1e-3


def test_print_serve_config_is_a_serve_yaml(served_kb):
    from cluster.config import load_config
    from cluster.serve.app import AppArgs, _flatten, print_serve_config

    doc = yaml.safe_load(print_serve_config(served_kb.cfg))
    (app,) = doc["applications"]
    assert app["import_path"] == "cluster.serve.app:app_builder"
    assert served_kb.cfg.serve.layout == "single"  # the default: one deployment
    assert [d["name"] for d in app["deployments"]] == ["LinkServer"]
    split = dataclasses.replace(served_kb.cfg, serve=dataclasses.replace(served_kb.cfg.serve, layout="split"))
    (split_app,) = yaml.safe_load(print_serve_config(split))["applications"]
    assert {d["name"] for d in split_app["deployments"]} == {
        "LinkIngress",
        "MentionEncoder",
        "Retriever",
        "Reranker",
    }
    retriever = next(d for d in split_app["deployments"] if d["name"] == "Retriever")
    assert retriever["num_replicas"] == 1 or "autoscaling_config" in retriever
    assert doc["http_options"]["port"] == served_kb.cfg.serve.port
    args = AppArgs.model_validate(app["args"])  # app_builder rebuilds the very same config from the YAML
    assert load_config(args.config_path, overrides=_flatten(args.config)) == served_kb.cfg


def test_new_alias_is_picked_up_without_restart(served_kb, client):
    """A second collection without the gold entity; after the alias swap the answer no longer contains it."""

    entity = served_kb.entities[10]
    rest = [e for e in served_kb.entities if e["entity_id"] != entity["entity_id"]]
    second = index_collection(
        served_kb.cfg, served_kb.model_dir, f"{served_kb.cfg.milvus.collection}_v2", rest
    )
    swap_alias(served_kb.cfg, second)
    try:
        body = wait_until(  # the retriever re-resolves the alias about once a second
            lambda: (
                (b := client.post("/link", json=gold_body(entity, top_k=5)).json()).get("collection")
                == second
                and b
            ),
            what="the new alias to be served",
        )
        assert body["collection"] == second
        assert entity["entity_id"] not in {c["entity_id"] for c in body["candidates"]}
    finally:
        swap_alias(served_kb.cfg, served_kb.collection)


def test_a_collection_indexed_by_another_model_is_refused_until_the_alias_is_fixed(served_kb, client):
    """`mel index` tags collections with the indexing model; serving another model over them would rank
    nonsense, so readiness fails and /link answers 503 naming the fix, until the alias points at a good one."""

    from workers.collections import model_tag

    tag = model_tag(served_kb.model_dir)
    other = "deadbeef" if tag != "deadbeef" else "feedface"
    name = f"{served_kb.cfg.milvus.collection}_v{'0' * 12}_{other}"
    index_collection(served_kb.cfg, served_kb.model_dir, name, served_kb.entities[:20])
    swap_alias(served_kb.cfg, name)
    try:
        reply = wait_until(  # the retriever re-resolves the alias about once a second
            lambda: (
                (r := client.post("/link", json=gold_body(served_kb.entities[0], top_k=5))).status_code != 200
                and r
            ),
            what="the mismatched collection to be seen",
        )
        assert reply.status_code == 503, reply.text
        body = reply.json()
        assert name in body["error"] and "mel index" in body["error"] and body["request_id"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and other in ready.json()["reason"]
    finally:
        swap_alias(served_kb.cfg, served_kb.collection)
    wait_until(lambda: client.get("/readyz").status_code == 200, what="readiness after the alias fix")
    assert client.post("/link", json=gold_body(served_kb.entities[0], top_k=5)).status_code == 200


def test_start_check_warns_of_another_ingress_and_of_a_large_kb_in_a_lite_file(served_kb, caplog):
    """What `start_serve` checks once the app answers: the ingress really running, and the KB's size on Lite."""
    import copy
    import logging

    from cluster.serve.app import _check_started

    cfg = copy.deepcopy(served_kb.cfg)
    with caplog.at_level(logging.WARNING, logger="mel.serve"):
        _check_started(served_kb.url, cfg, "/data/milvus.db")  # as configured: silent
    assert caplog.text == ""
    cfg.serve.ingress, cfg.milvus.lite_advice_entities = "proxy", 50
    with caplog.at_level(logging.WARNING, logger="mel.serve"):
        _check_started(served_kb.url, cfg, "/data/milvus.db")
    assert "serve.ingress is proxy but Serve runs with haproxy" in caplog.text
    assert f"{len(served_kb.entities)} entities in a Milvus Lite file" in caplog.text
