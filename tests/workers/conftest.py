"""A small sample KB (60 entities in 3 shards) with broken images, shared by the indexing tests of a module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def kb_env(tmp_path_factory):
    """(cfg, model_dir): a built KB whose images E00003/E00007 are corrupt and E00011 is missing."""
    from cluster.config import load_config
    from kb_builder.build import build_kb
    from workers.model_store import resolve_model_dir

    tmp = tmp_path_factory.mktemp("index")
    cfg = load_config(
        overrides=[
            f"storage.root={tmp / 'data'}",
            f"storage.cache_dir={tmp / 'cache'}",
            "kb.sample_entities=60",
            "kb.sample_mentions=60",
            "kb.rows_per_shard=20",
            "encoder.batch_size=8",
            "milvus.collection=ents",
        ]
    )
    build_kb(cfg.kb, cfg.storage, progress=False)
    images = tmp / "data" / "sample_src" / "images"
    (images / "E00003.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (images / "E00007.png").write_bytes((images / "E00008.png").read_bytes()[:60])
    (images / "E00011.png").unlink()
    model_dir = resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe)
    return cfg, model_dir
