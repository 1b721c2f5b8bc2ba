"""Fixtures for the serving tests: one sample KB indexed once, served once on real Ray Serve for this package.

Package scope, not session: the app holds CPUs that Ray Train and the encoder pool need in later tests.

Cheap on purpose: 120 entities, the untrained tiny model (`models/init`), entities encoded in-process (no
encoder actors), Milvus Lite opened by this process and shared with the Serve replicas over its local gRPC
URI (what `cluster.serve.app.start_serve` does), so a test can build a second collection and swap the alias while
the app is running.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cluster.serving.helpers import index_collection, swap_alias, wait_ready
from tests.fixtures import free_port


@dataclass
class ServedKB:
    cfg: object  # MELConfig, milvus.uri pointing at this process's Milvus Lite server
    url: str
    model_dir: Path
    collection: str
    entities: list[dict]  # entity_id, name, description, image_uris
    ready_before_index: int  # /readyz status while the alias did not exist yet


@pytest.fixture(scope="package")
def served_kb(tmp_path_factory, ray_session):
    """Sample KB -> models/init -> Serve app (not ready) -> index + alias -> ready. Torn down at the end."""
    from milvus_lite.server_manager import server_manager_instance
    from ray import serve

    from cluster.artifacts import serving_model_dir
    from cluster.config import load_config
    from cluster.serve.app import start_serve
    from kb_builder.build import build_kb
    from kb_builder.shards import read_entities
    from kb_builder.storage import Storage

    tmp = tmp_path_factory.mktemp("serve")
    cfg = load_config(
        overrides=[
            f"storage.root={tmp / 'data'}",
            f"storage.cache_dir={tmp / 'cache'}",
            "kb.sample_entities=120",
            "kb.sample_mentions=400",
            f"serve.port={free_port()}",
            "serve.max_body_bytes=200000",
            "serve.max_image_bytes=100000",
            "serve.max_batch_mentions=8",
            "serve.max_text_chars=500",
            "serve.num_cpus_per_replica=0.1",
        ]
    )
    build_kb(cfg.kb, cfg.storage, progress=False)
    lite_file = tmp / "data" / "milvus.db"
    cfg.milvus.uri = server_manager_instance.start_and_get_uri(str(lite_file))
    model_dir = serving_model_dir(cfg)  # builds models/init once, before replicas load it
    entities = read_entities(
        Storage(cfg.storage), cfg.kb.name, columns=["entity_id", "name", "description", "image_uris"]
    ).to_dicts()

    url = start_serve(cfg)
    before = httpx.get(f"{url}/readyz", timeout=30).status_code
    collection = index_collection(cfg, model_dir, f"{cfg.milvus.collection}_v1", entities)
    swap_alias(cfg, collection)
    wait_ready(url)
    yield ServedKB(cfg, url, model_dir, collection, entities, before)
    serve.shutdown()
    server_manager_instance.release_server(str(lite_file))
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="package")
def client(served_kb):
    with httpx.Client(base_url=served_kb.url, timeout=60) as c:
        yield c
