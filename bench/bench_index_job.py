"""The whole indexing job (`mel kb build` + `mel index`, as a user runs them) against its own encoding pipeline.

A synthetic KB of `--entities` entities (names, aliases, descriptions, types; no images) is written as
Parquet, then, each timed in this one run:
  * `mel kb build` and `mel index`, as subprocesses (the whole commands: start-up, Ray, Milvus, writes);
  * `pipeline only`: `workers.ray_pool.EncodingPool` (the path `mel index` takes) from nothing over the same
    entity rows, read beforehand, with nothing written: the rate the job would have if writing were free.
Prints entities/s of each, the ratio job / pipeline (issue 18's goal: >= 0.8 at 1M entities, on Lite and on
the server), and the job's own stage breakdown (`IndexReport.stages`: what the driver waited on, and the
writer thread's Milvus upsert, flush and feature-file time, which overlaps the encoders).

    python3 bench/bench_index_job.py --entities 100000 [--milvus lite|server [--ingest bulk_import]] [--rows-per-shard 100000]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def write_entities(path: Path, n: int) -> None:
    """Parquet input of `n` synthetic entities, written in chunks (bench_kb_build's table, without images)."""
    import pyarrow.parquet as pq
    from bench_kb_build import GENERATE_CHUNK_ROWS, synthetic_entities

    writer = None
    for start in range(0, n, GENERATE_CHUNK_ROWS):
        table = synthetic_entities(start, min(GENERATE_CHUNK_ROWS, n - start)).drop("image").to_arrow()
        writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()


def mel(overrides: list[str], *command: str) -> tuple[float, str]:
    """Run `mel --set ... <command>` to completion; -> (wall seconds, its output)."""
    args = (
        [sys.executable, "-m", "cluster.cli"] + [a for o in overrides for a in ("--set", o)] + list(command)
    )
    start = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return wall, done.stdout + done.stderr


def pipeline_only(cfg, n: int) -> float:
    """EncodingPool from nothing over the KB's entity rows (read first, untimed) -> entities/s."""
    from bench_index_pipeline import pool_cold_run

    from cluster.artifacts import serving_model_dir
    from cluster.runtime import init_ray
    from kb_builder.shards import entity_shard_uris, read_shard
    from kb_builder.storage import Storage
    from workers.index_job import allowed_image_roots

    storage = Storage(cfg.storage)
    rows = [r for uri in entity_shard_uris(storage, cfg.kb.name) for r in read_shard(storage, uri).to_dicts()]
    assert len(rows) == n, (len(rows), n)
    size = cfg.encoder.batch_size
    batches = [rows[s : s + size] for s in range(0, n, size)]
    init_ray(cfg.ray)
    roots = allowed_image_roots(storage, cfg.kb)
    encoded, seconds = pool_cold_run(batches, serving_model_dir(cfg), cfg.encoder, cfg.storage, roots)
    assert encoded == n, (encoded, n)
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--milvus", choices=["lite", "server"], default="lite")
    parser.add_argument("--rows-per-shard", type=int, default=100_000)
    parser.add_argument(
        "--ingest",
        choices=["upsert", "bulk_import"],
        default="upsert",
        help="bulk_import: --milvus server only",
    )
    parser.add_argument(
        "--set", action="append", default=[], help="extra config overrides, section.key=value"
    )
    args = parser.parse_args()

    from cluster.config import load_config

    root = Path(tempfile.mkdtemp(prefix="bench-index-job-"))
    source = root / "entities.parquet"
    t0 = time.perf_counter()
    write_entities(source, args.entities)
    print(f"input: {args.entities:,} synthetic entities in {time.perf_counter() - t0:.1f} s -> {source}")
    server = None
    overrides = [
        f"storage.root={root / 'data'}",
        f"storage.cache_dir={root / 'cache'}",
        "kb.name=bench",
        "kb.sample=false",
        f"kb.entity_inputs=[{source}]",
        f"kb.rows_per_shard={args.rows_per_shard}",
        *args.set,
    ]
    if args.milvus == "server":
        from workers.milvus_server import start_embedded_server

        server, uri, local_storage = start_embedded_server(str(root / "milvus_server"))
        overrides.append(f"milvus.uri={uri}")
        if args.ingest == "bulk_import":  # Parquet files on the server's own disk, then Import
            overrides += ["milvus.ingest=bulk_import", f"milvus.bulk_dir={local_storage}/mel-bulk"]
    try:
        build_s, _ = mel(overrides, "kb", "build")
        index_s, out = mel(overrides, "index")
        summary = [
            line.strip()
            for line in out.splitlines()
            if line.strip().startswith(("index (", "indexed", "shards", "stages:"))
        ]
        cfg = load_config(overrides=overrides)
        pipeline_rate = pipeline_only(cfg, args.entities)
    finally:
        if server is not None:
            server.stop()
    job_rate = args.entities / index_s
    inner = re.search(r"([\d.]+) s, ([\d.]+) entities/s", out)
    print(
        f"\nbench_index_job: {args.entities:,} entities, Milvus {args.milvus} ({args.ingest}), tiny model, "
        f"{cfg.encoder.num_actors} encoder actor(s), batch {cfg.encoder.batch_size}, {args.rows_per_shard:,} rows/shard"
    )
    print(f"  mel kb build            {build_s:8.1f} s   {args.entities / build_s:10,.0f} entities/s")
    print(
        f"  mel index (command)     {index_s:8.1f} s   {job_rate:10,.0f} entities/s"
        + (
            f"   (job inside the command: {float(inner.group(1)):.1f} s, {float(inner.group(2)):,.0f}/s)"
            if inner
            else ""
        )
    )
    print(
        f"  pipeline only           {args.entities / pipeline_rate:8.1f} s   {pipeline_rate:10,.0f} entities/s"
    )
    print(f"  job / pipeline: {job_rate / pipeline_rate:.2f}x (goal >= 0.8)")
    for line in summary:
        print(f"  {line}")


if __name__ == "__main__":
    main()
