"""Server-only Milvus paths: bulk import of Parquet files from S3, partition keys, server index types.

Milvus Lite (workers.milvus_store) takes rows through `upsert` only. For a very large KB a Milvus server can
instead import files that already sit in ITS object store (the MinIO/S3 bucket named in milvus.yaml,
`minio.bucketName`): the workers write row-based Parquet there, then one `Import` call per file lets the data
nodes load them in parallel, without pushing every vector through the gRPC proxy.

The Parquet layout is the collection schema of MilvusStore, one column per field (docs/milvus.md):

| column       | Arrow type        | Milvus field                 |
|--------------|-------------------|------------------------------|
| entity_id    | string            | VARCHAR(512), primary key    |
| vector       | list<float32>     | FLOAT_VECTOR(D)              |
| name         | string            | VARCHAR(2048)                |
| has_image    | bool              | BOOL                         |
| content_hash | string            | VARCHAR(128)                 |

The installed pymilvus ships `pymilvus.bulk_writer` (RemoteBulkWriter, `bulk_import`), but it needs the
optional extras `minio`, `azure` and `ml_dtypes`; this module writes the same Parquet with pyarrow through
`kb_builder.storage.Storage` (boto3, the configured endpoint) and calls the gRPC `Import` API that MilvusClient
already holds, so it needs no extra packages.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kb_builder.storage import Storage, is_s3, split_s3
from workers.milvus_store import (
    HASH_MAX_BYTES,
    ID_MAX_BYTES,
    NAME_MAX_BYTES,
    PARTITION_FIELD,
    PARTITION_MAX_BYTES,
    MilvusStore,
    clip_utf8,
    is_lite,
)

# Built by a Milvus server (2.4/2.5 knowhere) but not by Milvus Lite; GPU_* need the GPU image of Milvus.
SERVER_ONLY_INDEXES = {
    "IVF_PQ",
    "SCANN",
    "DISKANN",
    "HNSW_PQ",
    "HNSW_PRQ",
    "GPU_BRUTE_FORCE",
    "GPU_IVF_FLAT",
    "GPU_IVF_PQ",
    "GPU_CAGRA",
}
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
DEFAULT_ROWS_PER_FILE = 200_000  # ~650 MB of 800-d float32 vectors: Milvus' advice is files of at most ~1 GB


class BulkImportError(RuntimeError):
    """An import job failed or could not start; the message names the file and Milvus' reason."""


def server_only(index_type: str) -> bool:
    return index_type.upper() in SERVER_ONLY_INDEXES


