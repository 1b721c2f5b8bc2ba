"""Linking on Ray Serve, in one of two layouts (`serve.layout`).

    single (default, one machine): LinkServer = FastAPI ingress + the whole pipeline in one replica; concurrent
        requests share one encode, one Milvus search and one rerank per batch (`cluster.serve.batching`).
    split (GPU scale-out):  LinkIngress (FastAPI) --handle--> MentionEncoder (batched) --> Retriever (Milvus,
        batched searches) --> Reranker (batched, MMoE + FeatureCache), each scaled on its own.

Each deployment wraps plain classes of `cluster.serve.pipeline`. Replicas, autoscaling, max_ongoing_requests, GPUs,
torch threads and batch sizes come from `ServeConfig`. `app_builder` is the `import_path` of `print_serve_config`'s
YAML (`serve deploy`); `start_serve` / `run_serve` are `mel serve`. Every answer carries per-stage `timings_ms`
(`cluster.serve.pipeline.STAGES`) and the ingress records them as Prometheus metrics (`cluster.serve.metrics`).

Milvus Lite: a `.db` file is owned by one process. With the single layout at one replica, that replica opens
the file and searches it in-process (`replica_owns_lite`). Otherwise (the split layout, several replicas, or a
calling process that already serves the file, e.g. after an index job here) `start_serve` opens the file's Lite
server in the calling process and hands replicas its local gRPC URI, so an index job run by that same process
can write (and swap the alias) while serving. Another process must not open the file meanwhile; use a Milvus
server for several writers.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import signal
import threading
import time

import ray
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

from cluster.config import MELConfig, load_config, milvus_uri
from cluster.serve.batching import Batcher

log = logging.getLogger("mel.serve")

APP_NAME = "mel"


def _raise_failed(result):
    if isinstance(result, BaseException):
        raise result
    return result


def _batcher(fn, serve_cfg) -> Batcher:
    return Batcher(fn, serve_cfg.batch_max_size, serve_cfg.batch_wait_timeout_s)


def _set_batching(batcher: Batcher, user_config: dict) -> None:
    """Batch sizes from the deployment's user_config (serve.batch_max_size / batch_wait_timeout_s)."""
    batcher.configure(int(user_config["batch_max_size"]), float(user_config["batch_wait_timeout_s"]))


def torch_threads(serve_cfg) -> int:
    """Intra-op threads of one model replica: serve.torch_threads, else its CPU reservation (at least 1);
    torch's default (every core) makes replicas on one machine fight over the same cores."""
    import torch

    threads = serve_cfg.torch_threads or max(1, int(serve_cfg.num_cpus_per_replica))
    torch.set_num_threads(threads)
    return threads


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


# -- layout "single": one deployment runs the ingress and the whole pipeline ----------------------------------
@serve.deployment
@serve.ingress()
class LinkServer:
    """HTTP front door and `Linker` in one replica: no hops between stages, one batch for all three stages."""

    def __init__(self, cfg: MELConfig, model_dir: str):
        from cluster.serve.metrics import ServeMetrics
        from cluster.serve.pipeline import Linker
        from workers.images import ImageLoader

        torch_threads(cfg.serve)
        self.cfg = cfg
        self.linker = Linker.from_config(cfg, model_dir=model_dir)
        self.batcher = _batcher(self.linker.link, cfg.serve)
        self.loader = ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb)
        self.metrics = ServeMetrics()

    def __serve_build_asgi_app__(self):
        from cluster.serve.http import create_app

        return create_app(
            self, self.cfg.serve, self.loader, self.metrics, partitioned=bool(self.cfg.milvus.partition_key)
        )

    def reconfigure(self, user_config: dict) -> None:
        _set_batching(self.batcher, user_config)

    async def _link_one(self, query) -> dict:
        answer, wait_ms = await self.batcher.submit(query)
        answer["timings_ms"] = {"encode_wait": round(wait_ms, 3), **answer["timings_ms"]}
        return answer

    async def link_queries(self, queries: list) -> list[dict]:
        return list(await asyncio.gather(*(self._link_one(q) for q in queries)))

    async def entity(self, entity_id: str) -> dict | None:
        return await self.linker.entity(entity_id)

    async def search_entities(self, query: str, offset: int, limit: int) -> dict:
        return await self.linker.search_entities(query, offset, limit)

    async def readiness(self) -> tuple[bool, dict]:
        try:
            ready, detail = await self.linker.readiness()
        except Exception as exc:  # Milvus unreachable: not ready, and say why
            return False, {"reason": f"retriever: {type(exc).__name__}"}
        return ready, {**detail, "nil_threshold": self.linker.threshold}


