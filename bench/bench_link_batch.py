"""Mentions/s of `mel link-batch` (Ray Data actor pool) vs an in-process `Linker.link` loop vs `/link` over HTTP.

One run, the sample KB, the untrained tiny model (`models/init`), images included. Each mode links the same
mentions (the KB's test mentions, repeated with fresh ids up to --mentions for the batch run):
  * `loop`: `cluster.serve.pipeline.Linker.link([one mention])` in a plain loop (no Ray, no HTTP),
  * `http`: POST /link at concurrency --concurrency against the Ray Serve app (`@serve.batch` on),
  * `batch`: `run_link_batch` end to end (read, validate, actor start-up, link, write Parquet, summary).
Prints rows/s and the ratios batch/http and batch/loop, all measured side by side in this one run.

    python3 bench/bench_link_batch.py [--mentions 2000] [--requests 256] [--concurrency 32] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def mention_rows(cfg, n: int) -> list[dict]:
    """The KB's test mentions repeated with fresh ids up to `n` rows."""
    from kb_builder.shards import read_mentions
    from kb_builder.storage import Storage

    test = read_mentions(Storage(cfg.storage), cfg.kb.name, split="test")
    base = test.select("mention_id", "mention", "context", "image_uri", "gold_entity_id").to_dicts()
    return [{**base[i % len(base)], "mention_id": f"m{i:08d}"} for i in range(n)]


def bench_loop(linker, images, rows: list[dict], top_k: int) -> float:
    from cluster.serve.pipeline import MentionQuery

    start = time.perf_counter()
    for r in rows:
        linker.link([MentionQuery(r["mention"], r["context"] or "", images.load(r["image_uri"])[0], top_k)])
    return len(rows) / (time.perf_counter() - start)


def bench_http(url: str, rows: list[dict], concurrency: int, top_k: int) -> float:
    import asyncio

    from bench.bench_serve import _bench_http

    bodies = []
    for r in rows:
        body = {"mention": r["mention"], "context": r["context"] or "", "top_k": top_k}
        if r["image_uri"]:
            body["image"] = base64.b64encode(Path(r["image_uri"]).read_bytes()).decode()
        bodies.append(body)
    asyncio.run(_bench_http(url, bodies, concurrency, concurrency))  # warm-up
    return asyncio.run(_bench_http(url, bodies, concurrency, len(bodies)))["rps"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mentions", type=int, default=2000, help="rows for the link-batch run")
    parser.add_argument("--requests", type=int, default=256, help="requests for the HTTP run")
    parser.add_argument("--loop", type=int, default=128, help="mentions for the in-process loop")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()

    import torch
    from milvus_lite.server_manager import server_manager_instance
    from ray import serve

    from bench.bench_serve import free_port, prepare
    from cluster.batch.run import run_link_batch
    from cluster.config import load_config
    from cluster.runtime import init_ray
    from cluster.serve.app import start_serve
    from cluster.serve.pipeline import Linker
    from workers.images import ImageLoader

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(tempfile.mkdtemp(prefix="bench-link-batch-"))
    sets = [f"storage.root={root / 'data'}", f"storage.cache_dir={root / 'cache'}", "kb.sample_entities=120"]
    sets += [
        "kb.sample_mentions=400",
        f"serve.port={free_port()}",
        "serve.max_ongoing_requests=64",
        "serve.access_log=false",
        *args.set,
    ]
    cfg = load_config(overrides=sets)
    (root / "data").mkdir(parents=True)
    cfg.milvus.uri = server_manager_instance.start_and_get_uri(str(root / "data" / "milvus.db"))
    prepare(cfg)  # sample KB, models/init, one indexed collection behind the alias
    rows, top_k = mention_rows(cfg, args.mentions), cfg.batch.top_k

    torch.set_num_threads(1)  # one thread per model, as the Serve replicas and batch actors get one CPU share
    linker = Linker.from_config(cfg, device="cpu")
    images = ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb)
    bench_loop(linker, images, rows[:4], top_k)
    loop_rps = bench_loop(linker, images, rows[: args.loop], top_k)
    del linker

    init_ray(cfg.ray)
    url = start_serve(cfg)
    http_rps = bench_http(url, rows[: args.requests], args.concurrency, top_k)
    serve.shutdown()  # free the CPUs for the batch actors

    src = root / "mentions.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = run_link_batch(cfg, [str(src)], str(root / "out"), progress=False)
    print(report.summary())
    print(
        f"\nbench_link_batch: {len(rows)} batch rows, {args.requests} HTTP requests at concurrency "
        f"{args.concurrency}, {args.loop} loop mentions; batch.actors={cfg.batch.actors}, "
        f"batch_size={cfg.batch.batch_size}; host CPUs {os.cpu_count()}"
    )
    print(f"{'mode':<12}{'mentions/s':>12}")
    for label, rate in (("loop", loop_rps), ("http c32", http_rps), ("link-batch", report.rows_per_s)):
        print(f"{label:<12}{rate:>12.1f}")
    print(
        f"ratios (same run): link-batch/http {report.rows_per_s / http_rps:.2f}x, "
        f"link-batch/loop {report.rows_per_s / loop_rps:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