def bulk_arrow_schema():
    """The Arrow schema of one bulk-import Parquet file (column names = collection field names)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("entity_id", pa.string()),
            ("vector", pa.list_(pa.float32())),
            ("name", pa.string()),
            ("has_image", pa.bool_()),
            ("content_hash", pa.string()),
        ]
    )


def bulk_table(
    ids: list[str], vectors, names: list[str], has_image, content_hashes: list[str], partitions=None
):
    """A pyarrow Table in the bulk-import layout, with the same checks MilvusStore.upsert makes; `partitions`
    (the milvus.partition_key values) adds the `partition` column."""
    import pyarrow as pa

    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(ids)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"vectors has shape {vectors.shape}, expected [{n}, D]")
    if not (len(names) == len(content_hashes) == len(has_image) == n):
        raise ValueError("ids, names, has_image and content_hashes must have the same length")
    bad = [i for i in ids if not i or len(str(i).encode("utf-8")) > ID_MAX_BYTES]
    if bad:
        raise ValueError(f"entity_id {str(bad[0])[:80]!r}: empty or longer than {ID_MAX_BYTES} bytes")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise ValueError(f"entity {ids[int(np.argmin(finite))]!r}: vector has NaN/inf values")
    dim = vectors.shape[1]
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    table = pa.Table.from_arrays(
        [
            pa.array([str(i) for i in ids], type=pa.string()),
            pa.ListArray.from_arrays(offsets, flat),
            pa.array([clip_utf8(str(x or ""), NAME_MAX_BYTES) for x in names], type=pa.string()),
            pa.array(np.asarray(has_image, dtype=bool), type=pa.bool_()),
            pa.array([clip_utf8(str(x or ""), HASH_MAX_BYTES) for x in content_hashes], type=pa.string()),
        ],
        schema=bulk_arrow_schema(),
    )
    if partitions is not None:
        table = table.append_column(
            PARTITION_FIELD,
            pa.array([clip_utf8(str(x or ""), PARTITION_MAX_BYTES) for x in partitions], type=pa.string()),
        )
    return table


def table_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_bulk_files(
    storage: Storage, prefix_uri: str, batches: Iterable, rows_per_file: int = DEFAULT_ROWS_PER_FILE
) -> list[str]:
    """Write `batches` (objects with ids, vectors, names, has_image, content_hashes, e.g. EncodedEntities) as
    `<prefix_uri>/part-00000.parquet`, ... of at most `rows_per_file` rows; returns the file URIs in order."""
    import pyarrow as pa

    uris: list[str] = []
    pending: list = []
    rows = 0

    def flush() -> None:
        nonlocal pending, rows
        if not pending:
            return
        uri = f"{prefix_uri.rstrip('/')}/part-{len(uris):05d}.parquet"
        storage.write_bytes(uri, table_bytes(pa.concat_tables(pending)))
        uris.append(uri)
        pending, rows = [], 0

    for batch in batches:
        table = bulk_table(
            list(batch.ids),
            batch.vectors,
            list(batch.names),
            batch.has_image,
            list(batch.content_hashes),
            getattr(batch, "partitions", None),
        )
        start = 0
        while start < table.num_rows:
            take = min(rows_per_file - rows, table.num_rows - start)
            pending.append(table.slice(start, take))
            rows += take
            start += take
            if rows >= rows_per_file:
                flush()
    flush()
    return uris


def import_paths(uris: list[str], milvus_bucket: str) -> list[str]:
    """s3://<milvus_bucket>/key -> key: Milvus resolves import files inside its own bucket only. With
    `milvus_bucket=""` the server stores on its local disk (`common.storageType: local`, as the embedded
    server does): import files are absolute paths on that disk, passed through."""
    if not milvus_bucket:
        bad = [u for u in uris if is_s3(u) or not u.startswith("/")]
        if bad:
            raise ValueError(f"{bad[0]}: a server on local storage imports absolute paths on its own disk")
        return list(uris)
    keys = []
    for uri in uris:
        if not is_s3(uri):
            raise ValueError(f"{uri}: bulk import reads from Milvus' object store; write the files to s3://")
        bucket, key = split_s3(uri)
        if bucket != milvus_bucket:
            raise ValueError(
                f"{uri}: Milvus reads imports from its own bucket {milvus_bucket!r} "
                f"(minio.bucketName in milvus.yaml), not from {bucket!r}"
            )
        keys.append(key)
    return keys


@dataclass
class ImportReport:
    collection: str
    files: list[str]
    task_ids: list[int] = field(default_factory=list)
    rows: int = 0  # rows the server reports as imported
    failures: list[str] = field(default_factory=list)  # "<file>: <reason>"
    elapsed_s: float = 0.0


def _require_server(store: MilvusStore) -> None:
    if is_lite(store.uri):
        raise BulkImportError(
            f"{store.uri} is a Milvus Lite file: bulk import needs a Milvus server "
            "(milvus.uri: http://host:19530); use MilvusStore.upsert with Milvus Lite"
        )


def start_import(store: MilvusStore, collection: str, keys: list[str], partition: str = "") -> list[int]:
    """One Import task per Parquet file (each file is a unit of parallel work for the data nodes)."""
    _require_server(store)
    conn = store.client._get_connection()  # the gRPC handler MilvusClient already authenticated
    return [int(conn.do_bulk_insert(collection, partition, [key])) for key in keys]


def wait_import(
    store: MilvusStore, report: ImportReport, timeout_s: float = 3600.0, poll_s: float = 2.0
) -> ImportReport:
    """Poll every task until it completes or fails; failures name the file and Milvus' reason."""
    from pymilvus.client.types import BulkInsertState

    conn = store.client._get_connection()
    pending = dict(zip(report.task_ids, report.files))
    deadline = time.monotonic() + timeout_s
    while pending:
        for task_id, file in list(pending.items()):
            state = conn.get_bulk_insert_state(task_id)
            if state.state == BulkInsertState.ImportCompleted:
                report.rows += int(state.row_count)
                pending.pop(task_id)
            elif state.state in (BulkInsertState.ImportFailed, BulkInsertState.ImportFailedAndCleaned):
                report.failures.append(f"{file}: {state.failed_reason}")
                pending.pop(task_id)
        if pending and time.monotonic() > deadline:
            report.failures += [f"{f}: not finished after {timeout_s:.0f} s" for f in pending.values()]
            break
        if pending:
            time.sleep(poll_s)
    return report


