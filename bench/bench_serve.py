"""Serving latency and throughput on the sample KB: HTTP (Ray Serve) vs the same pipeline in-process.

Measures p50/p99 latency and requests/s at concurrency 1, 8 and 32 for
  * `in-process`: `cluster.serve.pipeline.Linker.link` called from a thread pool (no HTTP, no Ray),
  * `http batch on`: the Serve app with `@serve.batch` (serve.batch_max_size), over loopback HTTP,
  * `http batch off`: the same app redeployed with batch_max_size 1,
and prints the overhead ratio (HTTP p50 / in-process p50) and the batching ratio (rps on / rps off), all measured
in this one run. Request counts are bounded; everything stays on 127.0.0.1.

    python3 bench/bench_serve.py [--requests 64] [--levels 1,8,32] [--set section.key=value ...]

With `--url`, it measures a server that is already running (`mel serve` after `mel index` and `mel train`, the
user's path) with the KB's test mentions instead: p50/p99/rps of `/link` beside `/healthz` (the HTTP round trip
alone, the baseline) and Hits@1 of the answers, at each concurrency level.

    python3 bench/bench_serve.py --url http://127.0.0.1:8000 [--set storage.root=./mel_data]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(latencies_ms: list[float], wall_s: float) -> dict:
    return {
        "p50": percentile(latencies_ms, 50),
        "p99": percentile(latencies_ms, 99),
        "rps": len(latencies_ms) / wall_s,
        "mean": statistics.fmean(latencies_ms),
    }


def prepare(cfg) -> tuple[list[dict], str]:
    """Build the sample KB, index it with the untrained model into a fresh collection; return request bodies."""
    from cluster.artifacts import serving_model_dir
    from kb_builder.build import build_kb
    from kb_builder.shards import read_entities
    from kb_builder.storage import Storage
    from workers.index_job import index_in_process
    from workers.milvus_store import MilvusStore

    build_kb(cfg.kb, cfg.storage, progress=False)
    model_dir = serving_model_dir(cfg)
    entities = read_entities(
        Storage(cfg.storage), cfg.kb.name, columns=["entity_id", "name", "description", "image_uris"]
    ).to_dicts()
    name = f"{cfg.milvus.collection}_vbench"
    index_in_process(cfg.storage, cfg.encoder, cfg.milvus, cfg.milvus.uri, model_dir, name, entities)
    store = MilvusStore(cfg.milvus, cfg.milvus.uri)
    store.swap_alias(name, drop_old=False)
    store.close()
    bodies = []
    for e in entities:
        body = {"mention": e["name"], "context": e["description"], "top_k": 5}
        if e["image_uris"]:
            body["image"] = base64.b64encode(Path(e["image_uris"][0]).read_bytes()).decode()
        bodies.append(body)
    return bodies, str(model_dir)


def bench_in_process(linker, bodies: list[dict], concurrency: int, n: int) -> dict:
    import io

    from PIL import Image

    from cluster.serve.pipeline import MentionQuery

    def query(body):
        image = (
            Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB")
            if "image" in body
            else None
        )
        return MentionQuery(body["mention"], body["context"], image, top_k=body["top_k"])

    def one(i: int) -> float:
        start = time.perf_counter()
        linker.link([query(bodies[i % len(bodies)])])
        return (time.perf_counter() - start) * 1000

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(n)))
    return summary(latencies, time.perf_counter() - start)


async def _bench_http(
    url: str, bodies: list[dict], concurrency: int, n: int, path: str = "/link", golds: list | None = None
) -> dict:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=300, limits=httpx.Limits(max_connections=concurrency)
    ) as client:
        hits = []

        async def one(i: int) -> float:
            async with limit:
                start = time.perf_counter()
                if path == "/link":
                    reply = await client.post(path, json=bodies[i % len(bodies)])
                else:
                    reply = await client.get(path)
                reply.raise_for_status()
                elapsed = (time.perf_counter() - start) * 1000
                if golds is not None:
                    top = reply.json()["candidates"][:1]
                    hits.append(bool(top) and top[0]["entity_id"] == golds[i % len(golds)])
                return elapsed

        start = time.perf_counter()
        latencies = await asyncio.gather(*(one(i) for i in range(n)))
    result = summary(list(latencies), time.perf_counter() - start)
    if hits:
        result["hits1"] = sum(hits) / len(hits)
    return result


def bench_running_server(url: str, cfg, levels: list[int], n: int) -> int:
    """Measure a running `mel serve` with the KB's test mentions; baseline: `/healthz` on the same server."""
    from kb_builder.shards import read_mentions
    from kb_builder.storage import Storage

    mentions = read_mentions(Storage(cfg.storage), cfg.kb.name, "test")
    mentions = mentions.filter(mentions["gold_entity_id"].is_not_null())
    bodies, golds = [], []
    for row in mentions.to_dicts():
        body = {"mention": row["mention"], "context": row["context"], "top_k": 5}
        if row["image_uri"] and Path(row["image_uri"]).exists():
            body["image"] = base64.b64encode(Path(row["image_uri"]).read_bytes()).decode()
        bodies.append(body)
        golds.append(row["gold_entity_id"])
    print(
        f"\nbench_serve --url {url}: {len(bodies)} test mentions of KB {cfg.kb.name!r}, {n} requests per cell"
    )
    print(f"{'conc':>5}{'/link p50':>11}{'p99':>9}{'req/s':>9}{'Hits@1':>8}{'/healthz p50':>14}{'ratio':>7}")
    for c in levels:
        asyncio.run(_bench_http(url, bodies, c, 4))  # warm-up
        link = asyncio.run(_bench_http(url, bodies, c, n, "/link", golds))
        health = asyncio.run(_bench_http(url, bodies, c, n, "/healthz"))
        print(
            f"{c:>5}{link['p50']:>11.1f}{link['p99']:>9.1f}{link['rps']:>9.1f}{link['hits1']:>8.3f}"
            f"{health['p50']:>14.1f}{link['p50'] / health['p50']:>6.1f}x"
        )
    return 0


