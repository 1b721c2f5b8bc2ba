"""The indexing job on real local Ray and Milvus Lite: exact counts, resume, crash recovery, no duplicates.

Tests in this module share one KB and one Milvus file (see conftest.kb_env) and run in file order.
"""

from __future__ import annotations

import numpy as np
import pytest

from cluster.config import milvus_uri
from kb_builder.shards import read_entities
from kb_builder.storage import Storage
from workers.encoder import EntityEncoder
from workers.feature_cache import FeatureCache
from workers.images import ImageLoader
from workers.index_job import ProgressFile, run_index
from workers.milvus_store import MilvusStore


def index(cfg, model_dir, **kwargs):
    return run_index(
        cfg.storage, cfg.kb, cfg.encoder, cfg.milvus, milvus_uri(cfg), model_dir, progress=False, **kwargs
    )


def all_ids(store: MilvusStore, collection: str) -> list[str]:
    rows = store.client.query(collection, filter='entity_id != ""', output_fields=["entity_id"], limit=10_000)
    return [r["entity_id"] for r in rows]


def test_full_index_resumes_survives_a_crash_and_reruns_as_noop(kb_env, ray_session, tmp_path):
    cfg, model_dir = kb_env
    storage = Storage(cfg.storage)
    entity_ids = sorted(read_entities(storage, cfg.kb.name)["entity_id"].to_list())
    assert len(entity_ids) == 60

    # 1. a staged run stops after one shard: progress recorded, alias not yet published
    first = index(cfg, model_dir, limit_shards=1)
    store = MilvusStore(cfg.milvus, milvus_uri(cfg))
    assert (first.encoded, first.shards, first.skipped_shards, first.swapped) == (20, 3, 0, False)
    assert store.count(first.collection) == 20 and store.current_collection() is None
    assert list(ProgressFile(storage, first.collection).state["shards"]) == ["part-00000"]

    # 2. the re-run resumes; its encoder actor crashes on its second batch, is restarted, the batch retried
    marker = tmp_path / "crashed"
    second = index(cfg, model_dir, crash_marker=str(marker))
    assert marker.exists(), "the fault was never injected"
    assert (second.encoded, second.skipped_shards, second.failed, second.swapped) == (40, 1, 0, True)
    assert second.collection == first.collection and store.current_collection() == first.collection
    ids = all_ids(store, second.collection)
    assert len(ids) == 60 and sorted(ids) == entity_ids  # exactly the entity table, nothing duplicated
    assert store.count("ents") == second.total == 60
    # where the time went: driver stages and the writer thread's (which overlaps the encoders)
    stages = {
        "setup",
        "pool start",
        "encode wait",
        "write wait",
        "milvus write",
        "flush",
        "features",
        "publish",
    }
    assert set(second.stages) == stages and all(v >= 0 for v in second.stages.values())
    assert "stages: setup" in second.summary()
    assert "advice" not in second.summary()  # 60 entities: Milvus Lite is the right store

    # broken images were counted and named, never fatal (shards 0 and 1 hold E00003, E00007, E00011)
    errors = first.image_errors + second.image_errors
    assert sorted(e.split(":")[0] for e in errors) == ["entity E00003", "entity E00007", "entity E00011"]
    assert any("E00011.png" in e and "no such image file" in e for e in errors)
    assert first.text_only + second.text_only == 3
    flags = {r["entity_id"]: r["has_image"] for r in store.get(["E00003", "E00011", "E00004"])}
    assert flags == {"E00003": False, "E00011": False, "E00004": True}

    # 3. a third run is a no-op: nothing re-encoded, same count; above milvus.lite_advice_entities (here
    # lowered to 50) its summary advises a Milvus server
    default_advice = cfg.milvus.lite_advice_entities
    cfg.milvus.lite_advice_entities = 50
    try:
        third = index(cfg, model_dir)
    finally:
        cfg.milvus.lite_advice_entities = default_advice
    assert (third.encoded, third.skipped_shards, third.total, third.swapped) == (0, 3, 60, False)
    assert "indexed 0 entities" in third.summary()
    assert "advice: 60 entities in a Milvus Lite file" in third.summary()
    assert "set milvus.uri to a Milvus server" in third.advice
    store.close()


def test_stored_vectors_and_features_equal_a_direct_encoding(kb_env, ray_session):
    cfg, model_dir = kb_env
    storage = Storage(cfg.storage)
    rows = read_entities(storage, cfg.kb.name).to_dicts()[:8]  # the first batch of shard 0
    encoder = EntityEncoder(
        model_dir, cfg.encoder, device="cpu", loader=ImageLoader(cfg.encoder, cfg.storage, [])
    )
    direct = encoder.encode_entities(rows)
    store = MilvusStore(cfg.milvus, milvus_uri(cfg))
    collection = store.current_collection()
    stored = store.get(direct.ids, collection=collection, with_vectors=True)
    assert [r["entity_id"] for r in stored] == direct.ids
    np.testing.assert_allclose(np.array([r["vector"] for r in stored]), direct.vectors, atol=1e-5)
    loaded = FeatureCache(storage, collection).load(direct.ids)
    assert sorted(loaded) == sorted(direct.cache)
    for key, value in direct.cache.items():
        assert loaded[key].numpy().dtype == value.dtype
        np.testing.assert_allclose(
            loaded[key].numpy().astype(np.float32), value.astype(np.float32), atol=2e-3
        )
    store.close()


