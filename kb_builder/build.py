"""`build_kb`: input files -> validated canonical Parquet shards + manifest + rejects + diff (GitHub issue 4).

Rows stream through in batches (reader -> canonical mapping -> validation -> shard writer), so memory is
bounded by the batch and shard sizes, not the KB size (except the id set used for duplicate detection).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kb_builder.canonical import IMAGE_ERROR, entities_from, mentions_from
from kb_builder.config import KBConfig, StorageConfig
from kb_builder.diff import compute_diff, kb_version, previous_entity_files, write_diff
from kb_builder.image_paths import allowed_roots, kb_image_roots, refuse_outside_roots
from kb_builder.progress import Progress
from kb_builder.readers import Batch, dataset_format, expand_inputs, read_batches
from kb_builder.sample_src import ensure_sample_sources
from kb_builder.schema import SCHEMA_VERSION, content_hash_expr
from kb_builder.shards import KINDS, ShardWriter, publish, read_manifest
from kb_builder.storage import Storage
from kb_builder.validate import RejectsWriter, Validator

SPECIAL_FORMATS = ("mimic", "melbench")


class MassDeleteError(ValueError):
    """A build would delete more than kb.max_delete_fraction of the live KB; nothing was published (`mel`
    prints it as a clean error, exit 2)."""


def check_deletions(
    kb: KBConfig, previous: dict | None, diff: dict[str, int], rejects: dict[str, int]
) -> None:
    """Stop before publishing when the diff deletes too much of the live KB: one bad input (a ragged file, a
    wrong glob) must not empty the KB and, through `mel index --mode incremental`, the vector store."""
    live_rows = (previous or {}).get("entities", {}).get("rows", 0)
    deleted = diff.get("deleted", 0)
    if not live_rows or deleted / live_rows <= kb.max_delete_fraction:
        return
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(rejects.items())) or "none"
    raise MassDeleteError(
        f"KB {kb.name!r}: this build would delete {deleted:,} of {live_rows:,} live entities "
        f"({deleted / live_rows:.0%} > kb.max_delete_fraction {kb.max_delete_fraction:.0%}); nothing was "
        f"published, the live KB is unchanged. Rejected rows by reason: {reasons}. If the deletions are meant, "
        "rerun with `mel kb build --allow-mass-delete`."
    )


@dataclass
class BuildReport:
    """What a build did; `summary()` is the line a person reads."""

    kb_name: str
    entities: int
    mentions: int
    rejected: int
    manifest_uri: str
    kb_version: str
    diff: dict[str, int] = field(default_factory=dict)  # added / changed / deleted entity counts
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejects_by_reason.items())) or "none"
        splits = " / ".join(f"{k} {v:,}" for k, v in sorted(self.splits.items()))
        return (
            f"KB {self.kb_name!r} v{self.kb_version[:12]}: {self.entities:,} entities, {self.mentions:,} "
            f"mentions ({splits}); {self.rejected:,} rejected ({reasons}); diff +{self.diff.get('added', 0)} "
            f"~{self.diff.get('changed', 0)} -{self.diff.get('deleted', 0)}; {self.elapsed_s:.1f} s; "
            f"manifest {self.manifest_uri}"
        )


def _batches(fmt: str, kind: str, storage: Storage, files: list[str]) -> Iterator[tuple[int, Batch]]:
    if fmt == "mimic":
        from kb_builder.readers.mimic import read_mimic

        yield from read_mimic(files, kind, storage)
    elif fmt == "melbench":
        from kb_builder.readers.melbench import read_melbench

        yield from read_melbench(files, kind, storage)
    else:
        yield from read_batches(files, fmt, storage)


@dataclass
class _Tables:
    """What ingesting both tables produced in the staging folder."""

    shards: dict[str, list[dict]]
    rows: dict[str, int]
    splits: Counter
    sources: dict[str, list[str]]  # files actually read, per kind
    rejects: RejectsWriter


def _ingest(
    kb: KBConfig,
    fmt: str,
    kind: str,
    storage: Storage,
    files: list[str],
    writer: ShardWriter,
    rejects: RejectsWriter,
    progress: bool,
    image_roots: list[Path],
) -> tuple[Counter, list[str]]:
    """Stream every batch of `files` into `writer`; returns (split counts, files read)."""
    validate, to_canonical = Validator(kb, kind), (entities_from if kind == "entities" else mentions_from)
    meter, splits, sources = Progress(f"kb {kb.name} {kind}", enabled=progress), Counter(), {}
    for index, batch in _batches(fmt, kind, storage, files):
        sources[batch.source] = True
        rejects.write(batch.rejects)
        canonical = refuse_outside_roots(to_canonical(batch, kb.column_map), image_roots, IMAGE_ERROR)
        good, bad = validate(canonical)
        rejects.write(bad)
        if kind == "entities":
            good = good.with_columns(content_hash_expr().alias("content_hash"))
        else:
            splits.update(dict(good["split"].value_counts().iter_rows()))
        writer.add(good)
        meter.update(
            batch.rows.height + len(batch.rejects), (index + batch.fraction_done) / max(len(files), 1)
        )
    meter.done(f"{writer.rows:,} kept")
    return splits, list(sources)


def _write_tables(
    kb: KBConfig,
    fmt: str,
    inputs: dict[str, list[str]],
    storage: Storage,
    staging: Path,
    progress: bool,
    image_roots: list[Path],
) -> _Tables:
    rejects = RejectsWriter(staging / "rejects.jsonl")
    tables = _Tables({}, {}, Counter(), {}, rejects)
    for kind in KINDS:
        writer = ShardWriter(staging, kind, kb.rows_per_shard)
        splits, tables.sources[kind] = _ingest(
            kb, fmt, kind, storage, inputs[kind], writer, rejects, progress, image_roots
        )
        tables.splits += splits
        tables.shards[kind], tables.rows[kind] = writer.close(), writer.rows
    rejects.close()
    return tables


def _version_and_diff(
    storage: Storage, kb_name: str, previous: dict | None, staging: Path, tables: _Tables
) -> tuple[str, dict[str, int]]:
    """kb_version of the new entity shards and diff.json against the KB still in place."""
    new_files = [staging / s["path"] for s in tables.shards["entities"]]
    version = kb_version(new_files)
    diff = compute_diff(previous_entity_files(storage, kb_name, previous), new_files)
    return version, write_diff(diff, staging / "diff.json", {"kb_version": version})


def _manifest(
    kb: KBConfig, storage: Storage, started: dt.datetime, version: str, diff: dict[str, int], tables: _Tables
) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "kb_name": kb.name,
        "kb_version": version,
        "build_time": started.isoformat(timespec="seconds"),
        "build_id": f"{started:%Y%m%dT%H%M%SZ}-{version[:8]}-{uuid.uuid4().hex[:6]}",  # its shards' folder
        "entities": {"rows": tables.rows["entities"], "shards": tables.shards["entities"]},
        "mentions": {
            "rows": tables.rows["mentions"],
            "splits": dict(sorted(tables.splits.items())),
            "shards": tables.shards["mentions"],
        },
        "rejected": tables.rejects.count,
        "rejects_by_reason": dict(tables.rejects.by_reason),
        "diff": diff,
        "inputs": [
            {"kind": kind, "uri": uri, "fingerprint": storage.fingerprint(uri)}
            for kind in KINDS
            for uri in tables.sources[kind]
        ],
        "config": asdict(kb),
    }


def _inputs(kb: KBConfig, storage: Storage) -> tuple[str, dict[str, list[str]]]:
    """(format, files per kind). MIMIC folders and MELBench files hold both tables in one input."""
    if kb.sample:
        src = ensure_sample_sources(kb, storage)
        return "jsonl", {"entities": [f"{src}/entities.jsonl"], "mentions": [f"{src}/mentions.jsonl"]}
    if not kb.entity_inputs and not kb.mention_inputs:
        raise ValueError("kb.entity_inputs and kb.mention_inputs are empty: set them, or kb.sample: true")
    fmt = kb.format if kb.format != "auto" else dataset_format(kb.entity_inputs + kb.mention_inputs, storage)
    if fmt in SPECIAL_FORMATS:
        specs = [str(s) for s in kb.entity_inputs or kb.mention_inputs]
        return fmt, {kind: specs for kind in KINDS}
    specs = {"entities": kb.entity_inputs, "mentions": kb.mention_inputs}
    return fmt, {kind: expand_inputs(files, storage, fmt) if files else [] for kind, files in specs.items()}


def build_kb(
    kb: KBConfig,
    storage: StorageConfig,
    progress: bool = True,
    allow_mass_delete: bool = False,
    image_roots: list[str] = (),
) -> BuildReport:
    """Build `<root>/kb/<kb.name>/` from `kb`'s inputs (or the synthetic sample KB with `kb.sample`).

    Local images must lie under the KB's input folders, the storage root or `image_roots` (pass
    `encoder.allowed_image_roots`): the rule indexing applies (kb_builder.image_paths); others are rejects.

    Raises MassDeleteError (publishing nothing) when the build would delete more than
    `kb.max_delete_fraction` of the live entities, unless `allow_mass_delete`."""
    started = dt.datetime.now(dt.UTC)
    store = Storage(storage)
    fmt, inputs = _inputs(kb, store)
    previous = _previous_manifest(store, kb.name)
    store.cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"kb-{kb.name}-", dir=store.cache_dir))
    try:
        roots = allowed_roots(storage, [*kb_image_roots(kb), *image_roots])
        tables = _write_tables(kb, fmt, inputs, store, staging, progress, roots)
        version, diff = _version_and_diff(store, kb.name, previous, staging, tables)
        if not allow_mass_delete:
            check_deletions(kb, previous, diff, dict(tables.rejects.by_reason))
        extra_files = ["rejects.jsonl", "diff.json"]
        if previous is not None:  # kept beside the new manifest: what the diff was computed against
            (staging / "manifest.prev.json").write_text(json.dumps(previous, indent=2, ensure_ascii=False))
            extra_files.append("manifest.prev.json")
        manifest = _manifest(kb, store, started, version, diff, tables)
        manifest_uri = publish(store, staging, kb.name, manifest, extra_files, previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    elapsed_s = (dt.datetime.now(dt.UTC) - started).total_seconds()
    report = BuildReport(
        kb.name,
        tables.rows["entities"],
        tables.rows["mentions"],
        tables.rejects.count,
        manifest_uri,
        version,
        diff,
        dict(tables.rejects.by_reason),
        dict(tables.splits),
        elapsed_s,
    )
    if progress:  # long work ends with its summary, beside the progress lines
        print(report.summary(), file=sys.stderr, flush=True)
    return report


def _previous_manifest(storage: Storage, kb_name: str) -> dict | None:
    try:
        return read_manifest(storage, kb_name)
    except FileNotFoundError:
        return None