# -- layout "split": a deployment per stage, composed by handles -----------------------------------------------
@serve.deployment
class MentionEncoder:
    """Mention -> MMoE features + u_m; concurrent requests are batched."""

    def __init__(self, cfg: MELConfig, model_dir: str):
        from cluster.serve.pipeline import MentionEncoder as Plain
        from cluster.serve.pipeline import mention_texts
        from workers.device import pick_device

        torch_threads(cfg.serve)
        device = str(pick_device(num_gpus=cfg.serve.num_gpus_per_replica))
        texts = mention_texts(cfg, model_dir)
        self.encoder = Plain(model_dir, device, cfg.encoder.dtype, texts, cfg.serve.traced_encoder)
        self.batcher = _batcher(self.encoder.encode, cfg.serve)

    def reconfigure(self, user_config: dict) -> None:
        _set_batching(self.batcher, user_config)

    async def encode(self, query):
        encoded, _ = await self.batcher.submit(query)
        return encoded


@serve.deployment
class Retriever:
    """ANN top-K from the collection behind the alias (re-resolved each second: swaps need no restart); the
    searches of concurrent requests are batched into one Milvus call per filter."""

    def __init__(self, cfg: MELConfig):
        from cluster.serve.pipeline import Retriever as Plain

        self.retriever = Plain(cfg)
        self.batcher = _batcher(self._retrieve, cfg.serve)

    def reconfigure(self, user_config: dict) -> None:
        _set_batching(self.batcher, user_config)

    def _retrieve(self, items: list) -> list:
        import numpy as np

        vectors, top_ks, filter_exprs = zip(*items)
        return self.retriever.retrieve_many(np.stack(vectors), list(top_ks), list(filter_exprs))

    async def retrieve(self, vector, top_k: int, filter_expr: str):
        hits, _ = await self.batcher.submit((vector, top_k, filter_expr))
        return hits

    async def entity(self, entity_id: str):
        return await asyncio.to_thread(self.retriever.entity, entity_id)

    async def search_entities(self, query: str, offset: int, limit: int):
        return await asyncio.to_thread(self.retriever.search_entities, query, offset, limit)

    async def ready(self):
        return await asyncio.to_thread(self.retriever.ready)


@serve.deployment
class Reranker:
    """Exact MMoE scores of each mention's own candidates; a batch pads candidate sets to one tensor."""

    def __init__(self, cfg: MELConfig, model_dir: str):
        from cluster.serve.pipeline import Reranker as Plain
        from workers.device import pick_device

        torch_threads(cfg.serve)
        self.reranker = Plain(cfg, model_dir, str(pick_device(num_gpus=cfg.serve.num_gpus_per_replica)))
        self.batcher = _batcher(self.reranker.rerank, cfg.serve)

    def reconfigure(self, user_config: dict) -> None:
        _set_batching(self.batcher, user_config)

    async def rerank(self, item):
        ranked, _ = await self.batcher.submit(item)
        return ranked


