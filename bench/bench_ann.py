"""Milvus ANN vs exact brute force (numpy) on clustered random vectors: recall@10/@100 and queries/s per index.

    python3 bench/bench_ann.py --n 100000 --dim 512 --queries 200
    python3 bench/bench_ann.py --n 1000000 --index-types HNSW,IVF_FLAT     # if time and memory allow
    python3 bench/bench_ann.py --n 1000000 --dim 800 --server --consistency Bounded --index-types HNSW \
        --build-params '{"efConstruction": 100}'                           # 1M on the embedded server

The data are unit vectors around `--clusters` random centres (like CLIP embeddings: many near neighbours), and
queries come from the same distribution. Rows are inserted once; each index type is then built on the same
collection (drop_index/create_index), so every row of the table searches identical data. `speedup` = the
index's batched queries/s / exact numpy queries/s measured in the same run. The index types tried are the ones
this Milvus build can construct (Milvus Lite: workers.milvus_store.lite_index_types()).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.config import MilvusConfig  # noqa: E402
from workers.milvus_store import MilvusStore, hit_id, is_lite, lite_index_types  # noqa: E402

# Build / search parameters per index type (search ef must be >= top_k for HNSW).
PARAMS = {
    "FLAT": ({}, {}),
    "AUTOINDEX": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
    "HNSW_SQ": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
}
ORDER = ["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ", "AUTOINDEX"]


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator, centres=None, chunk: int = 50_000):
    """Unit vectors: a random centre plus noise of about 0.7x the centre's norm. Built in float32 chunks, so
    1M x 800-d takes its 3.2 GB once (float64 temporaries would need four times that)."""
    if centres is None:
        centres = rng.normal(size=(clusters, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)]
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(0.7 / np.sqrt(dim))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int, chunk: int = 50_000) -> np.ndarray:
    """Exact inner-product top-k ids per query, chunked over the data to bound memory."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(data), chunk):
        scores = queries @ data[start : start + chunk].T  # [Q, chunk]
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def loaded_segments(client, name: str) -> str:
    """'loaded/indexed' sealed segments on a server (each one an index and a search task); '-' on Lite."""
    try:
        infos = client.list_loaded_segments(name)
    except Exception:  # Milvus Lite has no segment listing
        return "-"
    return f"{len(infos)}/{sum(1 for i in infos if i.index_name)}"


def measure(client, name: str, sp: dict, queries: np.ndarray, consistency: str, repeats: int = 3):
    """(single q/s, single p50 ms, batched q/s, batched top-100 ids): 50 one-query calls at limit 10, as a serving
    replica sends them, then every query in one call at limit 100, `repeats` times (median) after one untimed
    call: the first search after a load runs cold (a 1M run measured ef 128 slower than ef 192 without it)."""

    def search(data: list, limit: int):
        return client.search(
            name, data=data, limit=limit, search_params=sp, output_fields=[], consistency_level=consistency
        )

    search(queries.tolist(), 100)
    singles = []
    for q in queries[: min(50, len(queries))]:
        start = time.perf_counter()
        search([q.tolist()], 10)
        singles.append(time.perf_counter() - start)
    batched = []
    for _ in range(repeats):
        start = time.perf_counter()
        hits = search(queries.tolist(), 100)
        batched.append(time.perf_counter() - start)
    found = [[int(hit_id(h)) for h in q] for q in hits]
    batch_qps = len(queries) / float(np.median(batched))
    return len(singles) / sum(singles), 1000 * float(np.median(singles)), batch_qps, found