def bench_http(url, bodies, concurrency, n) -> dict:
    asyncio.run(_bench_http(url, bodies, concurrency, 4))  # warm-up: connections, first batches
    return asyncio.run(_bench_http(url, bodies, concurrency, n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per (mode, concurrency) cell")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--url", default=None, help="measure this running server (`mel serve`) instead")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    if args.url:
        from cluster.config import load_config

        return bench_running_server(
            args.url.rstrip("/"), load_config(overrides=args.set), levels, args.requests
        )

    import ray
    from milvus_lite.server_manager import server_manager_instance
    from ray import serve

    from cluster.config import load_config
    from cluster.serve.app import start_serve
    from cluster.serve.pipeline import Linker

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    cfg = load_config(
        overrides=[
            f"storage.root={root / 'data'}",
            f"storage.cache_dir={root / 'cache'}",
            "kb.sample_entities=120",
            "kb.sample_mentions=400",
            f"serve.port={free_port()}",
            "serve.num_cpus_per_replica=0.25",
            "serve.max_ongoing_requests=64",
            *args.set,
        ]
    )
    (root / "data").mkdir(parents=True)
    cfg.milvus.uri = server_manager_instance.start_and_get_uri(str(root / "data" / "milvus.db"))
    bodies, model_dir = prepare(cfg)
    import torch

    torch.set_num_threads(1)  # the same one thread per model the Serve replicas use
    linker = Linker.from_config(cfg, device="cpu")
    results: dict[str, dict[int, dict]] = {"in-process": {}}
    for c in levels:
        bench_in_process(linker, bodies, c, 4)
        results["in-process"][c] = bench_in_process(linker, bodies, c, args.requests)
    ray.init(
        num_cpus=cfg.ray.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    batch_size = cfg.serve.batch_max_size
    for label, size in (("http batch on", batch_size), ("http batch off", 1)):
        cfg.serve.batch_max_size = size
        url = start_serve(cfg)
        results[label] = {c: bench_http(url, bodies, c, args.requests) for c in levels}
        serve.delete("mel")
    serve.shutdown()
    ray.shutdown()

    print(
        f"\nbench_serve: {len(bodies)} entities, {args.requests} requests per cell, model {model_dir}, "
        f"batch_max_size {batch_size}, host CPUs {os.cpu_count()}"
    )
    print(f"{'mode':<16}{'conc':>5}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}")
    for label, cells in results.items():
        for c, r in cells.items():
            print(f"{label:<16}{c:>5}{r['p50']:>10.1f}{r['p99']:>10.1f}{r['rps']:>9.1f}")
    print("\nratios (same run):")
    for c in levels:
        on, off, local = results["http batch on"][c], results["http batch off"][c], results["in-process"][c]
        print(
            f"  conc {c:>2}: HTTP/in-process p50 {on['p50'] / local['p50']:.2f}x, "
            f"rps batch on/off {on['rps'] / off['rps']:.2f}x, p50 batch on/off {on['p50'] / off['p50']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
