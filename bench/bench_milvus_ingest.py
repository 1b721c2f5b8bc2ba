"""Ingest rate into Milvus Lite: MilvusStore.upsert (validated, keyed) vs raw MilvusClient.insert, per batch size.

    python3 bench/bench_milvus_ingest.py --rows 20000 --dim 800 --batch-sizes 500,2000,5000

Prints one table; `ratio` = MilvusStore.upsert rows/s / raw insert rows/s measured in the same run (the cost of
our per-row checks and upsert semantics). `re-upsert` writes the same ids again: the count must not change.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=800, help="800 = MMoE retrieval dim on ViT-B/32")
    parser.add_argument("--batch-sizes", default="500,2000,5000")
    parser.add_argument("--index", default="FLAT")
    parser.add_argument("--uri", default="", help="Milvus URI (default: a temp Milvus Lite file)")
    args = parser.parse_args(argv)

    rows = make_rows(args.rows, args.dim)
    raw_rows = [dict(r, vector=r["vector"].tolist()) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.uri or str(Path(tmp) / "milvus.db")
        print(f"Milvus ingest: {args.rows} rows x {args.dim}-d, index {args.index}, uri {uri}")
        header = (
            f"{'batch':>6} | {'raw insert rows/s':>17} | {'upsert rows/s':>13} | {'ratio':>5} | "
            f"{'flush s':>7} | {'re-upsert rows/s':>16} | count"
        )
        print(header + "\n" + "-" * len(header))
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            store = MilvusStore(
                MilvusConfig(collection="bench", index_type=args.index, insert_batch_size=batch), uri
            )
            raw, ours = f"bench_raw_{batch}", f"bench_v{batch}"
            for name in (raw, ours):
                if store.exists(name):
                    store.drop(name)
                store.create(name, args.dim)
            raw_s = timed(insert_raw, store, raw, raw_rows, batch)
            upsert_s = timed(store.upsert, ours, rows)
            flush_s = timed(store.flush, ours)
            again_s = timed(store.upsert, ours, rows)
            store.flush(ours)
            count = store.count(ours)
            ok = "ok" if count == args.rows else f"WRONG {count}"
            print(
                f"{batch:>6} | {args.rows / raw_s:>17.0f} | {args.rows / upsert_s:>13.0f} | "
                f"{raw_s / upsert_s:>5.2f} | {flush_s:>7.2f} | {args.rows / again_s:>16.0f} | {ok}"
            )
            store.drop(raw)
            store.drop(ours)
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