@serve.deployment
@serve.ingress()
class LinkIngress:
    """The HTTP front door (`cluster.serve.http`); each mention flows encoder -> retriever -> reranker by handles."""

    def __init__(self, cfg: MELConfig, model_dir: str, encoder, retriever, reranker):
        from cluster.artifacts import nil_threshold, read_calibration
        from cluster.serve.metrics import ServeMetrics
        from workers.collections import model_tag
        from workers.images import ImageLoader

        self.cfg = cfg
        self.tag = model_tag(model_dir)  # refuse a collection another model indexed
        self.encoder, self.retriever, self.reranker = encoder, retriever, reranker
        self.threshold = nil_threshold(cfg.serve, model_dir)  # on the best candidate's confidence
        self.calibration = read_calibration(model_dir)  # temperature and NIL logit for `confidence`
        self.loader = ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb)
        self.metrics = ServeMetrics()

    def __serve_build_asgi_app__(self):
        from cluster.serve.http import create_app

        return create_app(
            self, self.cfg.serve, self.loader, self.metrics, partitioned=bool(self.cfg.milvus.partition_key)
        )

    async def _link_one(self, query) -> dict:
        """Each hop's wall time minus the work the deployment reports = its queue wait plus the hop."""
        from cluster.serve.guard import ensure_indexed_by
        from cluster.serve.pipeline import assemble

        start = time.perf_counter()
        enc = await self.encoder.encode.remote(query)
        waits = {"encode_wait": _ms(start) - enc.ms}
        start = time.perf_counter()
        k = max(self.cfg.serve.retrieve_k, query.top_k)
        ret = await self.retriever.retrieve.remote(enc.vector, k, query.filter_expr)
        waits["search_wait"] = _ms(start) - ret.ms
        ensure_indexed_by(ret.collection, self.tag)
        start = time.perf_counter()
        ranked = await self.reranker.rerank.remote((enc, ret))
        waits["rerank_wait"] = _ms(start) - ranked["ms"] - ranked["fetch_ms"]
        return assemble(query, enc, ret, ranked, self.threshold, self.calibration, waits)

    async def link_queries(self, queries: list) -> list[dict]:
        return list(await asyncio.gather(*(self._link_one(q) for q in queries)))

    async def entity(self, entity_id: str) -> dict | None:
        return await self.retriever.entity.remote(entity_id)

    async def search_entities(self, query: str, offset: int, limit: int) -> dict:
        return await self.retriever.search_entities.remote(query, offset, limit)

    async def readiness(self) -> tuple[bool, dict]:
        """Replicas answer only once their model is loaded; the collection must exist and hold rows."""
        try:
            ready, detail = await self.retriever.ready.remote()
        except Exception as exc:  # Milvus unreachable: not ready, and say why
            return False, {"reason": f"retriever: {type(exc).__name__}"}
        from cluster.serve.guard import guard_readiness

        ready, detail = guard_readiness(ready, detail, self.tag)
        return ready, {**detail, "nil_threshold": self.threshold}


