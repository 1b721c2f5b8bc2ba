"""Helpers shared by the serving tests and the fault suite: index a collection in-process, swap the alias.
Waiting for readiness is `cluster.serve.client.wait_ready`."""

from __future__ import annotations

from pathlib import Path

from cluster.serve.client import wait_ready  # noqa: F401  (re-exported for the serving and fault tests)


def index_collection(cfg, model_dir: Path, name: str, entities: list[dict]) -> str:
    """Encode `entities` with the serving model, write a collection + its rerank feature cache (no alias swap)."""
    from workers.index_job import index_in_process

    return index_in_process(cfg.storage, cfg.encoder, cfg.milvus, cfg.milvus.uri, model_dir, name, entities)


def swap_alias(cfg, collection: str) -> str | None:
    from workers.milvus_store import MilvusStore

    store = MilvusStore(cfg.milvus, cfg.milvus.uri)
    try:
        return store.swap_alias(collection, drop_old=False)
    finally:
        store.close()
