"""What changed since the last build, by entity content hash, so indexing re-encodes only those entities.

`diff.json` = {added, changed, deleted} entity ids; an unchanged rebuild gives three empty lists. Joins run
lazily over (entity_id, content_hash) only, so millions of entities diff in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from kb_builder.shards import shard_uris
from kb_builder.storage import Storage

DIFF_KEYS = ("added", "changed", "deleted")
HASH_CHUNK_ROWS = 1_000_000


def _hashes(files: list[str | Path]) -> pl.LazyFrame:
    if not files:
        return pl.LazyFrame(schema={"entity_id": pl.String, "content_hash": pl.String})
    return pl.scan_parquet([str(f) for f in files]).select("entity_id", "content_hash")


def previous_entity_files(storage: Storage, kb_name: str, previous_manifest: dict | None) -> list[Path]:
    """Local files of the KB now in place (staged from s3:// into the cache)."""
    if previous_manifest is None:
        return []
    return [storage.local_path(uri) for uri in shard_uris(storage, kb_name, "entities", previous_manifest)]


def compute_diff(previous_files: list[str | Path], new_files: list[str | Path]) -> dict[str, pl.Series]:
    """{added, changed, deleted}: sorted id Series."""
    prev, new = _hashes(previous_files), _hashes(new_files)
    added = new.join(prev, on="entity_id", how="anti").select("entity_id")
    deleted = prev.join(new, on="entity_id", how="anti").select("entity_id")
    changed = (
        new.join(prev, on="entity_id", how="inner", suffix="_prev")
        .filter(pl.col("content_hash") != pl.col("content_hash_prev"))
        .select("entity_id")
    )
    frames = pl.collect_all([q.sort("entity_id") for q in (added, changed, deleted)], engine="streaming")
    return {key: frame["entity_id"] for key, frame in zip(DIFF_KEYS, frames)}


def write_diff(diff: dict[str, pl.Series], path: Path, extra: dict | None = None) -> dict[str, int]:
    """Stream diff.json to `path` (ids written in chunks, never one huge Python list); returns counts."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("{")
        for n, key in enumerate(DIFF_KEYS):
            f.write(f'{", " if n else ""}"{key}": [')
            ids = diff[key]
            for start in range(0, ids.len(), HASH_CHUNK_ROWS):
                chunk = ids.slice(start, HASH_CHUNK_ROWS).to_list()
                f.write(("," if start else "") + json.dumps(chunk, ensure_ascii=False)[1:-1])
            f.write("]")
        for key, value in (extra or {}).items():
            f.write(f", {json.dumps(key)}: {json.dumps(value)}")
        f.write("}\n")
    return {key: diff[key].len() for key in DIFF_KEYS}


def kb_version(entity_files: list[str | Path], rows_per_bucket: int = HASH_CHUNK_ROWS) -> str:
    """sha256 of the sorted content hashes: equal KB content, equal version, whatever the shard layout.

    Big KBs sort in buckets by the first hex digit (1, 2, 4, 8 or 16 buckets, in order), which gives the
    same sorted sequence with a fraction of the memory of one global sort.
    """
    digest = hashlib.sha256()
    if not entity_files:
        return digest.hexdigest()
    scan = pl.scan_parquet([str(f) for f in entity_files]).select("content_hash")
    total_rows = scan.select(pl.len()).collect().item()
    n_buckets = 1
    while n_buckets < 16 and total_rows / n_buckets > rows_per_bucket:
        n_buckets *= 2
    digits = "0123456789abcdef"
    width = 16 // n_buckets
    for bucket in range(n_buckets):
        first = list(digits[bucket * width : (bucket + 1) * width])
        part = scan.filter(pl.col("content_hash").str.slice(0, 1).is_in(first)) if n_buckets > 1 else scan
        hashes = part.sort("content_hash").collect(engine="streaming")["content_hash"]
        for start in range(0, hashes.len(), HASH_CHUNK_ROWS):
            digest.update(("\n".join(hashes.slice(start, HASH_CHUNK_ROWS).to_list()) + "\n").encode())
    return digest.hexdigest()
