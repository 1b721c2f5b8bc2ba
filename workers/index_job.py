"""The indexing job: KB entity shards -> vectors in Milvus + rerank features, resumable and exact.

Full mode builds a NEW collection `<alias>_v<kb_version[:12]>_<model hash[:8]>` shard by shard, records each
shard in `<root>/index/<collection>/progress.json` only after its Milvus upsert is flushed and its feature file
is written, then points the alias at it (searches keep using the old collection until then). Re-running
skips finished shards; upserts keyed by entity_id make a half-written shard safe to redo, so the final count
equals the number of entities exactly. Incremental mode applies kb_builder's diff.json to the CURRENT
collection: upsert added/changed, delete deleted, and a `delta-*` feature file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kb_builder.config import KBConfig, StorageConfig
from kb_builder.image_paths import kb_image_roots
from kb_builder.progress import Progress
from kb_builder.shards import entity_shard_uris, read_diff, read_manifest, read_shard
from kb_builder.storage import Storage
from workers.collections import index_collection, model_tag
from workers.config import EncoderConfig, MilvusConfig
from workers.encoder import EncodedEntities, EntityEncoder, concat_encoded
from workers.feature_cache import FeatureCache
from workers.images import ImageLoader
from workers.milvus_store import ID_MAX_BYTES, PARTITION_FIELD, MilvusStore, lite_advice
from workers.ray_pool import EncodingPool


@dataclass
class IndexReport:
    mode: str
    collection: str
    alias: str
    encoded: int = 0  # entities encoded and written by this run
    total: int = 0  # rows in the collection at the end (exact count)
    text_only: int = 0  # written without an image (none given, or it failed to load)
    image_errors: list[str] = field(default_factory=list)  # missing/corrupt/rejected images, naming the uri
    failures: list[str] = field(default_factory=list)  # entities that could not be encoded or written
    deleted: int = 0
    shards: int = 0
    skipped_shards: int = 0  # already complete in an earlier run
    swapped: bool = False  # the alias now points at `collection`
    elapsed_s: float = 0.0
    device: str = "CPU"
    model_dir: str = ""
    # Wall seconds per stage. Driver: setup, pool start, encode wait (blocked on the encoders), write wait
    # (blocked on the writer), publish. Writer thread, overlapping the encoders: milvus write, flush, features.
    stages: dict[str, float] = field(default_factory=dict)
    advice: str = ""  # e.g. a large KB in a Milvus Lite file (milvus_store.lite_advice)

    def lap(self, stage: str, since: float) -> float:
        """Add the seconds since `since` to `stage`; -> now (the next lap's start)."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - since
        return now

    @property
    def indexed_total(self) -> int:
        return self.total

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def entities_per_s(self) -> float:
        return self.encoded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"index ({self.mode}) -> {self.collection} (alias {self.alias}{', swapped' if self.swapped else ''})",
            f"  indexed {self.encoded} entities this run, collection holds {self.total}; deleted {self.deleted}",
            f"  text-only {self.text_only} ({len(self.image_errors)} image errors), failed {self.failed}",
            f"  shards {self.shards} ({self.skipped_shards} already done), {self.elapsed_s:.1f} s, "
            f"{self.entities_per_s:.1f} entities/s on {self.device}",
        ]
        if self.stages:
            lines.append("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.stages.items()))
        if self.advice:
            lines.append(f"  advice: {self.advice}")
        lines += [f"  image error: {e}" for e in self.image_errors[:5]]
        lines += [f"  failed: {e}" for e in self.failures[:5]]
        return "\n".join(lines)


class ProgressFile:
    """`<root>/index/<collection>/progress.json`: {"shards": {name: {...counts, "done": true}}, "complete": bool}."""

    def __init__(self, storage: Storage, collection: str):
        self.storage = storage
        self.uri = storage.join("index", collection, "progress.json")
        self.state = json.loads(storage.read_bytes(self.uri)) if storage.exists(self.uri) else {"shards": {}}

    def done(self, shard: str) -> bool:
        return bool(self.state["shards"].get(shard, {}).get("done"))

    def save(self, **fields) -> None:
        self.state.update(fields)
        self.storage.write_bytes(self.uri, json.dumps(self.state, indent=2).encode())

    def mark(self, shard: str, **counts) -> None:
        self.state["shards"][shard] = {**counts, "done": True}
        self.save()


def retrieval_dim(model_dir: Path) -> int:
    """D = CLIP projection_dim + 3 * mmoe.dim, read from config.json (no model load in the driver)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config["clip"]["projection_dim"]) + 3 * int(config["mmoe"]["dim"])


def allowed_image_roots(storage: Storage, kb_cfg: KBConfig) -> list[str]:
    """Folders of the local KB inputs; the storage root is added by the loader (see ImageLoader.for_kb)."""
    return kb_image_roots(kb_cfg)


def write_batch(store: MilvusStore, collection: str, enc: EncodedEntities, partitions=None) -> None:
    rows = [
        {"entity_id": i, "vector": v, "name": n, "has_image": bool(h), "content_hash": c}
        for i, v, n, h, c in zip(enc.ids, enc.vectors, enc.names, enc.has_image, enc.content_hashes)
    ]
    for row, value in zip(rows, partitions or []):
        row[PARTITION_FIELD] = value
    store.upsert(collection, rows)


def index_in_process(
    storage_cfg, encoder_cfg, milvus_cfg, uri: str, model_dir: Path, collection: str, entities: list[dict]
) -> str:
    """Encode `entities` in this process (no Ray) into a new `collection` + its rerank feature file; no alias
    swap. For small KBs, tests and benchmarks; `run_index` is the resumable, sharded path."""
    loader = ImageLoader(encoder_cfg, storage_cfg, allowed_roots=[])
    encoded = EntityEncoder(model_dir, encoder_cfg, device="cpu", loader=loader).encode_entities(entities)
    store = MilvusStore(milvus_cfg, uri)
    try:
        store.create(collection, encoded.vectors.shape[1])
        write_batch(store, collection, encoded)
        store.flush(collection)
    finally:
        store.close()
    FeatureCache(Storage(storage_cfg), collection).write_shard("part-00000", encoded.ids, encoded.cache)
    return collection


def partition_value(row: dict, column: str) -> str:
    """milvus.partition_key names a KB column (e.g. source) or a key of the `attributes` JSON (e.g. type)."""
    if column in row:
        return str(row[column] or "")
    try:
        attributes = json.loads(row.get("attributes") or "{}")
    except ValueError:
        return ""
    return str(attributes.get(column, "")) if isinstance(attributes, dict) else ""


def _batches(work: list[tuple[str, object]], batch_size: int, storage: Storage, column: str = "", keys=None):
    """(shard name, batch index), rows; a shard's Parquet is read only when its turn comes (bounded memory).
    With `column` (milvus.partition_key) each row's value of it is recorded in `keys` by entity_id."""
    for name, source in work:
        rows = read_shard(storage, source).to_dicts() if isinstance(source, str) else source
        if column:
            keys.update((r["entity_id"], partition_value(r, column)) for r in rows)
        for index, start in enumerate(range(0, len(rows), batch_size)):
            yield (name, index), rows[start : start + batch_size]


def run_index(
    storage_cfg: StorageConfig,
    kb_cfg: KBConfig,
    encoder_cfg: EncoderConfig,
    milvus_cfg: MilvusConfig,
    milvus_uri: str,
    model_dir: str | Path,
    mode: str = "full",
    progress: bool = True,
    limit_shards: int | None = None,
    crash_marker: str = "",
) -> IndexReport:
    """Index the KB (Ray must be initialised). `limit_shards` stops after that many new shards (staged runs);
    `crash_marker` is the tests' fault-injection hook (see EncoderWorker)."""
    if mode not in ("full", "incremental"):
        raise ValueError(f"mode={mode!r}: expected full | incremental")
    if milvus_cfg.ingest not in ("upsert", "bulk_import"):
        raise ValueError(f"milvus.ingest={milvus_cfg.ingest!r}: expected upsert | bulk_import")
    started = time.perf_counter()
    storage = Storage(storage_cfg)
    manifest = read_manifest(storage, kb_cfg.name)
    tag = model_tag(model_dir)
    dim = retrieval_dim(Path(model_dir))
    store = MilvusStore(milvus_cfg, milvus_uri)
    if mode == "incremental":
        collection = store.current_collection()
        if collection is None:
            raise LookupError(f"no collection behind alias {milvus_cfg.collection!r}: run a full index first")
        store.check_dim(collection, dim)
        if not collection.endswith(tag):
            raise ValueError(
                f"collection {collection!r} was built with another model than {model_dir}: "
                "run a full index (it builds a new collection)"
            )
    else:
        collection = index_collection(milvus_cfg.collection, manifest["kb_version"], tag)
    report = IndexReport(
        mode, collection, milvus_cfg.collection, device="none (nothing to encode)", model_dir=str(model_dir)
    )
    progress_file = ProgressFile(storage, collection)
    if mode == "full" and not store.exists(collection) and progress_file.state["shards"]:
        progress_file.save(
            shards={}, complete=False
        )  # the collection was dropped since: its progress is void
    cache = FeatureCache(storage, collection)

    # 1. what to encode: pending full shards (name, uri, rows), or the diff's added + changed rows
    deleted: list[str] = []
    if mode == "full":
        uris = entity_shard_uris(storage, kb_cfg.name)
        names = [u.rsplit("/", 1)[-1].removesuffix(".parquet") for u in uris]
        counts = [int(s["rows"]) for s in manifest["entities"]["shards"]]
        report.shards = len(names)
        todo = [(n, u, c) for n, u, c in zip(names, uris, counts) if not progress_file.done(n)]
        report.skipped_shards = len(names) - len(todo)
        todo = todo[:limit_shards] if limit_shards is not None else todo
        store.create(collection, dim)
        work = [(n, u) for n, u, _ in todo]
        sizes = {n: c for n, _, c in todo}
    else:
        diff = read_diff(storage, kb_cfg.name)
        wanted = set(diff.get("added", [])) | set(diff.get("changed", []))
        stamp = "".join(ch for ch in manifest["build_time"] if ch.isdigit())[:14]
        delta = (
            f"delta-{stamp}-{manifest['kb_version'][:8]}"  # same KB build, same file: re-runs overwrite it
        )
        rows = [
            r
            for u in entity_shard_uris(storage, kb_cfg.name)
            for r in read_shard(storage, u).to_dicts()
            if r["entity_id"] in wanted
        ]
        work, sizes, deleted = [(delta, rows)], {delta: len(rows)}, list(diff.get("deleted", []))
        report.shards = 1

    # 2. encode on Ray actors; 3. write each finished shard (Milvus flush + feature file, then progress) on
    # one writer thread, so the encoders keep working while a shard goes into Milvus
    clock = report.lap("setup", started)
    meter = Progress("index", sum(sizes.values()), "entities", enabled=progress and bool(work), every_s=5.0)
    expected = {name: -(-size // encoder_cfg.batch_size) for name, size in sizes.items()}
    results: dict[str, dict[int, EncodedEntities]] = {name: {} for name in sizes}
    keys: dict[str, object] = {}  # entity_id -> its partition-key value (milvus.partition_key)
    bulk = mode == "full" and milvus_cfg.ingest == "bulk_import"  # incremental runs always upsert
    writer = ShardWrites(store, collection, cache, progress_file, report, dim, deleted, keys, storage)
    try:
        if any(sizes.values()):
            pool = EncodingPool(
                model_dir, encoder_cfg, storage_cfg, allowed_image_roots(storage, kb_cfg), crash_marker
            )
            report.device = pool.device
            clock = report.lap("pool start", clock)
            try:
                batches = _batches(work, encoder_cfg.batch_size, storage, milvus_cfg.partition_key, keys)
                for res in pool.run(batches):
                    clock = report.lap("encode wait", clock)
                    name, index = res.key
                    if res.encoded is None:
                        res.encoded = concat_encoded([], dim)
                        res.encoded.failed = [f"{i}: {res.error}" for i in res.ids]
                    results[name][index] = res.encoded
                    meter.update(len(res.encoded.ids) + len(res.encoded.failed))
                    if len(results[name]) == expected[name]:
                        writer.submit(name, results.pop(name), bulk)
                        clock = report.lap("write wait", clock)
            finally:
                pool.close()
        for name in list(results):  # shards without rows (an incremental run that only deletes)
            writer.submit(name, {}, False)
        writer.drain()
    finally:
        writer.close()
    clock = report.lap("write wait", clock)
    meter.close()

    # 4. exact count, then publish: point the alias at a finished full build
    if bulk:  # imported segments become visible once indexed and loaded
        from workers.milvus_server import wait_visible

        wait_visible(
            store, collection, sum(s["rows"] for s in progress_file.state["shards"].values()), 3600.0
        )
    report.total = store.count(collection)
    report.advice = lite_advice(milvus_uri, report.total, milvus_cfg.lite_advice_entities) or ""
    if mode == "full" and all(progress_file.done(n) for n in names):
        progress_file.save(complete=True, kb_version=manifest["kb_version"], model_hash=tag, dim=dim)
        before = store.current_collection()
        dropped = store.swap_alias(collection)
        report.swapped = before != collection
        if dropped:  # the old collection is gone: so are its progress and rerank features
            for uri in storage.list(storage.join("index", dropped)) + storage.list(
                storage.join("features", dropped)
            ):
                storage.delete(uri)
    report.lap("publish", clock)
    report.elapsed_s = time.perf_counter() - started
    store.close()
    return report


class ShardWrites:
    """Finished shards -> `_finish_shard` on one thread, in order, while the driver keeps the encoders fed.

    At most `MAX_PENDING` shards wait for Milvus (each holds its vectors and rerank features in memory); a
    failed write is raised in the driver at the next shard or at `drain`. The thread alone uses the store,
    the feature cache and the progress file until `drain` returns."""

    MAX_PENDING = 2

    def __init__(self, store, collection, cache, progress_file, report, dim, deleted, keys, storage):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.args = (store, collection, cache, progress_file, report, dim, deleted, keys)
        self.storage = storage
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-writer")
        self.pending = deque()

    def submit(self, name: str, parts: dict, bulk: bool) -> None:
        self.pending.append(
            self.pool.submit(_finish_shard, name, parts, *self.args, bulk=bulk, storage=self.storage)
        )
        while self.pending and (len(self.pending) > self.MAX_PENDING or self.pending[0].done()):
            self.pending.popleft().result()  # re-raises a failed write

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        """After an error elsewhere: let the running write finish (never half a shard), drop the queued."""
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


def _finish_shard(
    name, parts, store, collection, cache, progress_file, report, dim, deleted, keys, bulk=False, storage=None
) -> None:
    enc = concat_encoded([parts[i] for i in sorted(parts)], dim)
    bad = [k for k, i in enumerate(enc.ids) if len(i.encode("utf-8")) > ID_MAX_BYTES]
    if bad:  # Milvus would reject the whole upsert: drop these rows and name them
        enc.failed += [f"{enc.ids[k][:80]}...: entity_id longer than {ID_MAX_BYTES} bytes" for k in bad]
        keep = np.setdiff1d(np.arange(len(enc.ids)), bad)
        enc = EncodedEntities(
            [enc.ids[k] for k in keep],
            enc.vectors[keep],
            {k: v[keep] for k, v in enc.cache.items()},
            enc.has_image[keep],
            enc.image_errors,
            [enc.names[k] for k in keep],
            [enc.content_hashes[k] for k in keep],
            enc.failed,
        )
    partitions = [keys.pop(i, "") for i in enc.ids] if store.cfg.partition_key else None
    clock = time.perf_counter()
    if bulk and enc.ids:
        from workers.milvus_server import import_shard

        enc.partitions = partitions
        import_shard(store, collection, storage, enc, name)
    else:
        write_batch(store, collection, enc, partitions)
    store.delete(collection, deleted)
    clock = report.lap("milvus write", clock)
    store.flush(collection)
    clock = report.lap("flush", clock)
    cache.write_shard(name, enc.ids, enc.cache, deleted=deleted)
    report.lap("features", clock)
    text_only = int((~enc.has_image).sum())
    report.encoded += len(enc.ids)
    report.text_only += text_only
    report.deleted += len(deleted)
    report.image_errors += enc.image_errors
    report.failures += enc.failed
    progress_file.mark(
        name,
        rows=len(enc.ids),
        text_only=text_only,
        image_errors=len(enc.image_errors),
        failed=len(enc.failed),
        deleted=len(deleted),
    )