# -- options from ServeConfig ---------------------------------------------------------------------------------
def _scaling(serve_cfg, replicas_fixed: int | None = None) -> dict:
    """num_replicas, or an autoscaling range when max_replicas > num_replicas."""
    if replicas_fixed is not None:
        return {"num_replicas": replicas_fixed}
    if serve_cfg.max_replicas > serve_cfg.num_replicas:
        return {
            "autoscaling_config": {
                "min_replicas": serve_cfg.num_replicas,
                "max_replicas": serve_cfg.max_replicas,
                "target_ongoing_requests": max(2, serve_cfg.batch_max_size // 2),
            }
        }
    return {"num_replicas": serve_cfg.num_replicas}


def deployment_options(cfg: MELConfig) -> dict[str, dict]:
    """Per-deployment Serve options of `serve.layout`; shared by `build_app` and `print_serve_config`."""
    s = cfg.serve
    cpu = {"num_cpus": s.num_cpus_per_replica}
    model = {"num_cpus": s.num_cpus_per_replica, "num_gpus": s.num_gpus_per_replica}
    batching = {"batch_max_size": s.batch_max_size, "batch_wait_timeout_s": s.batch_wait_timeout_s}
    from workers.milvus_store import is_lite

    lite = is_lite(milvus_uri(cfg))  # a Lite file has one owner process: one replica opens it
    common = {"max_ongoing_requests": s.max_ongoing_requests}
    if s.layout == "single":
        return {
            "LinkServer": {
                **_scaling(s, 1 if lite else None),
                **common,
                "ray_actor_options": model,
                "user_config": batching,
            }
        }
    return {
        "LinkIngress": {**_scaling(s), **common, "ray_actor_options": cpu},
        "MentionEncoder": {**_scaling(s), **common, "ray_actor_options": model, "user_config": batching},
        "Retriever": {
            **_scaling(s, 1 if lite else None),
            **common,
            "ray_actor_options": cpu,
            "user_config": batching,
        },
        "Reranker": {**_scaling(s), **common, "ray_actor_options": model, "user_config": batching},
    }


def build_app(cfg: MELConfig) -> Application:
    """The Serve application for `cfg` (models from `serving_model_dir`, Milvus from `milvus_uri`)."""
    from cluster.artifacts import serving_model_dir

    model_dir = str(serving_model_dir(cfg))
    opts = deployment_options(cfg)
    if cfg.serve.layout == "single":
        return LinkServer.options(**opts["LinkServer"]).bind(cfg, model_dir)
    encoder = MentionEncoder.options(**opts["MentionEncoder"]).bind(cfg, model_dir)
    retriever = Retriever.options(**opts["Retriever"]).bind(cfg)
    reranker = Reranker.options(**opts["Reranker"]).bind(cfg, model_dir)
    return LinkIngress.options(**opts["LinkIngress"]).bind(cfg, model_dir, encoder, retriever, reranker)


class AppArgs(BaseModel):
    """`args:` of the Serve YAML: a config file and/or inline sections, then `section.key=value` overrides."""

    model_config = ConfigDict(extra="forbid")
    config_path: str | None = None
    config: dict = {}
    overrides: list[str] = []


def _flatten(sections: dict) -> list[str]:
    """{'serve': {'port': 8000}} -> ['serve.port=8000'] (values as JSON, which YAML reads back unchanged)."""
    return [
        f"{name}.{key}={json.dumps(value)}" for name, body in sections.items() for key, value in body.items()
    ]


def app_builder(args: AppArgs) -> Application:
    """`import_path: cluster.serve.app:app_builder` for `serve deploy` / `serve run`."""
    args = AppArgs.model_validate(args) if isinstance(args, dict) else args
    return build_app(load_config(args.config_path, overrides=_flatten(args.config) + list(args.overrides)))


def print_serve_config(cfg: MELConfig) -> str:
    """The Serve config YAML equivalent to `build_app(cfg)` (self-contained: the config travels inline)."""
    import yaml

    deployments = [{"name": name, **opts} for name, opts in deployment_options(cfg).items()]
    doc = {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.serve.host, "port": cfg.serve.port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "cluster.serve.app:app_builder",
                "args": {"config": dataclasses.asdict(cfg)},
                "deployments": deployments,
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


# -- running --------------------------------------------------------------------------------------------------
def replica_owns_lite(cfg: MELConfig) -> bool:
    """Whether the single layout's one replica opens the Lite file itself, searching it in-process
    (workers.lite_engine: no gRPC hop; a /link 12.8 -> 9.8-10.7 ms in bench_serve). Not when this process
    already serves the file (an index job ran here and may write while serving: replicas then use its gRPC
    URI, `_local_lite_server`), nor for the split layout or several replicas, which all need the file."""
    from workers.lite_engine import engine_for
    from workers.milvus_store import is_lite

    s, uri = cfg.serve, milvus_uri(cfg)
    one = s.layout == "single" and s.num_replicas == 1 and s.max_replicas <= 1
    return one and is_lite(uri) and engine_for(uri) is None


def _local_lite_server(cfg: MELConfig) -> MELConfig:
    """With a Milvus Lite file, serve it from this process over local gRPC so replicas (and an index job here)
    share the one owner of the file; other URIs pass through unchanged."""
    from workers.milvus_store import is_lite

    uri = milvus_uri(cfg)
    if not is_lite(uri):
        return cfg
    from pathlib import Path

    from milvus_lite.server_manager import server_manager_instance

    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    local = server_manager_instance.start_and_get_uri(uri)
    if local is None:
        raise RuntimeError(
            f"cannot open Milvus Lite file {uri}: is another process (an index job?) using it?"
        )
    cfg = copy.deepcopy(cfg)
    cfg.milvus.uri = local
    return cfg


def start_serve(cfg: MELConfig) -> str:
    """Deploy on the running (or a new) Ray and return the base URL; does not block."""
    from ray.serve.schema import LoggingConfig

    from cluster.runtime import init_ray, quiet_ray_logs, verbose
    from cluster.serve.ingress import ingress_env

    init_ray(cfg.ray, env=ingress_env(cfg.serve))
    configured_uri = milvus_uri(cfg)
    cfg = cfg if replica_owns_lite(cfg) else _local_lite_server(cfg)
    logging_config = LoggingConfig(  # Serve's own lines go to its log files unless `mel --verbose`
        enable_access_log=cfg.serve.access_log, log_level="INFO" if verbose() else "ERROR"
    )
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port}, logging_config=logging_config)
    quiet_ray_logs()  # Serve configures its driver-side logger on start: quiet it again
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", logging_config=logging_config)
    host, port = _proxy_address(cfg.serve.host, cfg.serve.port)
    _wait_for_port(host, port)
    url = f"http://{host}:{port}"
    _check_started(url, cfg, configured_uri)
    return url


