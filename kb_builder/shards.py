"""Sharded Parquet tables + manifest.json: the artifact every later stage reads (docs/contracts.md).

Writes go to a local staging folder first and are published (moved or uploaded) only after every shard is
written, so a failed build leaves the previous KB intact; manifest.json is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import polars as pl

from kb_builder.schema import ENTITY_SCHEMA, MENTION_SCHEMA, empty_entities, empty_mentions
from kb_builder.storage import Storage, is_s3, split_s3

KINDS = ("entities", "mentions")


def kb_uri(storage: Storage, kb_name: str) -> str:
    return storage.join("kb", kb_name)


def child(base: str, rel: str) -> str:
    """`rel` (a/b) under `base`, for local folders and s3:// prefixes alike."""
    return f"{base.rstrip('/')}/{rel}" if is_s3(base) else str(Path(base, rel))


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class ShardWriter:
    """Buffers canonical rows and writes `rows_per_shard`-row Parquet shards into `staging/<kind>/`."""

    def __init__(self, staging: Path, kind: str, rows_per_shard: int):
        self.folder, self.kind, self.rows_per_shard = staging / kind, kind, max(1, rows_per_shard)
        self.schema = ENTITY_SCHEMA if kind == "entities" else MENTION_SCHEMA
        self.folder.mkdir(parents=True, exist_ok=True)
        self.buffer: list[pl.DataFrame] = []
        self.buffered_rows = 0
        self.shards: list[dict] = []  # {path, rows, fingerprint}

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards) + self.buffered_rows

    def add(self, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        self.buffer.append(frame.select(list(self.schema)))
        self.buffered_rows += frame.height
        while self.buffered_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def close(self) -> list[dict]:
        """Write the remainder (or one empty shard so readers always find the schema)."""
        if self.buffered_rows or not self.shards:
            self._flush(self.buffered_rows)
        return self.shards

    def _flush(self, n_rows: int) -> None:
        frame = pl.concat(self.buffer) if self.buffer else pl.DataFrame(schema=self.schema)
        head, rest = frame.head(n_rows), frame.slice(n_rows)
        self.buffer, self.buffered_rows = ([rest] if rest.height else []), rest.height
        path = self.folder / shard_name(len(self.shards))
        head.cast(self.schema).write_parquet(path, compression="zstd")
        if self.kind == "entities":  # content fingerprint: independent of Parquet encoder versions
            fingerprint = hashlib.sha256("\n".join(head["content_hash"].to_list()).encode()).hexdigest()
        else:
            fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()
        self.shards.append(
            {"path": f"{self.kind}/{path.name}", "rows": head.height, "fingerprint": fingerprint}
        )


def publish(storage: Storage, staging: Path, kb_name: str, manifest: dict, extra_files: list[str]) -> str:
    """Move/upload staged shards and `extra_files` (names under staging) into place, drop stale shards,
    then write manifest.json (last: readers trust only what the manifest lists). Returns the manifest URI."""
    dest = kb_uri(storage, kb_name)
    new_paths = {s["path"] for kind in KINDS for s in manifest[kind]["shards"]}
    for rel in sorted(new_paths) + extra_files:
        src = staging / rel
        target = child(dest, rel)
        if is_s3(target):
            bucket, key = split_s3(target)
            storage.s3.upload_file(str(src), bucket, key)
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(src, target)  # same file system: a rename, no copy
            except OSError:
                shutil.copyfile(src, target + ".tmp")
                os.replace(target + ".tmp", target)
    for kind in KINDS:
        for uri in storage.list(child(dest, kind) + ("/" if is_s3(dest) else "")):
            if f"{kind}/{uri.rsplit('/', 1)[-1]}" not in new_paths:
                storage.delete(uri)
    manifest_uri = child(dest, "manifest.json")
    storage.write_bytes(manifest_uri, json.dumps(manifest, indent=2, ensure_ascii=False).encode())
    return manifest_uri


# -- read API (docs/contracts.md) ----------------------------------------------------------------------
def read_manifest(storage: Storage, kb_name: str) -> dict:
    uri = child(kb_uri(storage, kb_name), "manifest.json")
    if not storage.exists(uri):
        raise FileNotFoundError(f"no KB {kb_name!r}: {uri} is missing (build it: `mel kb build`)")
    return json.loads(storage.read_bytes(uri))


def shard_uris(storage: Storage, kb_name: str, kind: str, manifest: dict | None = None) -> list[str]:
    manifest = manifest or read_manifest(storage, kb_name)
    base = kb_uri(storage, kb_name)
    return [child(base, s["path"]) for s in manifest[kind]["shards"]]


def entity_shard_uris(storage: Storage, kb_name: str) -> list[str]:
    return shard_uris(storage, kb_name, "entities")


def read_shard(storage: Storage, uri: str, columns: list[str] | None = None) -> pl.DataFrame:
    """One shard (staged locally when on s3://)."""
    return pl.read_parquet(storage.local_path(uri), columns=columns)


def read_entities(storage: Storage, kb_name: str, columns: list[str] | None = None) -> pl.DataFrame:
    """The whole entity table (or some columns). For millions of rows read shard by shard instead."""
    frames = [read_shard(storage, uri, columns) for uri in entity_shard_uris(storage, kb_name)]
    empty = empty_entities()
    return pl.concat(frames) if frames else (empty.select(columns) if columns else empty)


def read_mentions(storage: Storage, kb_name: str, split: str | None = None) -> pl.DataFrame:
    """All mentions, or one split (train | dev | test)."""
    frames = [read_shard(storage, uri) for uri in shard_uris(storage, kb_name, "mentions")]
    frame = pl.concat(frames) if frames else empty_mentions()
    return frame.filter(pl.col("split") == split) if split else frame


def read_diff(storage: Storage, kb_name: str) -> dict:
    """{added, changed, deleted} entity ids: the last build vs the one before (first build: all added)."""
    uri = child(kb_uri(storage, kb_name), "diff.json")
    if not storage.exists(uri):
        read_manifest(storage, kb_name)  # a clear error when the KB itself is missing
        return {"added": [], "changed": [], "deleted": []}
    return json.loads(storage.read_bytes(uri))
