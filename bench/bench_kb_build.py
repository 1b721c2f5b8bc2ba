"""KB build throughput and peak memory: the streaming `build_kb` vs an eager read-everything baseline.

Both sides run the same canonical mapping, validation, content hashing and shard writing; they differ only in
how rows arrive: `stream` reads bounded batches (pyarrow row batches / chunked JSON lines), `eager` reads
the whole file with one `pl.read_parquet` / `pl.read_ndjson` first. Each side runs in its own child
process, so peak RSS (ru_maxrss) is that side's alone. Rows are synthetic (see kb_builder.sample_kb).

    python3 bench/bench_kb_build.py --rows 1000000 --format parquet
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from kb_builder.build import build_kb
from kb_builder.canonical import entities_from
from kb_builder.config import KBConfig, StorageConfig
from kb_builder.diff import kb_version
from kb_builder.readers.base import LOCATION, Batch
from kb_builder.sample_kb import FIELDS, PLACES, SYLLABLES, TYPES
from kb_builder.schema import content_hash_expr
from kb_builder.shards import ShardWriter
from kb_builder.validate import Validator

GENERATE_CHUNK_ROWS = 250_000


def synthetic_entities(start: int, n_rows: int) -> pl.DataFrame:
    """Rows `start .. start+n_rows` of a deterministic synthetic entity table (vectorised, no Python loop)."""
    i = pl.int_range(start, start + n_rows, eager=True)
    syl = pl.Series(SYLLABLES)
    name = (syl.gather(i % 70) + syl.gather((i // 70) % 70) + syl.gather((i // 4900) % 70)).str.to_titlecase()
    kind, place = pl.Series(TYPES).gather(i % len(TYPES)), pl.Series(PLACES).gather((i // 7) % len(PLACES))
    field = pl.Series(FIELDS).gather((i // 3) % len(FIELDS))
    ids = "E" + i.cast(pl.String).str.zfill(9)
    aliases = pl.select(
        pl.concat_list([name + " " + place.str.to_titlecase(), name.str.slice(0, 4)])
    ).to_series()
    return pl.DataFrame(
        {
            "id": ids,
            "name": name,
            "aliases": aliases,
            "description": name
            + " is a "
            + kind
            + " of the "
            + place
            + " known for "
            + field
            + ". A synthetic entity for the build benchmark, row "
            + i.cast(pl.String)
            + ".",
            "image": "images/" + ids + ".png",
            "type": kind,
        }
    )


def write_input(path: Path, n_rows: int, fmt: str) -> None:
    """The input file, written chunk by chunk so generating it never holds the whole table."""
    writer = None
    with open(path, "wb") as jsonl:
        for start in range(0, n_rows, GENERATE_CHUNK_ROWS):
            chunk = synthetic_entities(start, min(GENERATE_CHUNK_ROWS, n_rows - start))
            if fmt == "jsonl":
                chunk.write_ndjson(jsonl)
                continue
            table = chunk.to_arrow()
            writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
    if writer is not None:
        writer.close()


def run_stream(input_path: Path, out: Path, rows_per_shard: int) -> int:
    kb = KBConfig(name="bench", sample=False, entity_inputs=[str(input_path)], rows_per_shard=rows_per_shard)
    report = build_kb(kb, StorageConfig(root=str(out / "data"), cache_dir=str(out / "cache")), progress=True)
    return report.entities


def run_eager(input_path: Path, out: Path, rows_per_shard: int) -> int:
    """The baseline: one full read, then the same mapping, validation, hashing and shard writing."""
    reader = pl.read_ndjson if input_path.suffix == ".jsonl" else pl.read_parquet
    frame = reader(input_path)
    frame = frame.with_columns(
        (pl.lit(f"{input_path}:row ") + pl.int_range(1, frame.height + 1).cast(pl.String)).alias(LOCATION)
    )
    kb = KBConfig(name="bench", sample=False, rows_per_shard=rows_per_shard)
    good, _ = Validator(kb, "entities")(
        entities_from(Batch(frame, str(input_path), str(input_path.parent), 1.0), kb.column_map)
    )
    writer = ShardWriter(out / "eager", "entities", rows_per_shard)
    writer.add(good.with_columns(content_hash_expr().alias("content_hash")))
    shards = writer.close()
    kb_version([out / "eager" / s["path"] for s in shards])
    return writer.rows


def child(mode: str, input_path: Path, out: Path, rows_per_shard: int) -> None:
    start_s = time.perf_counter()
    rows = (run_stream if mode == "stream" else run_eager)(input_path, out, rows_per_shard)
    seconds = time.perf_counter() - start_s
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime  # on a shared machine wall time mostly measures the neighbours
    peak_rss_mb = usage.ru_maxrss / 1024  # Linux: KiB
    print(
        json.dumps(
            {"mode": mode, "rows": rows, "seconds": seconds, "cpu_s": cpu_s, "peak_rss_mb": peak_rss_mb}
        )
    )


def measure(mode: str, input_path: Path, out: Path, rows_per_shard: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--input",
        str(input_path),
        "--out",
        str(out / mode),
        "--rows-per-shard",
        str(rows_per_shard),
    ]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--format", choices=["parquet", "jsonl"], default="parquet")
    parser.add_argument("--rows-per-shard", type=int, default=100_000)
    parser.add_argument("--modes", default="stream,eager")
    parser.add_argument("--child", choices=["stream", "eager"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.input), Path(args.out), args.rows_per_shard)
        return
    with tempfile.TemporaryDirectory(prefix="bench_kb_") as tmp:
        input_path = Path(tmp) / f"entities.{args.format}"
        start_s = time.perf_counter()
        write_input(input_path, args.rows, args.format)
        size_mb = input_path.stat().st_size / 2**20
        print(
            f"input: {args.rows:,} rows, {args.format}, {size_mb:,.0f} MiB, written in "
            f"{time.perf_counter() - start_s:.1f} s",
            flush=True,
        )
        results = {
            mode: measure(mode, input_path, Path(tmp), args.rows_per_shard) for mode in args.modes.split(",")
        }
    print(
        f"\n{'mode':<8}{'rows':>12}{'wall s':>9}{'rows/s':>10}{'CPU s':>9}{'rows/CPU-s':>12}"
        f"{'peak RSS MiB':>14}"
    )
    for mode, r in results.items():
        print(
            f"{mode:<8}{r['rows']:>12,}{r['seconds']:>9.1f}{r['rows'] / r['seconds']:>10,.0f}"
            f"{r['cpu_s']:>9.1f}"
            f"{r['rows'] / r['cpu_s']:>12,.0f}{r['peak_rss_mb']:>14,.0f}"
        )
    if {"stream", "eager"} <= set(results):
        s, e = results["stream"], results["eager"]
        print(
            f"stream / eager: wall throughput x{e['seconds'] / s['seconds']:.2f}, CPU throughput "
            f"x{e['cpu_s'] / s['cpu_s']:.2f}, peak RSS x{s['peak_rss_mb'] / e['peak_rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
