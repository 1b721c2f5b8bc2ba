"""Milvus beyond Lite. The Parquet-writing half of bulk import runs against moto's S3 server; the import runs
against the session's real Milvus 2.3 standalone server (tests/conftest.py `milvus_server`), which stores on its
local disk, so the files are written there and imported by absolute path.

An external server with MinIO instead (e.g. the Milvus docker-compose, bucket `a-bucket`):
    MILVUS_URI=http://127.0.0.1:19530 MILVUS_BUCKET=a-bucket MILVUS_S3_ENDPOINT=http://127.0.0.1:9000 \
    AWS_ACCESS_KEY_ID=minioadmin AWS_SECRET_ACCESS_KEY=minioadmin pytest -m milvus_server tests/scale
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np
import pytest

from workers.milvus_server import (
    BulkImportError,
    bulk_arrow_schema,
    bulk_import,
    bulk_table,
    import_paths,
    server_only,
    start_import,
    write_bulk_files,
)


@dataclass
class Batch:  # the fields of workers.encoder.EncodedEntities that bulk import reads
    ids: list[str]
    vectors: np.ndarray
    names: list[str]
    has_image: np.ndarray
    content_hashes: list[str]


def make_batches(n: int, dim: int, batch_size: int, seed: int = 0) -> list[Batch]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = []
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        out.append(
            Batch(
                [f"Q{i}" for i in idx],
                vectors[list(idx)],
                [f"entity {i} é" for i in idx],
                np.array([i % 3 != 0 for i in idx]),
                [f"h{i:04d}" for i in idx],
            )
        )
    return out


def _storage(endpoint: str, bucket: str, tmp_path):
    from kb_builder.config import StorageConfig
    from kb_builder.storage import Storage

    return Storage(
        StorageConfig(
            root=f"s3://{bucket}/mel",
            s3_endpoint_url=endpoint,
            s3_region="us-east-1",
            cache_dir=str(tmp_path / "cache"),
        )
    )


# -- the Parquet half, for real against moto's S3 server ---------------------------------------------------------
def test_bulk_files_on_s3_have_milvus_import_layout(s3_bucket, tmp_path):
    import pyarrow.parquet as pq

    endpoint, bucket = s3_bucket
    storage = _storage(endpoint, bucket, tmp_path)
    batches = make_batches(20, dim=16, batch_size=8)
    uris = write_bulk_files(storage, f"s3://{bucket}/mel/bulk/v1", batches, rows_per_file=7)
    assert uris == [f"s3://{bucket}/mel/bulk/v1/part-{i:05d}.parquet" for i in range(3)]
    assert sorted(storage.list(f"s3://{bucket}/mel/bulk/v1/")) == uris

    tables = [pq.read_table(storage.local_path(u)) for u in uris]
    assert [t.num_rows for t in tables] == [7, 7, 6]
    for table in tables:
        assert table.schema.equals(bulk_arrow_schema())
    ids = [i for t in tables for i in t.column("entity_id").to_pylist()]
    assert ids == [f"Q{i}" for i in range(20)]
    vectors = np.concatenate([np.stack(t.column("vector").to_numpy(zero_copy_only=False)) for t in tables])
    expected = np.concatenate([b.vectors for b in batches])
    assert vectors.dtype == np.float32 and np.array_equal(vectors, expected)
    assert [n for t in tables for n in t.column("name").to_pylist()] == [f"entity {i} é" for i in range(20)]
    assert [h for t in tables for h in t.column("has_image").to_pylist()] == [i % 3 != 0 for i in range(20)]
    assert [h for t in tables for h in t.column("content_hash").to_pylist()] == [
        f"h{i:04d}" for i in range(20)
    ]


def test_bulk_table_applies_the_collection_limits():
    long_name = "é" * 1500  # 3000 UTF-8 bytes: cut to 2048 bytes on a character boundary
    table = bulk_table(["a"], np.ones((1, 4)), [long_name], [True], ["x" * 300])
    assert table.column("name")[0].as_py() == "é" * 1024
    assert table.column("content_hash")[0].as_py() == "x" * 128
    with pytest.raises(ValueError, match="NaN/inf"):
        bulk_table(["a", "b"], np.array([[1.0, 2.0], [np.nan, 0.0]]), ["", ""], [False, False], ["", ""])
    with pytest.raises(ValueError, match="longer than 512 bytes"):
        bulk_table(["x" * 513], np.ones((1, 2)), [""], [False], [""])
    with pytest.raises(ValueError, match=r"shape \(3, 2\), expected \[2, D\]"):
        bulk_table(["a", "b"], np.ones((3, 2)), ["", ""], [False, False], ["", ""])


def test_import_paths_are_keys_inside_the_milvus_bucket():
    assert import_paths(["s3://a-bucket/mel/bulk/part-00000.parquet"], "a-bucket") == [
        "mel/bulk/part-00000.parquet"
    ]
    with pytest.raises(ValueError, match="its own bucket 'a-bucket'"):
        import_paths(["s3://other/mel/part-00000.parquet"], "a-bucket")
    with pytest.raises(ValueError, match="write the files to s3://"):
        import_paths(["/tmp/part-00000.parquet"], "a-bucket")
    assert import_paths(["/srv/milvus/part-00000.parquet"], "") == ["/srv/milvus/part-00000.parquet"]
    with pytest.raises(ValueError, match="absolute paths on its own disk"):
        import_paths(["s3://b/part-00000.parquet"], "")


def test_server_only_index_types():
    assert server_only("IVF_PQ") and server_only("diskann") and server_only("GPU_CAGRA")
    assert not server_only("FLAT") and not server_only("HNSW") and not server_only("IVF_FLAT")


def test_bulk_import_refuses_milvus_lite_with_a_clear_message(tmp_path):
    from workers.config import MilvusConfig
    from workers.milvus_store import MilvusStore

    store = MilvusStore(MilvusConfig(collection="lite_ents"), str(tmp_path / "milvus.db"))
    try:
        store.create("lite_ents_v1", 4)
        with pytest.raises(BulkImportError, match="Milvus Lite file: bulk import needs a Milvus server"):
            start_import(store, "lite_ents_v1", ["mel/bulk/part-00000.parquet"])
    finally:
        store.close(release_file=True)


# -- the server half: the session's real Milvus server ----------------------------------------------------------
@pytest.fixture
def server_env(milvus_server, tmp_path):
    """(store, storage, bucket, prefix): bucket "" and a prefix on the server's own disk for the embedded server;
    MILVUS_BUCKET and s3:// for an external server on MinIO/S3."""
    from kb_builder.config import StorageConfig
    from kb_builder.storage import Storage
    from workers.config import MilvusConfig
    from workers.milvus_store import MilvusStore

    uri, local_storage = milvus_server
    bucket = os.environ.get("MILVUS_BUCKET", "") if os.environ.get("MILVUS_URI") else ""
    root = f"s3://{bucket}/mel-tests" if bucket else f"{local_storage}/mel-tests"
    storage = Storage(
        StorageConfig(
            root=root,
            s3_endpoint_url=os.environ.get("MILVUS_S3_ENDPOINT") or None,
            cache_dir=str(tmp_path / "cache"),
        )
    )
    alias = f"mel_scale_{uuid.uuid4().hex[:8]}"
    cfg = MilvusConfig(
        uri=uri,
        token=os.environ.get("MILVUS_TOKEN", ""),
        collection=alias,
        index_type="IVF_PQ",
        index_params={"nlist": 8, "m": 4, "nbits": 8},
        search_params={"nprobe": 8},
        consistency_level="Bounded",
    )
    store = MilvusStore(cfg, uri)
    yield store, storage, bucket, root
    for name in store.list_versions():
        store.drop(name)
    store.close()


