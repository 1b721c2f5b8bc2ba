"""`mel index` on the session's real Milvus 2.3 server: bulk import (milvus.ingest=bulk_import) with a partition
key from the KB's `attributes.type`; exact counts, ids equal to the entity table, an upsert on top, and
partition-filtered searches that never leave their partition."""

from __future__ import annotations

import dataclasses
import json
import uuid

import numpy as np
import pytest

from kb_builder.shards import read_entities
from kb_builder.storage import Storage
from workers.index_job import run_index
from workers.milvus_store import PARTITION_FIELD, MilvusStore

pytestmark = [pytest.mark.milvus_server, pytest.mark.slow]


def test_index_job_bulk_imports_with_a_partition_key(kb_env, ray_session, milvus_server):
    cfg, model_dir = kb_env
    uri, local_storage = milvus_server
    if not local_storage:
        pytest.skip("MILVUS_URI names an external server: set MILVUS_LOCAL_STORAGE or use its s3:// bucket")
    milvus = dataclasses.replace(
        cfg.milvus,
        uri=uri,
        collection=f"bulk{uuid.uuid4().hex[:8]}",
        ingest="bulk_import",
        bulk_dir=f"{local_storage}/mel-bulk",
        partition_key="type",
    )
    report = run_index(cfg.storage, cfg.kb, cfg.encoder, milvus, uri, model_dir, progress=False)
    entities = read_entities(Storage(cfg.storage), cfg.kb.name).to_dicts()
    store = MilvusStore(milvus, uri)
    try:
        assert report.failed == 0 and report.swapped
        assert report.total == report.encoded == len(entities) == store.count()
        got = store.client.query(
            report.collection, filter='entity_id != ""', output_fields=["entity_id"], limit=1000
        )
        assert sorted(r["entity_id"] for r in got) == sorted(e["entity_id"] for e in entities)

        types = {e["entity_id"]: json.loads(e["attributes"])["type"] for e in entities}
        assert len(set(types.values())) > 1
        queries = np.random.default_rng(0).normal(size=(3, store.dim(report.collection)))
        for kind in sorted(set(types.values())):
            hits = store.search(queries, top_k=100, filter=f'{PARTITION_FIELD} == "{kind}"')
            assert [sorted({types[h.entity_id] for h in q}) for q in hits] == [[kind]] * 3
            assert [len(q) for q in hits] == [sum(t == kind for t in types.values())] * 3

        first = entities[0]["entity_id"]  # an incremental upsert on top of the imported rows
        row = {"entity_id": first, "vector": queries[0], "content_hash": "changed", PARTITION_FIELD: "other"}
        store.upsert(report.collection, [row, {**row, "entity_id": "E-new"}])
        assert store.count() == len(entities) + 1
        assert store.content_hashes(report.collection, [first]) == {first: "changed"}
        hits = store.search(queries[:1], 10, filter=f'{PARTITION_FIELD} == "other"')[0]
        assert sorted(h.entity_id for h in hits) == sorted([first, "E-new"])
    finally:
        for name in store.list_versions():
            store.drop(name)
        store.close()