def test_unknown_mode_and_missing_alias_are_clear(kb_env, tmp_path):
    cfg, model_dir = kb_env
    with pytest.raises(ValueError, match="mode='partial'"):
        index(cfg, model_dir, mode="partial")
    other = type(cfg.milvus)(**{**vars(cfg.milvus), "collection": "never_built"})
    with pytest.raises(LookupError, match="never_built"):
        run_index(cfg.storage, cfg.kb, cfg.encoder, other, milvus_uri(cfg), model_dir, mode="incremental")


def rebuild_kb_with_changes(cfg):
    """Delete E00000/E00001, change E00002/E00030, add N00001/N00002 (next to the sample sources, so image
    paths stay the same); rebuild the KB from that file."""
    import json
    from pathlib import Path

    from kb_builder.build import build_kb

    src = Path(cfg.storage.root) / "sample_src"
    rows = [json.loads(line) for line in (src / "entities.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["id"] not in ("E00000", "E00001")]
    for r in rows:
        if r["id"] in ("E00002", "E00030"):
            r["description"] += " It was renamed in 2025."
    rows += [dict(rows[5], id="N00001", name="Newone"), dict(rows[6], id="N00002", name="Newtwo")]
    (src / "entities_v2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg.kb.sample = False
    cfg.kb.entity_inputs = [str(src / "entities_v2.jsonl")]
    cfg.kb.mention_inputs = [str(src / "mentions.jsonl")]
    report = build_kb(cfg.kb, cfg.storage, progress=False)
    assert report.diff == {"added": 2, "changed": 2, "deleted": 2}
    return report


def test_incremental_update_applies_added_changed_deleted(kb_env, ray_session, tmp_path):
    from cluster.index.run import run_index_job

    cfg, model_dir = kb_env
    store = MilvusStore(cfg.milvus, milvus_uri(cfg))
    collection = store.current_collection()
    before = {
        r["entity_id"]: r["content_hash"] for r in store.get(["E00002", "E00003"], collection=collection)
    }
    rebuild_kb_with_changes(cfg)

    report = run_index_job(cfg, mode="incremental")
    assert (report.collection, report.encoded, report.deleted, report.failed) == (collection, 4, 2, 0)
    assert store.current_collection() == collection  # updated in place, no new collection
    ids = all_ids(store, collection)
    assert len(ids) == len(set(ids)) == store.count(collection) == 60
    assert {"N00001", "N00002"} <= set(ids) and not {"E00000", "E00001"} & set(ids)
    after = {
        r["entity_id"]: r["content_hash"] for r in store.get(["E00002", "E00003"], collection=collection)
    }
    assert after["E00002"] != before["E00002"] and after["E00003"] == before["E00003"]
    cache = FeatureCache(Storage(cfg.storage), collection)
    assert sorted(cache.ids()) == sorted(ids)
    assert cache.load(["N00002", "E00002"])["text_cls_moe"].shape[0] == 2
    with pytest.raises(KeyError, match="E00000"):
        cache.load(["E00000"])

    again = run_index_job(cfg, mode="incremental")  # idempotent: same diff, same rows
    assert again.encoded == 4 and store.count(collection) == 60
    assert len(cache.shard_names()) == 4  # 3 full shards + 1 delta file, overwritten by the re-run
    store.close()


def test_reindex_keeps_search_answering_until_the_alias_swaps(kb_env, ray_session):
    cfg, model_dir = kb_env
    store = MilvusStore(cfg.milvus, milvus_uri(cfg))
    old = store.current_collection()
    query = np.array([r["vector"] for r in store.get(["E00004"], collection=old, with_vectors=True)])
    # pretend the KB was rebuilt from scratch: a full build goes to a new collection named by the kb_version
    progress_uri = Storage(cfg.storage).join("kb", cfg.kb.name, "manifest.json")
    manifest = Storage(cfg.storage).read_bytes(progress_uri)
    import json

    data = json.loads(manifest)
    data["kb_version"] = "f" * 64
    Storage(cfg.storage).write_bytes(progress_uri, json.dumps(data).encode())
    try:
        partial = index(cfg, model_dir, limit_shards=1)
        assert partial.collection != old and not partial.swapped
        assert store.current_collection() == old  # serving still reads the complete old collection
        assert store.search(query, 1)[0][0].entity_id == "E00004" and store.count("ents") == 60
        done = index(cfg, model_dir)
        assert done.swapped and store.current_collection() == done.collection
        assert store.search(query, 1)[0][0].entity_id == "E00004" and store.count("ents") == 60
        assert old not in store.list_versions()  # the old collection was dropped after the swap
        storage = Storage(cfg.storage)
        assert (
            storage.list(storage.join("features", old)) == []
            and storage.list(storage.join("index", old)) == []
        )
    finally:
        Storage(cfg.storage).write_bytes(progress_uri, manifest)
    store.close()


def test_a_model_of_another_dimension_is_refused_by_the_existing_collection(kb_env, tmp_path):
    from mmoe.config import TinyCLIPConfig
    from mmoe.pretrained import build_tiny_model, save_pretrained
    from workers.milvus_store import DimensionMismatchError

    cfg, model_dir = kb_env
    tiny = TinyCLIPConfig(hidden_size=32, projection_dim=32, intermediate_size=64)
    model, processor = build_tiny_model(tiny, cfg.mmoe, ["a tiny corpus"], seed=1)
    save_pretrained(tmp_path / "other", model, processor)
    with pytest.raises(DimensionMismatchError, match=r"stores 352-d vectors but the model produces 320-d"):
        index(cfg, tmp_path / "other", mode="incremental")