@pytest.mark.milvus_server
def test_bulk_import_into_server_with_ivf_pq(server_env):
    store, storage, bucket, root = server_env
    name = f"{store.alias}_v1"
    store.create(name, 16)  # IVF_PQ: a server-only index type
    batches = make_batches(300, dim=16, batch_size=64, seed=1)
    report = bulk_import(
        store, name, storage, f"{root}/{name}", batches, bucket, rows_per_file=128, timeout_s=600
    )
    assert len(report.files) == 3 and report.failures == []
    assert report.rows == 300
    assert store.count(name) == 300
    got = store.get(["Q0", "Q299"], collection=name)
    assert [r["entity_id"] for r in got] == ["Q0", "Q299"]
    assert [r["content_hash"] for r in got] == ["h0000", "h0299"]
    store.swap_alias(name)
    assert store.current_collection() == name
    # an incremental upsert on top of the imported rows: keyed, so no duplicates
    store.upsert(name, [{"entity_id": "Q0", "vector": np.ones(16), "content_hash": "new"}])
    store.upsert(name, [{"entity_id": "Q300", "vector": np.ones(16), "content_hash": "h0300"}])
    assert store.count(name) == 301
    assert store.content_hashes(name, ["Q0", "Q300"]) == {"Q0": "new", "Q300": "h0300"}


