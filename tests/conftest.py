"""Shared fixtures: a tiny config rooted in a temp folder, one local Ray for the session, a real S3 endpoint.

Package-specific fixtures live in tests/<package>/conftest.py; plain helpers in tests/fixtures.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fixtures import free_port, init_test_ray  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def mel_config(tmp_path):
    """The repository's ray_config.yaml, rooted in a fresh temp folder, with a small sample KB."""
    from cluster.config import load_config

    return load_config(
        overrides=[
            f"storage.root={tmp_path / 'data'}",
            f"storage.cache_dir={tmp_path / 'cache'}",
            "kb.sample_entities=120",
            "kb.sample_mentions=400",
        ]
    )


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs, small object store)."""
    import ray

    init_test_ray()
    yield ray
    # Left running: session teardown shuts Ray down (see pytest_sessionfinish).


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible endpoint (moto's server) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the moto server; yields (endpoint_url, bucket_name)."""
    import uuid

    import boto3

    name = f"mel-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return s3_server, name


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus 2.3 standalone server (PyPI `milvus`, embedded binary) on a free loopback port, its data in a
    temp folder; started lazily once per session (it keeps ~80% of a core busy even when idle). MILVUS_URI
    overrides it with an external server. Yields (uri, local_storage_dir or "" for an external server)."""
    if os.environ.get("MILVUS_URI"):
        yield os.environ["MILVUS_URI"], os.environ.get("MILVUS_LOCAL_STORAGE", "")
        return
    try:
        import milvus  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the `milvus` package (embedded Milvus server) is not installed: {exc}")
    from workers.milvus_server import start_embedded_server

    try:
        server, uri, storage = start_embedded_server(
            str(tmp_path_factory.mktemp("milvus_server")), free_port()
        )
    except Exception as exc:  # the binary cannot run here (missing libs, no exec permission, ...)
        pytest.skip(f"the Milvus server binary could not start: {exc!r}")
    yield uri, storage
    server.stop()
