"""Serving latency and throughput on the sample KB: HTTP (Ray Serve) vs the same pipeline in-process.

Measures p50/p99 latency, requests/s and the p50 of every `timings_ms` stage at concurrency 1, 8 and 32 for
  * `in-process`: `cluster.serve.pipeline.Linker.link` called from a thread pool (no HTTP, no Ray),
  * `in-process paced` (conc 1, a diagnostic): the same with the core idle 4 ms before each call, as a server's
    core is while a request travels (back to back, the loop runs on a hot core and cache),
  * `<layout> batch on`: the Serve app in each `serve.layout` (single, split) with batching
    (serve.batch_max_size), over loopback HTTP,
  * `<layout> batch off`: the same app redeployed with batch_max_size 1,
then the latency against the KB's size (`--entities`: the 120 sample entities plus random unit-norm synthetic
ones, in-process at concurrency 1, one collection per size with the `--kb-index` index), and prints the ratios
of issue 19 beside their goals, all measured in this one run. Everything stays on 127.0.0.1.

    python3 bench/bench_serve.py [--requests 64] [--levels 1,8,32] [--entities 120,10000,100000]
                                 [--layouts single,split] [--set section.key=value ...]

`--kb-milvus server` runs the KB-size sweep on the embedded Milvus 2.3.5 server (PyPI `milvus`) instead of
the Lite file; searches use `serve.consistency_level` (default Bounded; Strong waits for the server's next
time tick, ~200 ms a search):

    python3 bench/bench_serve.py --entities 120,100000 --kb-milvus server

`--ingresses haproxy,proxy` (default): the HTTP cells run with the first `serve.ingress` (Ray Serve's HAProxy
ingress), then the default layout with batching again with each other one (`<layout> proxy`: Serve's Python
proxy actor), each on a Ray of its own, since Serve reads the switch when Ray starts.

`http` in the stage table is the client's time minus the server's `total` (loopback HTTP + HAProxy or Serve's
proxy); `*_wait` is queue wait plus the hop to a deployment.

With `--url`, it measures a server that is already running (`mel serve` after `mel index` and `mel train`, the
user's path) with the KB's test mentions instead: p50/p99/rps of `/link` beside `/healthz` (the HTTP round trip
alone, the baseline) and Hits@1 of the answers, at each concurrency level.

    python3 bench/bench_serve.py --url http://127.0.0.1:8000 [--set storage.root=./mel_data]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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


STAGES = ["http", "parse", "encode_wait", "encode", "search_wait", "search", "fetch", "rerank_wait", "rerank",
          "assemble", "total"]  # fmt: skip


def summary(latencies_ms: list[float], wall_s: float, timings: list[dict] | None = None) -> dict:
    """p50/p99/rps/mean of the client latencies, and the p50 of each stage over the answers that carry it."""
    out = {
        "p50": percentile(latencies_ms, 50),
        "p99": percentile(latencies_ms, 99),
        "rps": len(latencies_ms) / wall_s,
        "mean": statistics.fmean(latencies_ms),
        "stages": {},
    }
    for stage in STAGES:
        values = [t[stage] for t in timings or [] if stage in t]
        if values:
            out["stages"][stage] = percentile(values, 50)
    return out


def prepare(cfg) -> tuple[list[dict], str, str]:
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
    return bodies, str(model_dir), name


def synthetic_collection(
    cfg, base: str, n_entities: int, index: dict, target_uri: str, seed: int = 0
) -> tuple[str, dict]:
    """`base`'s entities (in cfg.milvus.uri) plus synthetic ones up to `n_entities`, in a new collection with
    the `index` spec at `target_uri`.

    A synthetic entity's u_e is a random direction with the mean norm of the real ones, and its rerank features
    are a real entity's (features only need the right shapes for the timing). Returns the collection and the
    catalog rows of the synthetic ids (the Retriever's catalog holds the KB's entities only)."""
    import copy

    import numpy as np

    from kb_builder.storage import Storage
    from workers.feature_cache import FeatureCache
    from workers.milvus_store import MilvusStore

    milvus_cfg = copy.deepcopy(cfg.milvus)
    milvus_cfg.index_type, milvus_cfg.index_params = index["type"], dict(index["params"])
    source = MilvusStore(cfg.milvus, cfg.milvus.uri)
    real = source.client.query(
        base,
        filter="",
        output_fields=["entity_id", "vector", "name", "has_image", "content_hash"],
        limit=16384,
    )
    source.close()
    store = MilvusStore(milvus_cfg, target_uri)
    name = f"{cfg.milvus.collection}_vkb{n_entities}"
    if store.exists(name):
        store.drop(name)
    ids = [r["entity_id"] for r in real]
    cache = FeatureCache(Storage(cfg.storage), base).load(ids)
    vectors = np.asarray([r["vector"] for r in real], dtype=np.float32)
    rng = np.random.default_rng(seed)
    extra = max(0, n_entities - len(real))
    fake = rng.standard_normal((extra, vectors.shape[1])).astype(np.float32)
    fake *= np.linalg.norm(vectors, axis=1).mean() / np.linalg.norm(fake, axis=1, keepdims=True)
    fake_ids = [f"SYN{i:07d}" for i in range(extra)]
    store.create(name, vectors.shape[1])
    store.upsert(name, [dict(r) for r in real])
    step = 5000
    for start in range(0, extra, step):
        store.upsert(
            name,
            [
                {"entity_id": fake_ids[i], "vector": fake[i], "name": f"synthetic {i}", "has_image": False}
                for i in range(start, min(extra, start + step))
            ],
        )
    store.flush(name)
    store.client.load_collection(name)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:  # searches while the index builds are brute force: wait for it
        info = store.client.describe_index(name, "vector")
        if info.get("state") in (None, "Finished") and not info.get("pending_index_rows"):
            break
        time.sleep(1.0)
    borrowed = np.arange(extra) % len(ids)  # synthetic entity i borrows the features of real entity i mod N
    arrays = {k: np.concatenate([v.numpy(), v.numpy()[borrowed]]) for k, v in cache.items()}
    if (
        "vector" in arrays
    ):  # u_e in the cache (indexes since issue 19) must be the synthetic vectors themselves
        arrays["vector"] = np.concatenate([cache["vector"].numpy(), fake])
    FeatureCache(Storage(cfg.storage), name).write_shard("part-00000", ids + fake_ids, arrays)
    store.close()
    catalog = {
        eid: {"entity_id": eid, "name": f"synthetic {i}", "description": ""} for i, eid in enumerate(fake_ids)
    }
    return name, catalog


def _query(body: dict):
    import io

    from PIL import Image

    from cluster.serve.pipeline import MentionQuery

    image = (
        Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB") if "image" in body else None
    )
    return MentionQuery(body["mention"], body["context"], image, top_k=body["top_k"])


PACE_S = 0.004  # `in-process paced`: the idle gap before each call, about the HTTP hop + parsing at conc 1


def bench_in_process(linker, bodies: list[dict], concurrency: int, n: int, pace_s: float = 0.0) -> dict:
    """`pace_s` > 0: the core sits idle that long before each call (untimed), as a server's does while a
    request travels; back to back, the loop keeps the CPU and its caches hot, which no server request sees."""

    def one(i: int) -> tuple[float, dict]:
        if pace_s:
            time.sleep(pace_s)
        start = time.perf_counter()
        (answer,) = linker.link([_query(bodies[i % len(bodies)])])
        return (time.perf_counter() - start) * 1000, answer["timings_ms"]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    return summary([r[0] for r in results], time.perf_counter() - start, [r[1] for r in results])


async def _bench_http(
    url: str, bodies: list[dict], concurrency: int, n: int, path: str = "/link", golds: list | None = None
) -> dict:
    """aiohttp, not httpx: on a bare uvicorn app here httpx's AsyncClient costs 0.87-0.96 ms a request against
    aiohttp's 0.33 ms, client time that would be counted as the server's `http` stage."""
    import aiohttp

    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:
        hits, timings = [], []

        async def one(i: int) -> float:
            async with limit:
                start = time.perf_counter()
                if path == "/link":
                    request = client.post(path, json=bodies[i % len(bodies)])
                else:
                    request = client.get(path)
                async with request as reply:
                    reply.raise_for_status()
                    raw = await reply.read()
                elapsed = (time.perf_counter() - start) * 1000
                answer = json.loads(raw)
                if path == "/link":
                    stages = dict(answer["timings_ms"])
                    stages["http"] = elapsed - stages["total"]  # loopback HTTP + HAProxy or Serve's proxy
                    timings.append(stages)
                if golds is not None:
                    top = answer["candidates"][:1]
                    hits.append(bool(top) and top[0]["entity_id"] == golds[i % len(golds)])
                return elapsed

        start = time.perf_counter()
        latencies = await asyncio.gather(*(one(i) for i in range(n)))
    result = summary(list(latencies), time.perf_counter() - start, timings)
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


def cell_requests(concurrency: int, n: int) -> int:
    """Requests in one (mode, concurrency) cell: at least 200 at concurrency 1, where a cell of 64 sequential
    requests moved the same code path's rate by +-5% between two deployments (batch on/off at conc 1)."""
    return max(n, 200) if concurrency == 1 else n


