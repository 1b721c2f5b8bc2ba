"""The DME selection cache: one Parquet file per KB, `<root>/dme/<kb.name>/selections.parquet`.

Selections are computed once in bulk (`mel dme`) and read by training, evaluation and the ablation, so every
stage sees the same `desc` for a mention. A row is reusable only while the KB it was computed from is current
(`kb_version` equals the manifest's) and it came from the selector now configured; anything else is stale.
"""

from __future__ import annotations

import io

import polars as pl

CACHE_SCHEMA: dict[str, pl.DataType] = {
    "mention_id": pl.String(),
    "kb_version": pl.String(),  # the manifest's kb_version when the row was computed
    "selector": pl.String(),  # embedding | llm | none
    "entity_id": pl.String(),  # the entity whose description was chosen; null = none chosen
    "desc": pl.String(),  # the description itself ("" when none), what mention_text(..., desc) reads
    "reason": pl.String(),  # selected | no_match | no_candidates | disabled | fallback:<why>
}


def cache_uri(storage, kb_name: str) -> str:
    return storage.join("dme", kb_name, "selections.parquet")


def empty_cache() -> pl.DataFrame:
    return pl.DataFrame(schema=CACHE_SCHEMA)


def read_cache(storage, kb_name: str) -> pl.DataFrame:
    """The cached selections (an empty frame when `mel dme` has not run yet)."""
    uri = cache_uri(storage, kb_name)
    if not storage.exists(uri):
        return empty_cache()
    frame = pl.read_parquet(io.BytesIO(storage.read_bytes(uri)))
    missing = [c for c in CACHE_SCHEMA if c not in frame.columns]
    if missing:
        raise ValueError(f"{uri}: not a DME cache (missing columns {missing}); delete it and run `mel dme`")
    return frame.select(list(CACHE_SCHEMA)).cast(CACHE_SCHEMA)


def write_cache(storage, kb_name: str, frame: pl.DataFrame) -> str:
    """Replace the cache with `frame` (sorted by mention_id, so re-runs write identical files)."""
    frame = frame.select(list(CACHE_SCHEMA)).cast(CACHE_SCHEMA).sort("mention_id")
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    uri = cache_uri(storage, kb_name)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def split_stale(cache: pl.DataFrame, mention_ids: list[str], kb_version: str, selector: str):
    """(fresh rows to keep, mention ids to recompute) for the current mention table.

    Rows of mentions no longer in the table are dropped; rows from another KB version or selector are stale.
    """
    wanted = pl.DataFrame({"mention_id": mention_ids}, schema={"mention_id": pl.String()})
    fresh = (
        cache.filter((pl.col("kb_version") == kb_version) & (pl.col("selector") == selector))
        .unique("mention_id", keep="last", maintain_order=True)
        .join(wanted, on="mention_id", how="semi")
    )
    done = set(fresh["mention_id"].to_list())
    return fresh, [m for m in mention_ids if m not in done]
