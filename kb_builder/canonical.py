"""Raw source rows -> the canonical entity/mention columns (docs/contracts.md), vectorised in polars.

Column names are mapped by `kb.column_map` first, then by the defaults below (the sample KB's and common
names). Entity columns that are not canonical become the `attributes` JSON object. Relative image paths are
resolved against the input file's folder; URIs with other schemes keep a null slot plus a reason column that
validation turns into a reject.
"""

from __future__ import annotations

import json
import zlib

import polars as pl

from kb_builder.readers.base import LOCATION, Batch
from kb_builder.schema import SPLITS

ENTITY_DEFAULTS = {
    "id": "entity_id",
    "qid": "entity_id",
    "image": "image_uris",
    "images": "image_uris",
    "image_list": "image_uris",
    "desc": "description",
    "label": "name",
    "alias": "aliases",
}
MENTION_DEFAULTS = {
    "id": "mention_id",
    "sentence": "context",
    "image": "image_uri",
    "imgPath": "image_uri",
    "answer": "gold_entity_id",
    "gold": "gold_entity_id",
    "entity_id": "gold_entity_id",
}
ENTITY_COLUMNS = ("entity_id", "name", "aliases", "description", "image_uris", "attributes")
MENTION_COLUMNS = ("mention_id", "mention", "context", "image_uri", "gold_entity_id", "split")
SPLIT_ALIASES = {"valid": "dev", "validation": "dev", "val": "dev", "eval": "dev"}
NIL_VALUES = ("nil", "NIL", "Nil", "")
IMAGE_ERROR = "_image_error"  # reason column: first image URI that is not allowed
LIST_SEPARATOR = "|"  # aliases / images packed into one text cell (CSV)


def rename_columns(
    frame: pl.DataFrame, column_map: dict[str, str], defaults: dict[str, str], canonical: tuple[str, ...]
) -> pl.DataFrame:
    """User map first, then defaults for canonical columns still missing; never two columns with one name."""
    mapping = {src: dst for src, dst in column_map.items() if src in frame.columns and src != dst}
    targets = set(mapping.values()) | (set(frame.columns) - set(mapping))
    for src, dst in defaults.items():
        if src in frame.columns and src not in mapping and dst not in targets and dst in canonical:
            mapping[src] = dst
            targets.add(dst)
    frame = frame.drop([c for c in frame.columns if c in set(mapping.values()) and c not in mapping])
    return frame.rename(mapping)


def _as_text(frame: pl.DataFrame, name: str) -> pl.Expr:
    if name not in frame.columns:
        return pl.lit(None, dtype=pl.String)
    dtype = frame.schema[name]
    if isinstance(dtype, pl.Struct):
        return pl.col(name).struct.json_encode()
    if isinstance(dtype, pl.List):
        return pl.col(name).list.first().cast(pl.String)  # a one-item list cell, e.g. MIMIC's `mentions`
    return pl.col(name).cast(pl.String)


def _split_cell(text: str | None) -> list[str] | None:
    """`a|b` or a JSON array `["a", "b"]` (a malformed array is kept as one item, not a failed batch)."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
            if isinstance(items, list):
                return [str(item) for item in items if item is not None]
        except json.JSONDecodeError:
            return [text]
    return text.split(LIST_SEPARATOR)


def _flat_strings(value) -> list[str]:
    """Every string (or number) inside a nested list/struct cell, in order."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple) or hasattr(value, "to_list"):
        items = value.to_list() if hasattr(value, "to_list") else value
        return [s for item in items for s in _flat_strings(item)]
    return [str(value)]


def _as_list(frame: pl.DataFrame, name: str) -> pl.Expr:
    """A list[str] column from a list, a `|`-separated text cell, a JSON-array text cell or nothing."""
    if name not in frame.columns:
        return pl.lit([], dtype=pl.List(pl.String))
    dtype = frame.schema[name]
    if isinstance(dtype, pl.Struct | pl.Array) or (
        isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.List | pl.Struct | pl.Array)
    ):
        # A list of lists (or objects) in some row: flatten to its strings rather than fail the whole build.
        col = pl.col(name).map_elements(_flat_strings, return_dtype=pl.List(pl.String), skip_nulls=True)
    elif isinstance(dtype, pl.List):
        col = pl.col(name).cast(pl.List(pl.String), strict=False)
    else:
        text = pl.col(name).cast(pl.String)
        has_json = frame.select(text.str.strip_chars().str.starts_with("[").any()).item()
        col = (
            text.map_elements(_split_cell, return_dtype=pl.List(pl.String), skip_nulls=True)
            if has_json
            else text.str.split(LIST_SEPARATOR)
        )  # the common case stays vectorised
    cleaned = col.list.eval(pl.element().str.strip_chars().filter(pl.element().str.len_chars() > 0))
    return cleaned.fill_null(pl.lit([], dtype=pl.List(pl.String)))


