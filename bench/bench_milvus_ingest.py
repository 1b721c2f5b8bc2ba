"""Ingest rate into Milvus Lite: MilvusStore.upsert (validated, keyed) vs raw MilvusClient.insert, per batch size.

    python3 bench/bench_milvus_ingest.py --rows 20000 --dim 800 --batch-sizes 500,2000,5000

Prints one table; `ratio` = MilvusStore.upsert rows/s / raw insert rows/s measured in the same run. The raw
rows arrive as Python float lists, converted before the clock; `MilvusStore.upsert` takes numpy vectors and pays
for their checks and conversion (`checks s`: `MilvusStore.checked_rows` alone) and for upsert semantics (`raw
upsert`: `MilvusClient.upsert` of the ready rows). `re-upsert` writes the same ids again: the count must not
change.

    python3 bench/bench_milvus_ingest.py --rows 20000 --dim 800 --server

`--server` instead compares, on the same rows: Lite upsert, upsert into the embedded Milvus 2.3 server (PyPI
`milvus`, started here) and bulk import into it (Parquet on its disk + Import, until every row is visible).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.config import MilvusConfig  # noqa: E402
from workers.milvus_store import MilvusStore  # noqa: E402


def make_rows(n: int, dim: int, seed: int = 0) -> list[dict]:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return [
        {
            "entity_id": f"Q{i}",
            "vector": vectors[i],
            "name": f"entity {i}",
            "has_image": bool(i % 2),
            "content_hash": f"{i:064x}",
        }
        for i in range(n)
    ]


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def insert_raw(store: MilvusStore, name: str, rows: list[dict], batch: int) -> None:
    for start in range(0, len(rows), batch):
        store.client.insert(name, rows[start : start + batch])


def upsert_raw(store: MilvusStore, name: str, rows: list[dict], batch: int) -> None:
    for start in range(0, len(rows), batch):
        store.client.upsert(name, rows[start : start + batch])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=800, help="800 = MMoE retrieval dim on ViT-B/32")
    parser.add_argument("--batch-sizes", default="500,2000,5000")
    parser.add_argument("--index", default="FLAT")
    parser.add_argument("--uri", default="", help="Milvus URI (default: a temp Milvus Lite file)")
    parser.add_argument("--server", action="store_true", help="Lite vs server upsert vs server bulk import")
    args = parser.parse_args(argv)
    if args.server:
        return compare_server(args)

    rows = make_rows(args.rows, args.dim)
    raw_rows = [dict(r, vector=r["vector"].tolist()) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.uri or str(Path(tmp) / "milvus.db")
        print(f"Milvus ingest: {args.rows} rows x {args.dim}-d, index {args.index}, uri {uri}")
        header = (
            f"{'batch':>6} | {'raw insert rows/s':>17} | {'raw upsert rows/s':>17} | {'upsert rows/s':>13} | "
            f"{'ratio':>5} | {'checks s':>8} | {'flush s':>7} | {'re-upsert rows/s':>16} | count"
        )
        print(header + "\n" + "-" * len(header))
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            store = MilvusStore(
                MilvusConfig(collection="bench", index_type=args.index, insert_batch_size=batch), uri
            )
            raw, raw_up, ours = f"bench_raw_{batch}", f"bench_rawup_{batch}", f"bench_v{batch}"
            for name in (raw, raw_up, ours):
                if store.exists(name):
                    store.drop(name)
                store.create(name, args.dim)
            raw_s = timed(insert_raw, store, raw, raw_rows, batch)
            raw_up_s = timed(upsert_raw, store, raw_up, raw_rows, batch)
            checks_s = timed(store.checked_rows, ours, rows)
            upsert_s = timed(store.upsert, ours, rows)
            flush_s = timed(store.flush, ours)
            again_s = timed(store.upsert, ours, rows)
            store.flush(ours)
            count = store.count(ours)
            ok = "ok" if count == args.rows else f"WRONG {count}"
            print(
                f"{batch:>6} | {args.rows / raw_s:>17.0f} | {args.rows / raw_up_s:>17.0f} | "
                f"{args.rows / upsert_s:>13.0f} | {raw_s / upsert_s:>5.2f} | {checks_s:>8.2f} | {flush_s:>7.2f} | "
                f"{args.rows / again_s:>16.0f} | {ok}"
            )
            store.drop(raw_up)
            store.drop(raw)
            store.drop(ours)
            store.close()
    return 0


def compare_server(args) -> int:
    """Lite upsert vs server upsert vs server bulk import of the same rows, one run, rows/s and ratios."""
    from types import SimpleNamespace

    from workers.milvus_server import bulk_import, start_embedded_server

    rows = make_rows(args.rows, args.dim)
    batch = SimpleNamespace(
        ids=[r["entity_id"] for r in rows],
        vectors=np.stack([r["vector"] for r in rows]),
        names=[r["name"] for r in rows],
        has_image=np.array([r["has_image"] for r in rows]),
        content_hashes=[r["content_hash"] for r in rows],
    )
    cfg = MilvusConfig(collection="bench", index_type=args.index, insert_batch_size=2000)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        lite = MilvusStore(cfg, str(Path(tmp) / "milvus.db"))
        lite.create("bench_v1", args.dim)
        results["Lite upsert"] = timed(lambda: (lite.upsert("bench_v1", rows), lite.flush("bench_v1")))
        assert lite.count("bench_v1") == args.rows
        lite.close(release_file=True)
        server, uri, local = start_embedded_server(str(Path(tmp) / "server"))
        try:
            store = MilvusStore(cfg, uri)
            store.create("bench_v1", args.dim)
            results["server upsert"] = timed(
                lambda: (store.upsert("bench_v1", rows), store.flush("bench_v1"))
            )
            assert store.count("bench_v1") == args.rows
            store.create("bench_v2", args.dim)
            from kb_builder.config import StorageConfig
            from kb_builder.storage import Storage

            storage = Storage(StorageConfig(root=local, cache_dir=str(Path(tmp) / "cache")))
            results["server bulk import"] = timed(
                bulk_import, store, "bench_v2", storage, f"{local}/bench", [batch], ""
            )
            assert store.count("bench_v2") == args.rows
            store.close()
        finally:
            server.stop()
    base = results["Lite upsert"]
    print(f"Milvus ingest, same {args.rows} rows x {args.dim}-d, index {args.index} (shared machine: ratios)")
    for name, seconds in results.items():
        print(f"{name:>20} | {args.rows / seconds:>9.0f} rows/s | {base / seconds:>5.2f}x Lite upsert")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