def recall(found: list[list[int]], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--index-types", default="", help="comma list (default: every type this Milvus builds)"
    )
    parser.add_argument("--uri", default="", help="Milvus URI (default: a temp Milvus Lite file)")
    parser.add_argument("--consistency", default="Strong", help="Strong | Bounded | Session | Eventually")
    parser.add_argument(
        "--server", action="store_true", help="start the embedded Milvus 2.3 server and use it"
    )
    parser.add_argument(
        "--build-params",
        default="{}",
        help='JSON merged into each type\'s build params, e.g. {"efConstruction": 100}',
    )
    parser.add_argument(
        "--search-params",
        default="{}",
        help='JSON merged into each search; a list sweeps them on one build: [{"ef": 128}, {"ef": 256}]',
    )
    parser.add_argument(
        "--segment-mb", type=int, default=0, help="with --server: dataCoord.segment.maxSize (0 = 512 MB)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    data, centres = clustered(args.n, args.dim, args.clusters, rng)
    queries, _ = clustered(args.queries, args.dim, args.clusters, rng, centres)
    start = time.perf_counter()
    truth = exact_top_k(data, queries, 100)
    exact_qps = args.queries / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        uri = args.uri or str(Path(tmp) / "milvus.db")
        server = None
        if args.server:
            from workers.milvus_server import start_embedded_server

            server, uri, _ = start_embedded_server(str(Path(tmp) / "server"), segment_max_mb=args.segment_mb)
        wanted = [t.strip().upper() for t in args.index_types.split(",") if t.strip()]
        available = lite_index_types() if is_lite(uri) else set(ORDER)
        types = [t for t in (wanted or ORDER) if t in available]
        store = MilvusStore(MilvusConfig(collection="ann", index_type="FLAT", insert_batch_size=5000), uri)
        name = "ann_v1"
        if store.exists(name):
            store.drop(name)
        store.create(name, args.dim)
        start = time.perf_counter()
        for lo in range(0, args.n, 20_000):  # bounded upsert requests
            rows = data[lo : lo + 20_000]
            store.upsert(name, [{"entity_id": str(lo + i), "vector": v} for i, v in enumerate(rows)])
        store.flush(name)
        ingest_s = time.perf_counter() - start
        print(
            f"ANN benchmark: {args.n} x {args.dim}-d clustered unit vectors ({args.clusters} clusters), "
            f"{args.queries} queries, metric IP, consistency {args.consistency}, uri {uri}"
        )
        print(
            f"ingest {ingest_s:.1f} s ({args.n / ingest_s:.0f} rows/s); exact numpy top-100: {exact_qps:.1f} q/s"
        )
        header = (
            f"{'index':>9} | {'build / search params':>56} | {'build s':>7} | {'recall@10':>9} | {'recall@100':>10} | "
            f"{'segments':>8} | {'q/s (1)':>7} | {'p50 ms (1)':>10} | {'q/s (batch)':>11} | {'speedup':>7}"
        )
        print(header + "\n" + "-" * len(header))
        client = store.client
        build_extra, search_variants = json.loads(args.build_params), json.loads(args.search_params)
        search_variants = search_variants if isinstance(search_variants, list) else [search_variants]
        for index_type in types:
            build, search = PARAMS[index_type]
            build = {**build, **build_extra} if build else build
            client.release_collection(name)
            client.drop_index(name, "vector")
            spec = client.prepare_index_params()
            spec.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=build)
            start = time.perf_counter()
            try:
                client.create_index(name, spec)
            except (
                Exception
            ) as exc:  # a long build can outlive the gRPC keepalive: the retried call finds it built
                if "already exists" not in str(exc):
                    raise
            client.load_collection(name)
            build_s = time.perf_counter() - start
            segments = loaded_segments(client, name)
            for variant in search_variants if search else [{}]:  # FLAT, AUTOINDEX: nothing to sweep
                sp = {"metric_type": "IP", "params": {**search, **variant} if search else search}
                single_qps, single_p50_ms, batch_qps, found = measure(
                    client, name, sp, queries, args.consistency
                )
                params = f"{build or '-'} / {sp['params'] or '-'}"
                print(
                    f"{index_type:>9} | {params:>56} | {build_s:>7.1f} | {recall(found, truth, 10):>9.3f} | "
                    f"{recall(found, truth, 100):>10.3f} | {segments:>8} | {single_qps:>7.1f} | "
                    f"{single_p50_ms:>10.1f} | {batch_qps:>11.1f} | {batch_qps / exact_qps:>7.2f}"
                )
        store.drop(name)
        store.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
