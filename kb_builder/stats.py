"""`kb_stats`: what is in a built KB, at a glance: counts, field coverage, images, name ambiguity.

Name ambiguity (entities sharing one name) is what makes linking hard; the histogram shows how much of it
there is before any model is trained.
"""

from __future__ import annotations

import polars as pl

from kb_builder.config import KBConfig, StorageConfig
from kb_builder.shards import read_manifest, shard_uris
from kb_builder.storage import Storage


def _scan(store: Storage, kb_name: str, kind: str, manifest: dict) -> pl.LazyFrame:
    files = [str(store.local_path(u)) for u in shard_uris(store, kb_name, kind, manifest)]
    return pl.scan_parquet(files)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _histogram(counts: pl.Series, top: int = 5) -> str:
    """`1: 180, 2: 30, 3: 8, 4: 2, 5+: 0` from per-item counts."""
    values = counts.to_list()
    cells = [f"{k}: {sum(1 for v in values if v == k):,}" for k in range(1 if 0 not in values else 0, top)]
    return ", ".join(cells + [f"{top}+: {sum(1 for v in values if v >= top):,}"])


def kb_stats(kb: KBConfig, storage: StorageConfig) -> str:
    """A multi-line text report of the built KB `kb.name`."""
    store = Storage(storage)
    manifest = read_manifest(store, kb.name)
    entities = (
        _scan(store, kb.name, "entities", manifest)
        .select(
            "name",
            pl.col("aliases").list.len().alias("n_aliases"),
            pl.col("image_uris").list.len().alias("n_images"),
            (pl.col("description").str.len_chars() > 0).alias("has_description"),
            (pl.col("attributes") != "{}").alias("has_attributes"),
        )
        .collect(engine="streaming")
    )
    mentions = (
        _scan(store, kb.name, "mentions", manifest)
        .select(
            "split",
            pl.col("image_uri").is_not_null().alias("has_image"),
            pl.col("gold_entity_id").is_null().alias("nil"),
        )
        .collect(engine="streaming")
    )
    n = entities.height
    per_name = entities.group_by("name").len()["len"]
    with_aliases, with_images = int((entities["n_aliases"] > 0).sum()), int((entities["n_images"] > 0).sum())
    shared_names, in_shared = int((per_name > 1).sum()), int(per_name.filter(per_name > 1).sum())
    lines = [
        f"KB {kb.name!r} (version {manifest['kb_version'][:12]}, built {manifest['build_time']})",
        f"entities: {n:,}; rejected rows at build: {manifest.get('rejected', 0):,}",
        f"  with description {_pct(int(entities['has_description'].sum()), n)},"
        f" aliases {_pct(with_aliases, n)}, images {_pct(with_images, n)},"
        f" attributes {_pct(int(entities['has_attributes'].sum()), n)}",
        f"  images per entity: mean {entities['n_images'].mean() or 0:.2f}; "
        f"{_histogram(entities['n_images'])}",
        f"  entities per name: {per_name.len():,} names, {shared_names:,} shared by >= 2 entities "
        f"({_pct(in_shared, n)} of entities); {_histogram(per_name)}",
        f"mentions: {mentions.height:,}",
    ]
    for split in ("train", "dev", "test"):
        part = mentions.filter(pl.col("split") == split)
        lines.append(
            f"  {split}: {part.height:,} (with image {_pct(int(part['has_image'].sum()), part.height)}, "
            f"NIL {int(part['nil'].sum()):,})"
        )
    return "\n".join(lines)
