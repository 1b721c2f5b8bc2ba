"""Mentions/s of `mel link-batch` (Ray Data actor pool) vs an in-process `Linker.link` loop vs `/link` over HTTP.

One run, the sample KB, the untrained tiny model (`models/init`), images included. Every mode links synthetic
mentions made from the KB's own mentions (all splits, cycled with fresh ids: `synthetic_mentions`):
  * `loop`: `cluster.serve.pipeline.Linker.link([one mention])` in a plain loop (no Ray, no HTTP),
  * `http`: POST /link at concurrency --concurrency against the Ray Serve app,
  * `link-batch`: `run_link_batch` over --rows mentions, end to end (read, validate, Ray Data and actor
    start-up, link, write Parquet, summary) and after start-up (the fixed cost of starting the pool taken
    out: what a long run approaches), with the per-stage breakdown of its time.
Prints mentions/s and the ratios link-batch/http and link-batch/loop, all measured side by side in this one run.

    python3 bench/bench_link_batch.py [--rows 20000] [--requests 256] [--concurrency 32] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def synthetic_mentions(cfg, n: int) -> Iterator[dict]:
    """`n` mention rows: the KB's mentions (all splits, with their gold ids and images) cycled with fresh ids."""
    from kb_builder.shards import read_mentions
    from kb_builder.storage import Storage

    cols = ["mention_id", "mention", "context", "image_uri", "gold_entity_id"]
    base = read_mentions(Storage(cfg.storage), cfg.kb.name).select(cols).to_dicts()
    for i in range(n):
        yield {**base[i % len(base)], "mention_id": f"m{i:08d}"}


def write_mentions(rows: Iterable[dict], path: Path) -> Path:
    """JSONL, streamed: a million rows never sit in memory as dicts."""
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


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
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic mentions for the link-batch run")
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
    from cluster.serve.ingress import ingress_env
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
    top_k = cfg.batch.top_k
    sample = list(synthetic_mentions(cfg, max(args.loop, args.requests, 4)))

    torch.set_num_threads(1)  # one thread per model, as the Serve replicas and batch actors get one CPU share
    linker = Linker.from_config(cfg, device="cpu")
    images = ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb)
    bench_loop(linker, images, sample[:4], top_k)
    loop_rps = bench_loop(linker, images, sample[: args.loop], top_k)
    del linker

    init_ray(cfg.ray, env=ingress_env(cfg.serve))  # /link as `mel serve` runs it (serve.ingress)
    url = start_serve(cfg)
    http_rps = bench_http(url, sample[: args.requests], args.concurrency, top_k)
    serve.shutdown()  # free the CPUs for the batch actors

    src = write_mentions(synthetic_mentions(cfg, args.rows), root / "mentions.jsonl")
    report = run_link_batch(cfg, [str(src)], str(root / "out"), progress=False)
    print(report.summary())
    b = cfg.batch
    print(
        f"\nbench_link_batch: {args.rows:,} link-batch rows, {args.requests} HTTP requests at concurrency "
        f"{args.concurrency}, {args.loop} loop mentions; batch.actors={b.actors}, batch_size={b.batch_size}, "
        f"num_cpus_per_actor={b.num_cpus_per_actor}; host CPUs {os.cpu_count()}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    st = report.stages
    print(
        f"link-batch time: setup {st.setup_s:.1f} s, read {st.read_s:.1f} s, plan (Ray Data dataset) "
        f"{st.plan_s:.1f} s, start-up (Ray Data executor + actor start and model load) {st.startup_s:.1f} s, "
        f"linking {st.link_s:.1f} s, summary {st.summary_s:.1f} s; actor time per row: "
        + ", ".join(
            f"{name} {seconds / max(report.linked_this_run, 1) * 1000:.2f} ms"
            for name, seconds in (
                ("images", st.image_s),
                ("encode", st.encode_s),
                ("search", st.search_s),
                ("rerank", st.rerank_s),
                ("assemble", st.assemble_s),
            )
        )
        + f"; driver writes {st.write_s:.1f} s"
    )
    rates = (
        ("loop", loop_rps),
        (f"http c{args.concurrency}", http_rps),
        ("link-batch end to end", report.rows_per_s),
        ("link-batch after start-up", report.steady_rows_per_s),
    )
    print(f"{'mode':<28}{'mentions/s':>12}{'/ http':>9}{'/ loop':>9}")
    for label, rate in rates:
        print(f"{label:<28}{rate:>12.1f}{rate / http_rps:>8.2f}x{rate / loop_rps:>8.2f}x")
    print(
        f"goal link-batch >= 5x http: end to end {report.rows_per_s / http_rps:.2f}x, after start-up "
        f"{report.steady_rows_per_s / http_rps:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
