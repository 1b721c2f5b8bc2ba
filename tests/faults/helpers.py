"""What the fault tests share: a small Serve app of their own (name APP, route ROUTE) that coexists with the
serving tests' app in the same Ray session, and a wait for free CPUs."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from tests.fixtures import wait_until

APP = "mel-faults"
ROUTE = "/faults"


@contextlib.contextmanager
def small_served_app(tmp: Path, app: str, route: str, n_entities: int = 40):
    """Build a small sample KB under `tmp`, index it in-process, serve it on the session's Ray Serve as `app`
    at `route` (beside any other app); yields (cfg, url, entities) and deletes the app afterwards."""
    import ray
    from milvus_lite.server_manager import server_manager_instance
    from ray import serve
    from ray.serve.context import _get_global_client

    from cluster.artifacts import serving_model_dir
    from cluster.config import load_config
    from cluster.serve.app import build_app
    from kb_builder.build import build_kb
    from kb_builder.shards import read_entities
    from kb_builder.storage import Storage
    from tests.cluster.serving.helpers import index_collection, swap_alias, wait_ready
    from tests.fixtures import free_port

    alias = app.replace("-", "_")
    cfg = load_config(
        overrides=[
            f"storage.root={tmp / 'data'}",
            f"storage.cache_dir={tmp / 'cache'}",
            f"kb.sample_entities={n_entities}",
            "kb.sample_mentions=40",
            "serve.num_cpus_per_replica=0.1",
            "serve.layout=split",  # the fault tests kill one stage's replica (the reranker) or the ingress
            f"milvus.collection={alias}",
            "serve.max_body_bytes=200000",
            "serve.max_image_bytes=100000",
        ]
    )
    build_kb(cfg.kb, cfg.storage, progress=False)
    lite_file = tmp / "data" / "milvus.db"
    cfg.milvus.uri = server_manager_instance.start_and_get_uri(str(lite_file))
    model_dir = serving_model_dir(cfg)
    entities = read_entities(
        Storage(cfg.storage), cfg.kb.name, columns=["entity_id", "name", "description", "image_uris"]
    ).to_dicts()
    swap_alias(cfg, index_collection(cfg, model_dir, f"{alias}_v1", entities))
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})  # ignored when Serve already runs
    port = ray.get(_get_global_client()._controller.get_http_config.remote()).port
    serve.run(build_app(cfg), name=app, route_prefix=route)
    url = f"http://127.0.0.1:{port}{route}"
    try:
        assert wait_ready(url) == 200
        yield cfg, url, entities
    finally:
        serve.delete(app)
        server_manager_instance.release_server(str(lite_file))
        shutil.rmtree(tmp, ignore_errors=True)


def require_free_cpus(needed: float, timeout_s: float = 30.0) -> None:
    """Fail fast, not hang, when another Ray workload (a session-scoped Serve app) holds the CPUs an index or
    training test needs: workers/ray_pool.py and Ray Train would otherwise wait forever (docs/reliability.md,
    bug 7). Polls a while first, so actors of the previous test can finish releasing their CPUs."""
    import ray

    wait_until(
        lambda: ray.available_resources().get("CPU", 0.0) >= needed,
        timeout_s=timeout_s,
        interval_s=0.5,
        what=f"{needed} free CPUs in the test Ray session (another Serve app still running?); run_index/Ray "
        "Train would wait forever (docs/reliability.md, bug 7)",
    )
