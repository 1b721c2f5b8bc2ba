"""A Lite file this process serves is searched in-process (workers.lite_engine): the same hits, order,
scores, names and vectors as Lite's gRPC answers, filters included; anything else still goes through gRPC."""

from __future__ import annotations

import os

import numpy as np
import pytest

from workers.config import MilvusConfig
from workers.lite_engine import engine_for
from workers.milvus_store import MilvusStore, _hits


def rows(n: int, dim: int = 16, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "entity_id": f"E{i:04d}",
            "vector": rng.normal(size=dim),
            "name": f"name {i % 7}",
            "has_image": i % 3 == 0,
            "content_hash": f"h{i}",
        }
        for i in range(n)
    ]


@pytest.fixture
def lite(tmp_path):
    store = MilvusStore(MilvusConfig(collection="ents"), str(tmp_path / "milvus.db"))
    store.create("ents_v1", 16)
    store.upsert("ents_v1", rows(300))
    store.swap_alias("ents_v1")
    yield store
    store.close(release_file=True)


def grpc_search(store: MilvusStore, queries, top_k: int, filter: str, with_vectors: bool):
    """The same search through pymilvus and Lite's gRPC adapter (MilvusStore.search's other path)."""
    res = store.client.search(
        "ents_v1",
        data=np.asarray(queries, np.float32).tolist(),
        limit=top_k,
        filter=filter,
        output_fields=["name", "vector"] if with_vectors else ["name"],
        search_params={"metric_type": "IP", "params": {}},
    )
    return [_hits(q, with_vectors) for q in res]


@pytest.mark.parametrize("with_vectors", [False, True])
@pytest.mark.parametrize(
    "filter", ["", "has_image == true", 'name in ["name 2", "name 5"] and has_image == false']
)
def test_in_process_search_gives_lites_grpc_answers(lite, filter, with_vectors):
    assert engine_for(lite.uri) is not None  # the store's own file: searched in-process
    queries = np.random.default_rng(1).normal(size=(3, 16))
    fast = lite.search(queries, 50, filter=filter, with_vectors=with_vectors)
    slow = grpc_search(lite, queries, 50, filter, with_vectors)
    assert [len(q) for q in fast] == [len(q) for q in slow] and all(len(q) > 0 for q in fast)
    for a, b in zip(fast, slow):
        assert [h.entity_id for h in a] == [h.entity_id for h in b]
        assert [h.name for h in a] == [h.name for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-6)
        if with_vectors:
            np.testing.assert_allclose(np.asarray([h.vector for h in a]), np.asarray([h.vector for h in b]))
        else:
            assert all(h.vector is None for h in a)
    exact = np.asarray([r["vector"] for r in rows(300)], np.float32) @ queries[0].astype(np.float32)
    if not filter:  # FLAT is exact: the top hit is numpy's argmax, with its inner product
        assert fast[0][0].entity_id == f"E{int(np.argmax(exact)):04d}"
        assert fast[0][0].score == pytest.approx(float(exact.max()), rel=1e-5)


def test_only_this_processs_lite_is_searched_in_process(lite, tmp_path):
    from milvus_lite.server_manager import server_manager_instance

    port = server_manager_instance._servers[lite.uri][2]
    assert engine_for(f"http://127.0.0.1:{port}") is engine_for(lite.uri)  # the adapter's loopback URI
    assert engine_for(os.path.relpath(lite.uri)) is engine_for(lite.uri)  # another spelling of the same file
    assert engine_for(str(tmp_path / "other.db")) is None  # a file no server here holds
    assert engine_for("http://milvus.example:19530") is None
    assert engine_for("http://127.0.0.1:1") is None


def test_a_released_file_is_searched_again_after_reopening(tmp_path):
    """Releasing the file stops its adapter; a store reopened on it finds the new engine, not the closed one."""
    path = str(tmp_path / "milvus.db")
    first = MilvusStore(MilvusConfig(collection="ents"), path)
    first.create("ents_v1", 16)
    first.upsert("ents_v1", rows(40))
    first.swap_alias("ents_v1")
    first.close(release_file=True)
    assert engine_for(first.uri) is None
    again = MilvusStore(MilvusConfig(collection="ents"), path)
    try:
        vectors = np.asarray([r["vector"] for r in rows(40)], np.float32)
        hit = again.search(vectors[7], 1)[0][0]
        assert engine_for(again.uri) is not None and again.count() == 40
        assert hit.entity_id == f"E{int(np.argmax(vectors @ vectors[7])):04d}"
    finally:
        again.close(release_file=True)


@pytest.mark.milvus_server
def test_a_milvus_server_is_searched_over_grpc(milvus_server):
    uri, _ = milvus_server
    assert engine_for(uri) is None