def wait_visible(
    store: MilvusStore, collection: str, rows: int, timeout_s: float, poll_s: float = 1.0
) -> None:
    """A completed 2.3 import is not searchable until its segments are indexed and loaded: wait for the count."""
    deadline = time.monotonic() + timeout_s
    while store.count(collection) < rows:
        if time.monotonic() > deadline:
            raise BulkImportError(f"{collection!r}: imported rows not visible after {timeout_s:.0f} s")
        time.sleep(poll_s)


def bulk_import(
    store: MilvusStore,
    collection: str,
    storage: Storage,
    prefix_uri: str,
    batches: Iterable,
    milvus_bucket: str,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    timeout_s: float = 3600.0,
) -> ImportReport:
    """Write `batches` as Parquet under `prefix_uri` (in Milvus' bucket), import them into `collection`
    (created beforehand with MilvusStore.create), wait, and return the report. Rows are keyed by entity_id:
    importing a file twice does NOT deduplicate (import is an insert), so import into a fresh collection."""
    started = time.perf_counter()
    _require_server(store)
    uris = write_bulk_files(storage, prefix_uri, batches, rows_per_file)
    report = ImportReport(collection, uris)
    report.task_ids = start_import(store, collection, import_paths(uris, milvus_bucket))
    wait_import(store, report, timeout_s)
    if report.failures:
        raise BulkImportError(
            f"bulk import into {collection!r} failed for {len(report.failures)} file(s): "
            + "; ".join(report.failures[:3])
        )
    wait_visible(store, collection, report.rows, timeout_s)
    report.elapsed_s = time.perf_counter() - started
    return report


def import_shard(store: MilvusStore, collection: str, storage: Storage, batch, name: str) -> ImportReport:
    """The index job's bulk path for one finished shard: its rows are deleted first (a redone shard must not
    duplicate: import is an insert), written as `<milvus.bulk_dir>/<collection>/<name>/part-*.parquet`,
    imported and waited for. Visibility is awaited once at the end of the job (wait_visible)."""
    bulk_dir = store.cfg.bulk_dir.rstrip("/")
    if not bulk_dir:
        raise BulkImportError(
            "milvus.ingest=bulk_import needs milvus.bulk_dir (where the server reads files)"
        )
    _require_server(store)
    bucket = split_s3(bulk_dir)[0] if is_s3(bulk_dir) else ""
    store.delete(collection, list(batch.ids))
    uris = write_bulk_files(storage, f"{bulk_dir}/{collection}/{name}", [batch])
    report = ImportReport(collection, uris)
    report.task_ids = start_import(store, collection, import_paths(uris, bucket))
    wait_import(store, report)
    if report.failures:
        raise BulkImportError(f"bulk import of shard {name} into {collection!r} failed: {report.failures[0]}")
    return report


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _edit_milvus_yaml(config, edit: Callable[[Path, str], str]) -> None:
    """After the package writes its config files, replace milvus.yaml's text by `edit(configs_dir, text)`: the
    package exposes only a few template keys, and these settings are not among them."""
    write_config = config.write_config

    def write_and_edit() -> None:
        write_config()
        configs = Path(config.base_data_dir) / "configs"
        milvus_yaml = configs / "milvus.yaml"
        milvus_yaml.write_text(edit(configs, milvus_yaml.read_text()))

    config.write_config = write_and_edit


def _segment_max_size(config, megabytes: int) -> None:
    """Set dataCoord.segment.maxSize (MB; the package's template says 512). A sealed segment is one index and one
    search task: at 1M x 800-d, 512 MB splits the collection into several (bench_ann.py, docs/milvus.md)."""
    marker = "    maxSize: 512 # Maximum size of a segment in MB"

    def edit(_configs: Path, text: str) -> str:
        if marker not in text:
            raise RuntimeError("embedded Milvus config has no dataCoord.segment.maxSize line to set")
        return text.replace(marker, f"    maxSize: {megabytes} # Maximum size of a segment in MB", 1)

    _edit_milvus_yaml(config, edit)


