"""Helpers shared by the serving tests, the fault suite and bench/bench_serve.py: index a collection in-process,
swap the alias, wait for readiness."""

from __future__ import annotations

import time
from pathlib import Path

import httpx


def index_collection(cfg, model_dir: Path, name: str, entities: list[dict]) -> str:
    """Encode `entities` with the serving model, write a collection + its rerank feature cache (no alias swap)."""
    from kb_builder.storage import Storage
    from workers.encoder import EntityEncoder
    from workers.feature_cache import FeatureCache
    from workers.images import ImageLoader
    from workers.milvus_store import MilvusStore

    loader = ImageLoader(cfg.encoder, cfg.storage, allowed_roots=[])
    encoded = EntityEncoder(model_dir, cfg.encoder, device="cpu", loader=loader).encode_entities(entities)
    store = MilvusStore(cfg.milvus, cfg.milvus.uri)
    store.create(name, encoded.vectors.shape[1])
    store.upsert(
        name,
        [
            {"entity_id": eid, "vector": vec, "name": nm, "has_image": bool(img), "content_hash": ""}
            for eid, vec, nm, img in zip(encoded.ids, encoded.vectors, encoded.names, encoded.has_image)
        ],
    )
    store.flush(name)
    FeatureCache(Storage(cfg.storage), name).write_shard("part-00000", encoded.ids, encoded.cache)
    store.close()
    return name


def swap_alias(cfg, collection: str) -> str | None:
    from workers.milvus_store import MilvusStore

    store = MilvusStore(cfg.milvus, cfg.milvus.uri)
    try:
        return store.swap_alias(collection, drop_old=False)
    finally:
        store.close()


def wait_ready(url: str, attempts: int = 120) -> int:
    status = 0
    for _ in range(attempts):
        status = httpx.get(f"{url}/readyz", timeout=30).status_code
        if status == 200:
            return status
        time.sleep(0.5)
    return status