@pytest.mark.milvus_server
def test_bulk_import_reports_a_bad_file(server_env):
    store, storage, bucket, root = server_env
    name = f"{store.alias}_v2"
    store.create(name, 8)  # the files carry 16-d vectors: Milvus must refuse them
    with pytest.raises(BulkImportError, match="part-00000.parquet"):
        bulk_import(store, name, storage, f"{root}/{name}", make_batches(10, 16, 10), bucket, timeout_s=600)


@pytest.mark.milvus_server
def test_two_writers_at_once_and_a_reader_follows_the_alias(milvus_server):
    """Two processes' worth of clients write one server collection concurrently (overlapping ids: keyed, so the
    count is exact); a reader opened before an alias swap answers from the new collection without reopening."""
    from concurrent.futures import ThreadPoolExecutor

    from workers.config import MilvusConfig
    from workers.milvus_store import MilvusStore

    uri, _ = milvus_server
    cfg = MilvusConfig(collection=f"two_{uuid.uuid4().hex[:8]}")
    writers = [MilvusStore(cfg, uri) for _ in range(2)]
    reader = MilvusStore(cfg, uri)
    name = f"{cfg.collection}_v1"
    writers[0].create(name, 8)
    rng = np.random.default_rng(0)

    def write(k: int) -> int:
        ids = range(k * 150, k * 150 + 300)  # ids 150..299 are written by both
        rows = [{"entity_id": f"e{i}", "vector": rng.normal(size=8), "name": f"w{k}"} for i in ids]
        return sum(writers[k].upsert(name, rows[s : s + 50]) for s in range(0, 300, 50))

    try:
        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(write, [0, 1])) == [300, 300]
        assert writers[0].count(name) == 450
        writers[0].swap_alias(name)
        assert reader.count() == 450
        second = f"{cfg.collection}_v2"
        writers[1].create(second, 8)
        writers[1].upsert(second, [{"entity_id": "only", "vector": np.ones(8)}])
        writers[1].swap_alias(second)
        assert reader.count() == 1  # the same reader, no restart: the alias now names v2
        assert reader.search(np.ones((1, 8)), 5)[0][0].entity_id == "only"
    finally:
        for n in writers[0].list_versions():
            writers[0].drop(n)
        for s in [*writers, reader]:
            s.close()


@pytest.mark.milvus_server
def test_a_second_embedded_server_starts_beside_the_sessions(milvus_server, tmp_path):
    """Each embedded server has its own etcd ports (etcd's default 2380 made the second one time out), and its
    own segment size when asked (bench_ann.py --segment-mb)."""
    if os.environ.get("MILVUS_URI"):
        pytest.skip("an external server: no embedded one to share ports with")
    from workers.config import MilvusConfig
    from workers.milvus_server import start_embedded_server
    from workers.milvus_store import MilvusStore

    server, uri, _ = start_embedded_server(str(tmp_path / "second"), segment_max_mb=64)
    try:
        milvus_yaml = (tmp_path / "second" / "configs" / "milvus.yaml").read_text()
        assert "    maxSize: 64 # Maximum size of a segment in MB" in milvus_yaml
        assert "maxSize: 512 # Maximum size of a segment" not in milvus_yaml
        store = MilvusStore(MilvusConfig(uri=uri, collection="second"), uri)
        store.create("second_v1", 4)
        store.upsert("second_v1", [{"entity_id": "a", "vector": [1.0, 0.0, 0.0, 0.0]}])
        assert store.count("second_v1") == 1
        assert uri != milvus_server[0]
        store.close()
    finally:
        server.stop()