def bench_http(url, bodies, concurrency, n) -> dict:
    asyncio.run(_bench_http(url, bodies, concurrency, 4))  # warm-up: connections, first batches
    return asyncio.run(_bench_http(url, bodies, concurrency, n))


def bench_kb_sizes(
    cfg, bodies, base: str, sizes: list[int], index: dict, n: int, kb_milvus: str, root: Path
) -> dict[int, dict]:
    """In-process latency at concurrency 1 against collections of `sizes` entities (alias swapped to each), on
    an embedded Milvus 2.3 server (`kb_milvus` "server") or on the Lite file of the rest of the benchmark.

    Milvus Lite 3.x searches in Python with a per-row loop over every segment (`milvus_lite/search/
    executor_indexed.py`: the dedup map and the live-row mask), so its search time grows with the collection
    whatever the index; a Milvus server answers from the index."""
    import copy

    from cluster.serve.pipeline import Linker
    from workers.milvus_store import MilvusStore

    server = None
    kb_cfg = copy.deepcopy(cfg)
    kb_cfg.milvus.index_type, kb_cfg.milvus.index_params = index["type"], dict(index["params"])
    if kb_milvus == "server":
        from workers.milvus_server import start_embedded_server

        server, kb_cfg.milvus.uri, _ = start_embedded_server(str(root / "milvus_server"))
    linker = Linker.from_config(kb_cfg, device="cpu")
    store = MilvusStore(kb_cfg.milvus, kb_cfg.milvus.uri)
    out = {}
    for size in sizes:
        start = time.perf_counter()
        name, catalog = synthetic_collection(cfg, base, size, index, kb_cfg.milvus.uri)
        build_s = time.perf_counter() - start
        store.swap_alias(name, drop_old=False)
        linker.retriever._collection = None  # see the swap now, not within ALIAS_REFRESH_S
        linker.retriever.collection()
        linker.retriever._load_catalog(name)
        linker.retriever._catalog.update(catalog)
        bench_in_process(linker, bodies, 1, 8)  # warm-up: the collection's first searches
        out[size] = {**bench_in_process(linker, bodies, 1, min(n, 32)), "build_s": build_s}  # Lite 100k: ~2 s
        print(f"  KB {size:>7} entities: p50 {out[size]['p50']:.1f} ms (collection built in {build_s:.0f} s)")
        if server is None:  # the HTTP runs after this serve the base collection from the same Lite file
            store.swap_alias(base, drop_old=False)
            store.drop(name)
    store.close()
    linker.close()
    if server is not None:
        server.stop()
    return out