def _proxy_address(host: str, port: int) -> tuple[str, int]:
    """Where Serve's proxy really listens: `serve.start` keeps the HTTP options of a Serve instance that is
    already running in this Ray cluster, so a configured port can be silently ignored; say so, and use it."""
    try:
        from ray.serve.context import _get_global_client  # no public API exposes the live HTTP options

        live = ray.get(_get_global_client()._controller.get_http_config.remote())
    except Exception:  # a Ray version without it: trust the config
        return host, port
    if (live.host, live.port) != (host, port):
        log.warning(
            "Serve was already running on %s:%s in this Ray cluster; serve.host/port (%s:%s) are ignored",
            live.host,
            live.port,
            host,
            port,
        )
    return live.host, live.port


def _wait_for_port(host: str, port: int, timeout_s: float = 120.0) -> None:
    """Return once the HTTP proxy accepts connections (a proxy restarted on a new port lags `serve.run`)."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), 2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Serve's HTTP proxy is not listening on {host}:{port} after {timeout_s:.0f} s"
                ) from None
            time.sleep(0.25)


def _check_started(url: str, cfg: MELConfig, configured_uri: str, timeout_s: float = 60.0) -> None:
    """Wait until the app answers through the port (HAProxy learns its routes a moment after `serve.run`); warn
    if Serve runs another ingress than `serve.ingress` (a Ray started earlier keeps its own switches), and if
    a Milvus Lite file holds a KB too large for it (`milvus.lite_advice_entities`)."""
    import httpx

    from workers.milvus_store import lite_advice

    probe = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://127.0.0.1:")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            body = httpx.get(f"{probe}/readyz", timeout=10).json()
            if isinstance(body, dict) and "ingress" in body:
                break
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            log.warning("the app does not answer at %s/readyz after %.0f s", probe, timeout_s)
            return
        time.sleep(0.25)
    if body["ingress"] != cfg.serve.ingress:
        log.warning(
            "serve.ingress is %s but Serve runs with %s: the Ray it runs on was started without its switches "
            "(see cluster/serve/ingress.py)",
            cfg.serve.ingress,
            body["ingress"],
        )
    entities = body.get("entities")
    entities = entities if isinstance(entities, int) else 0  # absent while not ready
    if advice := lite_advice(configured_uri, entities, cfg.milvus.lite_advice_entities):
        log.warning(advice)


def run_serve(cfg: MELConfig) -> None:
    """`mel serve`: deploy, print the URL, block until Ctrl-C / SIGTERM, then shut Serve down cleanly.

    The handlers are installed before deploying: /readyz can answer 200 a moment before `serve.run` returns (a
    single deployment is ready that fast), and a Ctrl-C then must still shut down cleanly, not interrupt."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = start_serve(cfg)
        print(f"serving at {url}  (OpenAPI: {url}/docs, readiness: {url}/readyz); Ctrl-C stops", flush=True)
        print(f"playground: open {url}/ui/ in a browser to link mentions and browse the KB", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        print("shutting down Serve", flush=True)
        serve.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
