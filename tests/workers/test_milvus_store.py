"""MilvusStore on a real Milvus Lite file AND a real Milvus 2.3 server (the session's `milvus_server`): exact
counts, upsert without duplicates, alias swap, filters, dim errors."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from workers.config import MilvusConfig
from workers.milvus_store import DimensionMismatchError, MilvusStore, clip_utf8, lite_index_types


def rows(ids, dim=8, seed=0, name="e"):
    rng = np.random.default_rng(seed)
    return [
        {
            "entity_id": i,
            "vector": rng.normal(size=dim),
            "name": f"{name}{i}",
            "has_image": True,
            "content_hash": f"h{i}",
        }
        for i in ids
    ]


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.milvus_server)])
def store(request, tmp_path):
    """The same tests on Milvus Lite and on the server; on the server each test gets its own alias (the
    collection names below are rewritten with `store.alias`), dropped afterwards."""
    if request.param == "lite":
        s = MilvusStore(MilvusConfig(collection="ents"), str(tmp_path / "milvus.db"))
        yield s
        s.close(release_file=True)
        return
    uri, _ = request.getfixturevalue("milvus_server")
    s = MilvusStore(MilvusConfig(collection=f"ents{uuid.uuid4().hex[:8]}"), uri)
    yield s
    for name in s.list_versions():
        s.drop(name)
    s.close()


def v(store, tag: str) -> str:
    """The versioned collection `<alias>_<tag>` of this store."""
    return f"{store.alias}_{tag}"


def test_upsert_is_keyed_and_count_exact(store):
    store.create(v(store, "v1"), 8)
    store.upsert(v(store, "v1"), rows([f"q{i}" for i in range(30)]))
    store.upsert(v(store, "v1"), rows([f"q{i}" for i in range(10, 40)], seed=1, name="new"))
    assert store.count(v(store, "v1")) == 40
    got = store.get(["q15", "q5", "nope"], collection=v(store, "v1"))
    assert [r["entity_id"] for r in got] == ["q15", "q5"]
    assert got[0]["name"] == "newq15" and got[1]["name"] == "eq5"
    store.delete(v(store, "v1"), ["q0", "q1", "missing"])
    assert store.count(v(store, "v1")) == 38


def test_search_ranks_by_inner_product(store):
    store.create(v(store, "v1"), 4)
    vecs = np.eye(4, dtype=np.float32)
    store.upsert(
        v(store, "v1"), [{"entity_id": f"e{i}", "vector": vec, "name": f"n{i}"} for i, vec in enumerate(vecs)]
    )
    store.swap_alias(v(store, "v1"))
    hits = store.search(np.array([[0.1, 0.0, 0.9, 0.2]]), top_k=2)
    assert [h.entity_id for h in hits[0]] == ["e2", "e3"]
    assert hits[0][0].name == "n2" and hits[0][0].score == pytest.approx(0.9, abs=1e-5)
    tied = store.search(vecs[:1], 3, filter='entity_id in ["e1", "e3"]')[0]  # both score 0: any order
    assert sorted(h.entity_id for h in tied) == ["e1", "e3"]


def test_alias_swap_drops_old_and_keeps_answering(store):
    store.create(v(store, "v1"), 4)
    store.upsert(v(store, "v1"), [{"entity_id": "old", "vector": [1, 0, 0, 0], "name": "old"}])
    assert store.current_collection() is None
    store.swap_alias(v(store, "v1"))
    store.create(v(store, "v2"), 4)
    store.upsert(v(store, "v2"), [{"entity_id": "new", "vector": [1, 0, 0, 0], "name": "new"}])
    assert store.search([[1, 0, 0, 0]], 1)[0][0].entity_id == "old"  # alias still on v1 while v2 fills
    assert store.swap_alias(v(store, "v2")) == v(store, "v1")
    assert store.current_collection() == v(store, "v2")
    assert store.search([[1, 0, 0, 0]], 1)[0][0].entity_id == "new"
    assert store.list_versions() == [v(store, "v2")]


def test_dimension_mismatch_is_a_clear_error(store):
    store.create(v(store, "v1"), 8)
    with pytest.raises(DimensionMismatchError, match=rf"'{v(store, 'v1')}' stores 8-d vectors .* 16-d"):
        store.create(v(store, "v1"), 16)
    with pytest.raises(DimensionMismatchError, match="entity 'bad'"):
        store.upsert(v(store, "v1"), [{"entity_id": "bad", "vector": np.zeros(5)}])
    assert store.count(v(store, "v1")) == 0


def test_names_are_clipped_on_utf8_boundaries(store):
    store.create(v(store, "v1"), 2)
    long_name = "é" * 3000  # 6000 bytes
    store.upsert(v(store, "v1"), [{"entity_id": "x", "vector": [1, 0], "name": long_name}])
    assert store.get(["x"], collection=v(store, "v1"))[0]["name"] == "é" * 1024
    assert clip_utf8("aé", 2) == "a"


def test_unsupported_index_falls_back_to_flat(tmp_path, caplog):
    cfg = MilvusConfig(collection="ents", index_type="DISKANN")
    store = MilvusStore(cfg, str(tmp_path / "m.db"))
    assert store.index_spec() == ("FLAT", {})
    assert "DISKANN" in caplog.text
    assert {"FLAT", "AUTOINDEX"} <= lite_index_types()
    store.close(release_file=True)


def test_a_released_collection_is_loaded_before_reads(tmp_path):
    """A new process finds collections released; reads must load them first (simulated with release)."""
    path = str(tmp_path / "m.db")
    store = MilvusStore(MilvusConfig(collection="ents"), path)
    store.create("ents_v1", 4)
    store.upsert("ents_v1", rows(["a", "b"], dim=4))
    store.swap_alias("ents_v1")
    store.client.release_collection("ents_v1")
    store.upsert("ents_v1", rows(["b", "c"], dim=4, seed=3))  # writes work while released
    again = MilvusStore(MilvusConfig(collection="ents"), path)
    assert again.count("ents") == 3
    assert [h.entity_id for h in again.search(np.eye(4)[:1], 3)[0]] != []
    assert [r["entity_id"] for r in again.get(["c", "a"])] == ["c", "a"]
    store.close(release_file=True)


def test_ids_with_quotes_backslashes_and_unicode_are_got_searched_and_deleted(store):
    """Every expression goes through `milvus_literal`; pymilvus' own `get(ids=...)` broke on `O'Brien`."""
    from workers.milvus_store import in_expression

    odd = ["O'Brien", "ends\\", 'say "hi"', "Café", "😀", "line\nbreak", "nul\x00", "\\n literal"]
    store.create("ents_v1", 8)
    store.upsert("ents_v1", rows(odd))
    assert [r["entity_id"] for r in store.get(odd, collection="ents_v1")] == odd
    for entity_id in odd:
        only = store.search(
            np.ones(8), 10, filter=in_expression("entity_id", [entity_id]), collection="ents_v1"
        )
        assert [h.entity_id for h in only[0]] == [entity_id]
    store.delete("ents_v1", odd[:4])
    assert store.count("ents_v1") == len(odd) - 4


def test_partition_key_filter_never_crosses_partitions(store):
    """milvus.partition_key: the KB column's value goes to the `partition` field, a Milvus partition key; a
    filter on it returns entities of that partition only, even when top_k exceeds the partition's size."""
    from workers.milvus_store import PARTITION_FIELD

    keyed = MilvusStore(MilvusConfig(collection=store.alias, partition_key="type"), store.uri)
    name = v(store, "v1")
    keyed.create(name, 8)
    kinds = ["person", "place", "work"]
    data = rows([f"e{i}" for i in range(60)])
    for i, row in enumerate(data):
        row[PARTITION_FIELD] = kinds[i % 3]
    keyed.upsert(name, data)
    assert keyed.count(name) == 60
    queries = np.random.default_rng(5).normal(size=(4, 8))
    for kind in kinds:
        hits = keyed.search(queries, top_k=50, filter=f'{PARTITION_FIELD} == "{kind}"', collection=name)
        want = {f"e{i}" for i in range(60) if kinds[i % 3] == kind}
        assert [sorted({h.entity_id for h in q} - want) for q in hits] == [[]] * 4  # nothing from elsewhere
        assert [len(q) for q in hits] == [20] * 4
    assert keyed.search(queries[:1], 10, filter=f'{PARTITION_FIELD} == "none"', collection=name) == [[]]
    moved = rows(["e0"], seed=9)[0] | {PARTITION_FIELD: "place"}  # e0 was a person: re-keyed, not duplicated
    keyed.upsert(name, [moved])
    assert keyed.count(name) == 60
    place = keyed.search(queries[:1], 50, filter=f'{PARTITION_FIELD} == "place"', collection=name)[0]
    person = keyed.search(queries[:1], 50, filter=f'{PARTITION_FIELD} == "person"', collection=name)[0]
    assert "e0" in {h.entity_id for h in place} and "e0" not in {h.entity_id for h in person}
    assert (len(place), len(person)) == (21, 19)
    keyed.close()


def test_lite_advice_only_for_a_large_kb_in_a_lite_file():
    from workers.milvus_store import lite_advice

    advice = lite_advice("/data/milvus.db", 110_000, 10_000)
    assert (
        advice.startswith("110,000 entities in a Milvus Lite file") and "milvus.index_type to HNSW" in advice
    )
    assert lite_advice("/data/milvus.db", 10_000, 10_000) is None  # at the threshold: still Lite's size
    assert lite_advice("http://milvus:19530", 5_000_000, 10_000) is None  # already a server
    assert lite_advice("/data/milvus.db", 5_000_000, 0) is None  # 0 turns the advice off
