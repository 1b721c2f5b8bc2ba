"""The canonical entity and mention tables every later stage reads, and the content hash.

The content hash is what incremental indexing and `diff.json` compare, so it must be stable across runs,
machines and library versions: sha256 over the content fields joined in a fixed order (never `source`).
"""

from __future__ import annotations

import hashlib

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
FIELD_SEP, ITEM_SEP = "\x1f", "\x1e"  # ASCII unit / record separators: absent from real text


def canonical_text(row: dict) -> str:
    """The hashed text: fields in HASHED_ENTITY_FIELDS order, lists joined; plain string ops only, so the
    Python and polars versions agree byte for byte on every version (no JSON formatting involved)."""
    parts = []
    for key in HASHED_ENTITY_FIELDS:
        value = row.get(key)
        parts.append(ITEM_SEP.join(value or []) if key in ("aliases", "image_uris") else (value or ""))
    return FIELD_SEP.join(parts)


def content_hash(row: dict) -> str:
    """sha256 hex of an entity's content fields (never `source`: moving a file is not a content change)."""
    return hashlib.sha256(canonical_text(row).encode("utf-8")).hexdigest()


def _sha256_batch(texts: pl.Series) -> pl.Series:
    return pl.Series(
        [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts.to_list()], dtype=pl.String
    )


def content_hash_expr() -> pl.Expr:
    """The same hash as a polars expression (text built vectorised; only sha256 runs per row in Python)."""
    parts = [
        pl.col(k).list.join(ITEM_SEP).fill_null("")
        if k in ("aliases", "image_uris")
        else pl.col(k).fill_null("")
        for k in HASHED_ENTITY_FIELDS
    ]
    return pl.concat_str(parts, separator=FIELD_SEP).map_batches(_sha256_batch, return_dtype=pl.String)


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
