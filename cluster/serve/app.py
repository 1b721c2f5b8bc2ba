"""Linking on Ray Serve: an HTTP ingress composed by `.bind()` with an encoder, a retriever and a reranker.

    LinkIngress (FastAPI, /docs) --handle--> MentionEncoder (@serve.batch) --> Retriever (Milvus, alias)
                                 --handle--> Reranker (@serve.batch, MMoE + FeatureCache)

Each deployment wraps a plain class of `cluster.serve.pipeline`. Replicas, autoscaling, max_ongoing_requests, GPUs and
batch sizes come from `ServeConfig`. `app_builder` is the `import_path` of `print_serve_config`'s YAML
(`serve deploy`); `start_serve` / `run_serve` are `mel serve`.

Milvus Lite: a `.db` file is owned by one process. `build_app` then keeps the retriever at one replica, and
`start_serve` opens the file's Lite server in the calling process and hands replicas its local gRPC URI, so an
index job run by that same process can write (and swap the alias) while serving. Another process must not
open the file meanwhile; use a Milvus server for several writers.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import signal
import threading

import ray
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

from cluster.config import MELConfig, load_config, milvus_uri

log = logging.getLogger("mel.serve")

APP_NAME = "mel"


def _run_batch(fn, items: list) -> list:
    """Run a batch; if it fails, run its items one by one so one bad item fails only its own request.

    Failures come back as exception objects (the caller re-raises them) and never as StopIteration, which
    asyncio cannot carry through a future (it would wedge the replica's batch loop).
    """
    try:
        return fn(items)
    except Exception:  # noqa: BLE001 - isolated below, item by item
        out = []
        for item in items:
            try:
                out.extend(fn([item]))
            except StopIteration as exc:
                out.append(RuntimeError(f"StopIteration in {fn.__name__}: {exc!r}"))
            except Exception as exc:  # noqa: BLE001 - handed to the caller of this item
                out.append(exc)
        return out


def _raise_failed(result):
    if isinstance(result, BaseException):
        raise result
    return result


def _set_batching(batched_method, user_config: dict) -> None:
    """`@serve.batch` sizes from the deployment's user_config (serve.batch_max_size / batch_wait_timeout_s)."""
    batched_method.set_max_batch_size(int(user_config["batch_max_size"]))
    batched_method.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))


def _torch_threads(num_cpus: float) -> None:
    """One replica must not grab every core (torch defaults to all of them)."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


@serve.deployment
class MentionEncoder:
    """Mention -> MMoE features + u_m; concurrent requests are grouped by `@serve.batch`."""

    def __init__(self, cfg: MELConfig, model_dir: str):
        from cluster.serve.pipeline import MentionEncoder as Plain
        from cluster.serve.pipeline import mention_texts
        from workers.device import pick_device

        _torch_threads(cfg.serve.num_cpus_per_replica)
        device = str(pick_device(num_gpus=cfg.serve.num_gpus_per_replica))
        self.encoder = Plain(model_dir, device, cfg.encoder.dtype, mention_texts(cfg, model_dir))

    def reconfigure(self, user_config: dict) -> None:
        _set_batching(self.encode, user_config)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def encode(self, queries: list) -> list:
        return await asyncio.to_thread(_run_batch, self.encoder.encode, queries)


@serve.deployment
class Retriever:
    """ANN top-K from the collection behind the alias (re-resolved each second: swaps need no restart)."""

    def __init__(self, cfg: MELConfig):
        from cluster.serve.pipeline import Retriever as Plain

        self.retriever = Plain(cfg)

    async def retrieve(self, vector, top_k: int, filter_expr: str):
        (hits,) = await asyncio.to_thread(self.retriever.retrieve, vector[None, :], top_k, filter_expr)
        return hits

    async def entity(self, entity_id: str):
        return await asyncio.to_thread(self.retriever.entity, entity_id)

    async def search_entities(self, query: str, offset: int, limit: int):
        return await asyncio.to_thread(self.retriever.search_entities, query, offset, limit)

    async def ready(self):
        return await asyncio.to_thread(self.retriever.ready)


@serve.deployment
class Reranker:
    """Exact MMoE scores of each mention's own candidates; `@serve.batch` pads candidate sets to one tensor."""

    def __init__(self, cfg: MELConfig, model_dir: str):
        from cluster.serve.pipeline import Reranker as Plain
        from workers.device import pick_device

        _torch_threads(cfg.serve.num_cpus_per_replica)
        self.reranker = Plain(cfg, model_dir, str(pick_device(num_gpus=cfg.serve.num_gpus_per_replica)))

    def reconfigure(self, user_config: dict) -> None:
        _set_batching(self.rerank, user_config)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def rerank(self, items: list) -> list:
        return await asyncio.to_thread(_run_batch, self.reranker.rerank, items)