def _own_etcd_ports(config) -> None:
    """Give the server's embedded etcd its configured client port (`etcd_port`) and a free peer port.

    The package writes `etcd_port` into milvus.yaml's endpoints only; the embedded etcd itself listens on etcd's
    defaults (2379, peer 2380) unless `etcd.config.path` names an etcd config file. A second embedded server on
    the machine (another test session, a benchmark) then fails with "bind: address already in use" and the
    package reports it only as a 180 s start-up timeout."""

    def edit(configs: Path, text: str) -> str:
        client, peer = f"http://127.0.0.1:{config.get('etcd_port')}", f"http://127.0.0.1:{_free_port()}"
        etcd_yaml = configs / "etcd.yaml"
        etcd_yaml.write_text(
            f"name: default\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\ninitial-cluster: default={peer}\n"
        )
        return text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_yaml}\n", 1)

    _edit_milvus_yaml(config, edit)


@dataclass(frozen=True)
class ObjectStore:
    """An S3-compatible bucket that an embedded server keeps its data in, as a production server keeps it in
    MinIO or S3 (`common.storageType: minio`): moto's server in the tests. Bulk-import files then go to
    s3://<bucket>/... and the server reads them from there."""

    endpoint_url: str  # http://host:port (path-style requests, as MinIO and moto answer them)
    bucket: str  # must exist
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def _minio_section(store: ObjectStore) -> Callable[[Path, str], str]:
    """A milvus.yaml edit: storage in `store` instead of local disk (the template's `minio:` keys, set in place)."""
    from urllib.parse import urlsplit

    url = urlsplit(store.endpoint_url)
    if url.scheme not in ("http", "https") or not url.hostname or not url.port:
        raise ValueError(f"object store endpoint {store.endpoint_url!r}: expected http(s)://host:port")
    values = {
        "address": url.hostname,
        "port": str(url.port),
        "accessKeyID": store.access_key,
        "secretAccessKey": store.secret_key,
        "useSSL": "true" if url.scheme == "https" else "false",
        "bucketName": store.bucket,
        "region": f'"{store.region}"',
        "useVirtualHost": "false",
    }

    def edit(_configs: Path, text: str) -> str:
        lines, section, done = text.split("\n"), "", set()
        for i, line in enumerate(lines):
            if line and not line.startswith((" ", "#")):
                section = line.split(":", 1)[0]
            key = line.strip().split(":", 1)[0]
            if section == "minio" and line.startswith("  ") and not line.startswith("   ") and key in values:
                lines[i] = f"  {key}: {values[key]}"
                done.add(key)
        if done != set(values):
            raise RuntimeError(f"embedded Milvus config lacks minio keys {sorted(set(values) - done)}")
        text = "\n".join(lines)
        marker = "  storageType: local"
        if marker not in text:
            raise RuntimeError("embedded Milvus config has no common.storageType line to set")
        return text.replace(marker, "  storageType: minio", 1)

    return edit


def start_embedded_server(
    base_dir: str, port: int = 0, segment_max_mb: int = 0, object_store: ObjectStore | None = None
):
    """Start the embedded Milvus 2.3 standalone server (PyPI `milvus`, a dev/test dependency) with its data under
    `base_dir`, on `port` (0 = a free one), sealed segments up to `segment_max_mb` (0 = the package's 512);
    -> (server, uri, bulk_root). Stop it with server.stop().
    It stores on local disk, and bulk-import files go under that disk's folder `bulk_root` (milvus.bulk_dir);
    with `object_store` it stores in that bucket, and `bulk_root` is s3://<bucket>. Several can run on one
    machine at once (each has its own etcd ports)."""
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(str(base_dir))
    # etcd's own 2379 stays free for servers started without this (see _own_etcd_ports)
    server.config.update(proxy_port=port or _free_port(), etcd_port=_free_port())
    _own_etcd_ports(server.config)
    if segment_max_mb:
        _segment_max_size(server.config, segment_max_mb)
    if object_store is not None:
        _edit_milvus_yaml(server.config, _minio_section(object_store))
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    if object_store is not None:
        bulk_root = f"s3://{object_store.bucket}"
    else:
        bulk_root = server.config.configurable_items["local_storage_dir"][1]
    return server, f"http://127.0.0.1:{server.listen_port}", bulk_root