def _resolve(uri: pl.Expr, base_dir: str) -> tuple[pl.Expr, pl.Expr]:
    """(resolved URI or null, reason or null) for one image URI expression."""
    remote = uri.str.starts_with("s3://") | uri.str.starts_with("http://") | uri.str.starts_with("https://")
    absolute_local = uri.str.starts_with("/")
    scheme = uri.str.contains(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
    dotdot = uri.str.contains(r"(^|/)\.\.(/|$)")
    reason = (
        pl.when(remote)
        .then(pl.lit(None, dtype=pl.String))
        .when(scheme)
        .then(pl.lit("image URI scheme not allowed (local, s3://, http(s):// only): ") + uri)
        .when(dotdot)
        .then(pl.lit("image path escapes the KB folder ('..'): ") + uri)
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    resolved = (
        pl.when(remote | absolute_local)
        .then(uri)
        .otherwise(pl.lit(base_dir.rstrip("/") + "/") + uri.str.strip_prefix("./"))
    )
    return pl.when(reason.is_null()).then(resolved).otherwise(pl.lit(None, dtype=pl.String)), reason


def entities_from(batch: Batch, column_map: dict[str, str]) -> pl.DataFrame:
    """Canonical entity columns + `_location` + `_image_error` (+ `source`)."""
    frame = rename_columns(batch.rows, column_map, ENTITY_DEFAULTS, ENTITY_COLUMNS + ("source",))
    images = _as_list(frame, "image_uris")
    resolved, reason = _resolve(pl.element(), batch.base_dir)
    extras = sorted(c for c in frame.columns if c not in ENTITY_COLUMNS and c not in (LOCATION, "source"))
    if "attributes" in frame.columns:
        attributes = _as_text(frame, "attributes").fill_null("{}")
    elif extras:
        attributes = pl.struct([_as_text(frame, c).alias(c) for c in extras]).struct.json_encode()
    else:
        attributes = pl.lit("{}")
    return frame.select(
        _as_text(frame, "entity_id").str.strip_chars().alias("entity_id"),
        _as_text(frame, "name").str.strip_chars().alias("name"),
        _as_list(frame, "aliases").alias("aliases"),
        _as_text(frame, "description").fill_null("").alias("description"),
        images.list.eval(resolved).alias("image_uris"),
        attributes.alias("attributes"),
        pl.lit(batch.source).alias("source"),
        images.list.eval(reason).list.drop_nulls().list.first().alias(IMAGE_ERROR),
        pl.col(LOCATION),
    )


def stable_split(key: str) -> str:
    """train/dev/test 70/15/15 by crc32(key): unlike polars' hash, the same on every version and machine."""
    percent = zlib.crc32(str(key).encode()) % 100
    return "train" if percent < 70 else ("dev" if percent < 85 else "test")


def _stable_splits(ids: pl.Series) -> pl.Series:
    return pl.Series([stable_split(i) for i in ids.to_list()], dtype=pl.String)


def _split_expr(frame: pl.DataFrame, source: str) -> pl.Expr:
    """The split column; else the file name's split word; else a stable 70/15/15 hash split of mention_id."""
    if "split" in frame.columns:
        text = pl.col("split").cast(pl.String).str.strip_chars().str.to_lowercase()
        return text.replace(SPLIT_ALIASES)
    stem = source.rsplit("/", 1)[-1].lower()
    for word, split in [(s, s) for s in SPLITS] + list(SPLIT_ALIASES.items()):
        if f"_{word}." in stem or f"-{word}." in stem or stem.startswith(f"{word}."):
            return pl.lit(split)
    return pl.col("mention_id").map_batches(_stable_splits, return_dtype=pl.String)


def mentions_from(batch: Batch, column_map: dict[str, str]) -> pl.DataFrame:
    """Canonical mention columns + `_location` + `_image_error`; missing ids become `<file stem>-<row>`."""
    frame = rename_columns(batch.rows, column_map, MENTION_DEFAULTS, MENTION_COLUMNS)
    if "mention_id" not in frame.columns:
        stem = batch.source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        frame = frame.with_columns(
            (pl.lit(f"{stem}-") + pl.col(LOCATION).str.extract(r"(\d+)$")).alias("mention_id")
        )
    image = _as_text(frame, "image_uri").str.strip_chars()
    image = pl.when(image.str.len_chars() > 0).then(image).otherwise(pl.lit(None, dtype=pl.String))
    resolved, reason = _resolve(image, batch.base_dir)
    gold = _as_text(frame, "gold_entity_id").str.strip_chars()
    frame = frame.with_columns(_as_text(frame, "mention_id").str.strip_chars().alias("mention_id"))
    return frame.select(
        pl.col("mention_id"),
        _as_text(frame, "mention").alias("mention"),
        _as_text(frame, "context").fill_null("").alias("context"),
        resolved.alias("image_uri"),
        pl.when(gold.is_in(NIL_VALUES))
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(gold)
        .alias("gold_entity_id"),
        _split_expr(frame, batch.source).alias("split"),
        reason.alias(IMAGE_ERROR),
        pl.col(LOCATION),
    )
