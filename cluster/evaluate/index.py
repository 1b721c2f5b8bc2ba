"""A Milvus collection and feature cache that match one model, for the system protocol and negative mining.

The serving alias may point at an index built by another model (an older run, the untrained model), whose
vectors would not match the checkpoint under evaluation. So evaluation writes its own collection, named by the
model's fingerprint and the KB version (`workers.collections.eval_collection`), and reuses it while both stay the same. With Milvus Lite
it lives in a sibling file (`milvus_eval.db`): a Lite file is locked by one process, which may be `mel serve`.
"""

from __future__ import annotations

from pathlib import Path

from cluster.config import milvus_uri
from cluster.evaluate.features import EntityFeatures
from workers.collections import eval_collection, model_tag

SHARD_NAME = "part-00000"


def kb_version(storage, kb_name: str) -> str:
    from kb_builder.shards import read_manifest

    manifest = read_manifest(storage, kb_name)
    return str(manifest.get("kb_version") or manifest.get("build_time") or "")


def eval_milvus_uri(cfg) -> str:
    """The configured Milvus server, or a Lite file beside the serving one."""
    from workers.milvus_store import is_lite

    uri = milvus_uri(cfg)
    return str(Path(uri).with_name("milvus_eval.db")) if is_lite(uri) else uri


def ensure_eval_index(cfg, storage, model_dir: str | Path, entities: EntityFeatures):
    """(store, collection, feature_cache) holding `entities` as encoded by `model_dir`; built when missing."""
    from kb_builder.progress import Progress
    from workers.feature_cache import FeatureCache
    from workers.milvus_store import MilvusStore

    name = eval_collection(cfg.milvus.collection, kb_version(storage, cfg.kb.name), model_tag(model_dir))
    store = MilvusStore(cfg.milvus, eval_milvus_uri(cfg))
    cache = FeatureCache(storage, name)
    if store.exists(name):
        store.client.load_collection(name)  # a reopened Milvus Lite file starts with collections released
        if store.count(name) == len(entities.ids) and cache.has_shard(SHARD_NAME):
            return store, name, cache
    if store.exists(name):
        store.drop(name)
    store.create(name, int(entities.vectors.shape[1]))
    rows = [
        {"entity_id": eid, "vector": vec, "name": "", "has_image": bool(img)}
        for eid, vec, img in zip(entities.ids, entities.vectors.numpy(), entities.has_image.tolist())
    ]
    meter = Progress("eval index", len(rows), "entities", every_s=5.0)
    store.upsert(name, rows)
    store.flush(name)
    cache.write_shard(SHARD_NAME, entities.ids, {**entities.cache, "vector": entities.vectors})
    meter.update(len(rows))
    meter.done(f"Milvus collection and feature cache {name}")
    return store, name, cache