@serve.deployment
@serve.ingress()
class LinkIngress:
    """The HTTP front door (`cluster.serve.http`); each mention flows encoder -> retriever -> reranker by handles."""

    def __init__(self, cfg: MELConfig, model_dir: str, encoder, retriever, reranker):
        from cluster.artifacts import nil_threshold, read_calibration
        from workers.collections import model_tag
        from workers.images import ImageLoader

        self.cfg = cfg
        self.tag = model_tag(model_dir)  # refuse a collection another model indexed
        self.encoder, self.retriever, self.reranker = encoder, retriever, reranker
        self.threshold = nil_threshold(cfg.serve, model_dir)  # on the best candidate's confidence
        self.calibration = read_calibration(model_dir)  # temperature and NIL logit for `confidence`
        self.loader = ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb)

    def __serve_build_asgi_app__(self):
        from cluster.serve.http import create_app

        return create_app(self, self.cfg.serve, self.loader, bool(self.cfg.milvus.partition_key))

    async def _link_one(self, query) -> dict:
        from cluster.serve.guard import ensure_indexed_by
        from cluster.serve.pipeline import assemble

        enc = _raise_failed(await self.encoder.encode.remote(query))
        k = max(self.cfg.serve.retrieve_k, query.top_k)
        ret = await self.retriever.retrieve.remote(enc.vector, k, query.filter_expr)
        ensure_indexed_by(ret.collection, self.tag)
        ranked = _raise_failed(await self.reranker.rerank.remote((enc, ret)))
        return assemble(query, enc, ret, ranked, self.threshold, self.calibration)

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
    """Per-deployment Serve options; shared by `build_app` and `print_serve_config`."""
    s = cfg.serve
    cpu = {"num_cpus": s.num_cpus_per_replica}
    model = {"num_cpus": s.num_cpus_per_replica, "num_gpus": s.num_gpus_per_replica}
    batching = {"batch_max_size": s.batch_max_size, "batch_wait_timeout_s": s.batch_wait_timeout_s}
    from workers.milvus_store import is_lite

    lite = is_lite(milvus_uri(cfg))  # a Lite file has one owner process: one retriever replica
    return {
        "LinkIngress": {
            **_scaling(s),
            "max_ongoing_requests": s.max_ongoing_requests,
            "ray_actor_options": cpu,
        },
        "MentionEncoder": {
            **_scaling(s),
            "max_ongoing_requests": s.max_ongoing_requests,
            "ray_actor_options": model,
            "user_config": batching,
        },
        "Retriever": {
            **_scaling(s, 1 if lite else None),
            "max_ongoing_requests": s.max_ongoing_requests,
            "ray_actor_options": cpu,
        },
        "Reranker": {
            **_scaling(s),
            "max_ongoing_requests": s.max_ongoing_requests,
            "ray_actor_options": model,
            "user_config": batching,
        },
    }


def build_app(cfg: MELConfig) -> Application:
    """The Serve application for `cfg` (models from `serving_model_dir`, Milvus from `milvus_uri`)."""
    from cluster.artifacts import serving_model_dir

    model_dir = str(serving_model_dir(cfg))
    opts = deployment_options(cfg)
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

    init_ray(cfg.ray)
    cfg = _local_lite_server(cfg)
    logging_config = LoggingConfig(  # Serve's own lines go to its log files unless `mel --verbose`
        enable_access_log=cfg.serve.access_log, log_level="INFO" if verbose() else "ERROR"
    )
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port}, logging_config=logging_config)
    quiet_ray_logs()  # Serve configures its driver-side logger on start: quiet it again
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", logging_config=logging_config)
    host, port = _proxy_address(cfg.serve.host, cfg.serve.port)
    _wait_for_port(host, port)
    return f"http://{host}:{port}"


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


def run_serve(cfg: MELConfig) -> None:
    """`mel serve`: deploy, print the URL, block until Ctrl-C / SIGTERM, then shut Serve down cleanly."""
    url = start_serve(cfg)
    print(f"serving at {url}  (OpenAPI: {url}/docs, readiness: {url}/readyz); Ctrl-C stops", flush=True)
    print(f"playground: open {url}/ui/ in a browser to link mentions and browse the KB", flush=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        print("shutting down Serve", flush=True)
        serve.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