def print_results(
    results: dict, kb: dict, layouts: list[str], levels: list[int], default: str, ingresses: list[str] = ()
) -> None:
    print(f"{'mode':<20}{'conc':>5}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}")
    for label, cells in results.items():
        for c, r in cells.items():
            print(f"{label:<20}{c:>5}{r['p50']:>10.1f}{r['p99']:>10.1f}{r['rps']:>9.1f}")

    print("\nper-stage p50 ms (timings_ms; http = client - server total; *_wait = queue + hop)")
    print(f"{'mode':<20}{'conc':>5}" + "".join(f"{s:>12}" for s in STAGES) + f"{'client':>10}")
    for label, cells in results.items():
        for c, r in cells.items():
            row = "".join(f"{r['stages'][s]:>12.2f}" if s in r["stages"] else f"{'-':>12}" for s in STAGES)
            print(f"{label:<20}{c:>5}{row}{r['p50']:>10.2f}")

    def goal(name: str, value: float, target: str, ok: bool) -> None:
        print(f"  {name:<46}{value:>9.2f}   goal {target:<8} {'met' if ok else 'NOT met'}")

    lo, hi = min(levels), max(levels)
    local = results["in-process"]
    if not layouts:
        print("\ngoals (issue 19; no HTTP runs):")
        goal(f"in-process p50 at conc {lo} (ms)", local[lo]["p50"], "<= 10", local[lo]["p50"] <= 10)
        if len(kb) > 1:
            ratio = kb[max(kb)]["p50"] / kb[min(kb)]["p50"]
            goal(f"p50 at {max(kb)} / p50 at {min(kb)} entities", ratio, "<= 1.3x", ratio <= 1.3)
        return
    on, off = f"{default} batch on", f"{default} batch off"
    print(f"\nratios (same run; HTTP = serve.layout {default}, the default):")
    for c in levels:
        a, b, here = results[on][c], results[off][c], results["in-process"][c]
        print(
            f"  conc {c:>2}: HTTP/in-process p50 {a['p50'] / here['p50']:.2f}x, "
            f"rps batch on/off {a['rps'] / b['rps']:.2f}x, p50 batch on/off {a['p50'] / b['p50']:.2f}x"
        )
    if 1 in levels and "in-process paced" in results:
        a, here, paced = (
            results[on][1],
            results["in-process"][1]["p50"],
            results["in-process paced"][1]["p50"],
        )
        hop = a["stages"].get("http", 0.0) + a["stages"].get("parse", 0.0)
        print(
            f"  conc  1: HTTP's own stages (http + parse) {hop:.2f} ms: (in-process + them) / in-process "
            f"{(here + hop) / here:.2f}x; in-process paced ({PACE_S * 1000:.0f} ms idle before each call) "
            f"{paced:.2f} ms = {paced / here:.2f}x back to back, HTTP / paced {a['p50'] / paced:.2f}x"
        )
    if len(layouts) > 1:
        for c in levels:
            cells = {lay: results[f"{lay} batch on"][c] for lay in layouts}
            print(
                f"  conc {c:>2}: layouts "
                + ", ".join(f"{lay} p50 {r['p50']:.1f} ms {r['rps']:.1f} req/s" for lay, r in cells.items())
            )

    for other in ingresses[1:]:
        for c in levels:
            a, b = results[on][c], results[f"{default} {other}"][c]
            print(
                f"  conc {c:>2}: ingress {ingresses[0]}/{other}: p50 {a['p50'] / b['p50']:.2f}x, "
                f"rps {a['rps'] / b['rps']:.2f}x"
            )

    print("\ngoals (issue 19):")
    goal(f"HTTP p50 / in-process p50 at conc {lo}", results[on][lo]["p50"] / local[lo]["p50"], "<= 1.5x",
         results[on][lo]["p50"] <= 1.5 * local[lo]["p50"])  # fmt: skip
    goal(f"in-process p50 at conc {lo} (ms)", local[lo]["p50"], "<= 10", local[lo]["p50"] <= 10)
    batching = [(lo, 0.95)]
    if hi >= 32:  # the throughput goals are stated at concurrency 32
        goal(f"HTTP req/s at conc {hi}", results[on][hi]["rps"], ">= 80", results[on][hi]["rps"] >= 80)
        batching.insert(0, (hi, 1.5))
    for c, target in batching:
        ratio = results[on][c]["rps"] / results[off][c]["rps"]
        goal(f"rps batch on / off at conc {c}", ratio, f">= {target}x", ratio >= target)
    if len(kb) > 1:
        small, big = min(kb), max(kb)
        ratio = kb[big]["p50"] / kb[small]["p50"]
        goal(f"p50 at {big} / p50 at {small} entities", ratio, "<= 1.3x", ratio <= 1.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per (mode, concurrency) cell")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument(
        "--layouts", default="single,split", help='serve.layout values to measure over HTTP ("": none)'
    )
    parser.add_argument(
        "--entities", default="120", help="KB sizes for latency vs KB size, e.g. 120,10000,100000"
    )
    parser.add_argument(
        "--kb-index", default="HNSW", help="index of the KB-size collections (FLAT, HNSW, ...)"
    )
    parser.add_argument(
        "--kb-milvus", default="lite", choices=["lite", "server"], help="where the KB-size collections live"
    )
    parser.add_argument(
        "--ingresses",
        default="haproxy,proxy",
        help="serve.ingress values: the first for every layout, the others with the default layout only",
    )
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
    from cluster.serve.app import start_serve, torch_threads
    from cluster.serve.ingress import ingress_env
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
            "serve.max_ongoing_requests=64",
            *args.set,
        ]
    )
    (root / "data").mkdir(parents=True)
    cfg.milvus.uri = server_manager_instance.start_and_get_uri(str(root / "data" / "milvus.db"))
    bodies, model_dir, base = prepare(cfg)
    threads = torch_threads(cfg.serve)  # the threads per model that the Serve replicas use
    linker = Linker.from_config(cfg, device="cpu")
    results: dict[str, dict[int, dict]] = {"in-process": {}}
    for c in levels:
        bench_in_process(linker, bodies, c, 4)
        results["in-process"][c] = bench_in_process(linker, bodies, c, cell_requests(c, args.requests))
    if 1 in levels:  # a diagnostic beside the baseline, not a goal's
        results["in-process paced"] = {1: bench_in_process(linker, bodies, 1, cell_requests(1, 0), PACE_S)}
    sizes = sorted({int(x) for x in args.entities.split(",")})
    kb = {}
    if len(sizes) > 1:
        index = {"type": args.kb_index.upper(), "params": {"M": 16, "efConstruction": 64}}
        search_params = dict(cfg.milvus.search_params)
        if index["type"] != "HNSW":
            index["params"] = dict(cfg.milvus.index_params)
        else:
            cfg.milvus.search_params = {"ef": max(64, cfg.serve.retrieve_k), **search_params}
        print(
            f"latency vs KB size (Milvus {args.kb_milvus}, {index['type']} {index['params']}, "
            f"search {cfg.milvus.search_params}, consistency {cfg.serve.consistency_level}):"
        )
        if args.kb_milvus == "server" and cfg.serve.consistency_level == "Strong":
            print("  note: Strong waits for the server's time tick; --set serve.consistency_level=Bounded")
        kb = bench_kb_sizes(cfg, bodies, base, sizes, index, args.requests, args.kb_milvus, root)
        cfg.milvus.search_params = search_params  # the HTTP runs below search the base (FLAT) collection
    for n, r in kb.items():
        results[f"in-process KB {n}"] = {1: r}
    # no gRPC channel left open when ray.init forks its processes: Ray runs Python in the forked child
    # (preexec_fn); two of four runs here timed out waiting for a raylet that never started, after gRPC's
    # "other threads are calling into gRPC, skipping fork() handlers"
    linker.close()
    del linker
    # the HTTP cells serve the file as `mel serve` does after `mel index`: this process lets go of it, so the
    # single layout's one replica opens it and searches in-process (cluster.serve.app.replica_owns_lite); the
    # split layout gets this process's Lite server again, released after its cells
    lite_file = str(root / "data" / "milvus.db")
    server_manager_instance.release_server(lite_file)
    cfg.milvus.uri = lite_file
    layouts = [x for x in args.layouts.split(",") if x]
    ingresses = [x for x in args.ingresses.split(",") if x] if layouts else []
    batch_size = cfg.serve.batch_max_size
    default = load_config().serve.layout
    for n, ingress in enumerate(ingresses):  # Serve reads its ingress switches when Ray starts: a Ray each
        cfg.serve.ingress = ingress
        env = ingress_env(cfg.serve)
        os.environ.update(env)
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **env}},
        )
        cells = [(lay, on_off, size) for lay in layouts for on_off, size in (("on", batch_size), ("off", 1))]
        if n > 0:  # a comparison ingress: the default layout with batching
            cells = [(default if default in layouts else layouts[0], "on", batch_size)]
        for layout, on_off, size in cells:
            cfg.serve.layout, cfg.serve.batch_max_size = layout, size
            url = start_serve(cfg)
            label = f"{layout} batch {on_off}" if n == 0 else f"{layout} {ingress}"
            results[label] = {c: bench_http(url, bodies, c, cell_requests(c, args.requests)) for c in levels}
            serve.delete("mel")
            server_manager_instance.release_server(lite_file)  # if this process served it (split)
        serve.shutdown()
        ray.shutdown()
    print(
        f"\nbench_serve: {len(bodies)} entities, {args.requests} requests per cell, model {model_dir}, "
        f"batch_max_size {batch_size}, torch threads {threads}, host CPUs {os.cpu_count()}"
    )
    if kb:
        print(
            f"latency vs KB size (in-process, conc 1, Milvus {args.kb_milvus}, "
            f"{cfg.serve.consistency_level}): "
            + ", ".join(f"{n}: p50 {r['p50']:.1f} ms" for n, r in kb.items())
        )
    print_results(
        results, kb, layouts, levels, default if default in layouts or not layouts else layouts[0], ingresses
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
