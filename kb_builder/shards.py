"""Sharded Parquet tables + manifest.json: the artifact every later stage reads (docs/contracts.md).

Writes go to a local staging folder first. Publishing uploads (or moves) a build into its own folder
`builds/<build_id>/` and then rewrites manifest.json to point at it: the manifest write is the one commit point,
so a build that fails at any step before it leaves the previous manifest and every file it lists untouched.
The previous build's folder is kept (readers that opened it keep working; `manifest.prev.json` points at it);
older ones, and folders of builds that failed, are deleted by the next successful publish.
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


def _put(storage: Storage, src: Path, target: str, move: bool) -> None:
    """One staged file to `target` (an S3 upload, or a rename/copy that never leaves a half-written file)."""
    if is_s3(target):
        bucket, key = split_s3(target)
        storage.s3.upload_file(str(src), bucket, key)
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    if move:
        try:
            os.replace(src, target)  # same file system: a rename, no copy
            return
        except OSError:
            pass
    shutil.copyfile(src, target + ".tmp")
    os.replace(target + ".tmp", target)


def publish(
    storage: Storage,
    staging: Path,
    kb_name: str,
    manifest: dict,
    extra_files: list[str],
    previous: dict | None = None,
) -> str:
    """Upload the staged shards and `extra_files` into `builds/<manifest['build_id']>/`, switch manifest.json to
    them (the commit point), then refresh the top-level copies of `extra_files` (rejects.jsonl, diff.json: for
    people; code reads the build's own) and delete builds other than this one and `previous` (the manifest
    being replaced). Returns the manifest URI. `manifest`'s shard paths are rewritten to the build folder."""
    dest = kb_uri(storage, kb_name)
    build_dir = f"builds/{manifest['build_id']}"
    for kind in KINDS:
        for shard in manifest[kind]["shards"]:
            rel = shard["path"]  # <kind>/part-*.parquet, as staged
            _put(storage, staging / rel, child(dest, f"{build_dir}/{rel}"), move=True)
            shard["path"] = f"{build_dir}/{rel}"
    for rel in extra_files:
        _put(storage, staging / rel, child(dest, f"{build_dir}/{rel}"), move=False)
    manifest["build_dir"] = build_dir
    manifest_uri = child(dest, "manifest.json")
    storage.write_bytes(manifest_uri, json.dumps(manifest, indent=2, ensure_ascii=False).encode())
    for rel in extra_files:  # after the commit: the top-level copies always describe the live build
        _put(storage, staging / rel, child(dest, rel), move=True)
    keep = {build_dir, (previous or {}).get("build_dir")}
    _drop_stale_files(storage, dest, keep - {None})
    return manifest_uri


def _drop_stale_files(storage: Storage, dest: str, keep_dirs: set[str]) -> None:
    """Delete build folders not in `keep_dirs` and shards of the pre-`builds/` layout (`<kind>/part-*`)."""
    for uri in storage.list(child(dest, "builds")):
        build_dir = "/".join(uri[len(dest.rstrip("/")) + 1 :].replace(os.sep, "/").split("/")[:2])
        if build_dir not in keep_dirs:
            storage.delete(uri)
    for kind in KINDS:
        for uri in storage.list(child(dest, kind)):
            storage.delete(uri)
    if not is_s3(dest):  # local: also remove the folders those deletes emptied
        for folder in sorted(Path(dest).rglob("*"), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


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
    manifest = read_manifest(storage, kb_name)  # a clear error when the KB itself is missing
    rel = f"{manifest['build_dir']}/diff.json" if manifest.get("build_dir") else "diff.json"  # older layout
    uri = child(kb_uri(storage, kb_name), rel)
    if not storage.exists(uri):
        return {"added": [], "changed": [], "deleted": []}
    return json.loads(storage.read_bytes(uri))
