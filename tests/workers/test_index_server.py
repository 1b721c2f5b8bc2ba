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


def test_index_job_bulk_imports_through_s3_into_a_server_on_s3(kb_env, ray_session, s3_server, tmp_path):
    """The production layout: a server that keeps its data in an S3 bucket (here moto's server, as MinIO or S3
    in production), `mel index` writing the import files into that bucket and the server reading them there."""
    import boto3

    from workers.milvus_server import ObjectStore, start_embedded_server

    cfg, model_dir = kb_env
    bucket = f"milvus-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    store_cfg = ObjectStore(s3_server, bucket, "testing", "testing")
    try:
        server, uri, bulk_root = start_embedded_server(str(tmp_path / "on-s3"), object_store=store_cfg)
    except Exception as exc:  # the binary cannot run here at all
        pytest.skip(f"the Milvus server binary could not start: {exc!r}")
    try:
        assert bulk_root == f"s3://{bucket}"
        milvus_yaml = (tmp_path / "on-s3" / "configs" / "milvus.yaml").read_text()
        assert "  storageType: minio" in milvus_yaml and f"  bucketName: {bucket}" in milvus_yaml
        assert f"  port: {s3_server.rsplit(':', 1)[1]}" in milvus_yaml
        storage_cfg = dataclasses.replace(cfg.storage, s3_endpoint_url=s3_server)
        milvus = dataclasses.replace(
            cfg.milvus, uri=uri, collection="ents_s3", ingest="bulk_import", bulk_dir=f"{bulk_root}/mel-bulk"
        )
        report = run_index(storage_cfg, cfg.kb, cfg.encoder, milvus, uri, model_dir, progress=False)
        entities = read_entities(Storage(cfg.storage), cfg.kb.name).to_dicts()
        store = MilvusStore(milvus, uri)
        assert report.failed == 0 and report.swapped
        assert report.total == report.encoded == len(entities) == store.count()
        got = store.client.query(
            report.collection, filter='entity_id != ""', output_fields=["entity_id"], limit=1000
        )
        assert sorted(r["entity_id"] for r in got) == sorted(e["entity_id"] for e in entities)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, MaxKeys=1000).get("Contents", [])]
        shards = {k.split("/")[2] for k in keys if k.startswith(f"mel-bulk/{report.collection}/")}
        assert len(shards) == 3  # one import folder per KB shard (60 entities, 20 a shard)
        assert any(k.startswith("files/") for k in keys)  # the server's own segments live in the bucket too

        first = entities[0]["entity_id"]  # an incremental upsert on top of the imported rows
        vector = np.ones(store.dim(report.collection))
        store.upsert(report.collection, [{"entity_id": first, "vector": vector, "content_hash": "changed"}])
        store.upsert(report.collection, [{"entity_id": "E-new", "vector": vector, "content_hash": "new"}])
        assert store.count() == len(entities) + 1
        assert store.content_hashes(report.collection, [first, "E-new"]) == {first: "changed", "E-new": "new"}
        store.close()
    finally:
        server.stop()


def test_object_store_endpoint_must_name_host_and_port():
    from workers.milvus_server import ObjectStore, _minio_section

    for bad in ("127.0.0.1:9000", "http://127.0.0.1", "ftp://host:21"):
        with pytest.raises(ValueError, match="expected http"):
            _minio_section(ObjectStore(bad, "b", "k", "s"))
