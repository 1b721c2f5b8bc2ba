"""The canonical entity and mention tables every later stage reads (docs/contracts.md), and their content hash.

The content hash is what incremental indexing and `diff.json` compare, so it must be stable across runs,
machines and column orders: sha256 over a canonical JSON of the content fields only (never `source`).
"""

from __future__ import annotations

import hashlib
import json

import polars as pl

SCHEMA_VERSION = 1

ENTITY_SCHEMA: dict[str, pl.DataType] = {
    "entity_id": pl.String(),
    "name": pl.String(),
    "aliases": pl.List(pl.String()),
    "description": pl.String(),
    "image_uris": pl.List(pl.String()),
    "attributes": pl.String(),  # a JSON object, e.g. {"type": "river"}
    "source": pl.String(),  # the input file the row came from
    "content_hash": pl.String(),  # sha256 hex of the content fields
}

MENTION_SCHEMA: dict[str, pl.DataType] = {
    "mention_id": pl.String(),
    "mention": pl.String(),
    "context": pl.String(),
    "image_uri": pl.String(),  # null = the mention has no image
    "gold_entity_id": pl.String(),  # null = NIL (no entity in the KB)
    "split": pl.String(),  # train | dev | test
}

ENTITY_REQUIRED = ("entity_id", "name")
MENTION_REQUIRED = ("mention_id", "mention")
SPLITS = ("train", "dev", "test")

# Fields the content hash covers, in this order.
HASHED_ENTITY_FIELDS = ("entity_id", "name", "aliases", "description", "image_uris", "attributes")


def content_hash(row: dict) -> str:
    """sha256 hex of an entity's content fields, as canonical JSON (sorted keys, no spaces)."""
    payload = {k: row.get(k) for k in HASHED_ENTITY_FIELDS}
    payload["aliases"] = list(payload["aliases"] or [])
    payload["image_uris"] = list(payload["image_uris"] or [])
    attrs = payload["attributes"]
    if isinstance(attrs, str) and attrs:
        try:
            attrs = json.loads(attrs)
        except json.JSONDecodeError:
            pass
    payload["attributes"] = attrs or {}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash_expr() -> pl.Expr:
    """The same hash as a polars expression, for streaming builds of millions of rows."""
    fields = [pl.col(k) for k in HASHED_ENTITY_FIELDS]

    def hash_batch(structs: pl.Series) -> pl.Series:
        return pl.Series([content_hash(row) for row in structs.to_list()], dtype=pl.String)

    return pl.struct(fields).map_batches(hash_batch, return_dtype=pl.String)


def empty_entities() -> pl.DataFrame:
    return pl.DataFrame(schema=ENTITY_SCHEMA)


def empty_mentions() -> pl.DataFrame:
    return pl.DataFrame(schema=MENTION_SCHEMA)


def entity_frame(rows: list[dict]) -> pl.DataFrame:
    """Canonical entity rows -> a frame in ENTITY_SCHEMA column order (hashes filled if missing)."""
    for row in rows:
        if not row.get("content_hash"):
            row["content_hash"] = content_hash(row)
    return pl.DataFrame(rows, schema=ENTITY_SCHEMA) if rows else empty_entities()


def mention_frame(rows: list[dict]) -> pl.DataFrame:
    """Canonical mention rows -> a frame in MENTION_SCHEMA column order."""
    return pl.DataFrame(rows, schema=MENTION_SCHEMA) if rows else empty_mentions()
