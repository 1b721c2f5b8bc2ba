"""Row validation: every bad row becomes one reject naming its file and line/row; good rows are never lost.

Checks (vectorised in polars): required fields present and non-empty, text that was not valid UTF-8
(U+FFFD after lossy decoding), over-long name / fields, image URIs that are not local, s3:// or http(s)://
or that escape the KB folder, duplicate ids (kb.duplicate_policy: keep_first rejects later copies, fail
stops the build), and for mentions a split outside train/dev/test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl

from kb_builder.canonical import IMAGE_ERROR
from kb_builder.config import KBConfig
from kb_builder.readers.base import LOCATION, reject
from kb_builder.schema import SPLITS

REPLACEMENT_CHAR = "\ufffd"  # what lossy UTF-8 decoding puts in place of invalid bytes


def reason_category(reason: str) -> str:
    """`name too long (600 chars > 512)` -> `name too long`: the detail-free part, for counting."""
    return reason.split(":")[0].split(" (")[0].split(" '")[0].strip()


class DuplicateIdError(ValueError):
    """Raised under duplicate_policy=fail."""


def _too_long(name: str, dtype: pl.DataType, max_chars: int) -> pl.Expr:
    lengths = (
        pl.col(name).list.eval(pl.element().str.len_chars()).list.max()
        if isinstance(dtype, pl.List)
        else pl.col(name).str.len_chars()
    )
    return pl.when(lengths > max_chars).then(
        pl.lit(f"{name} too long (") + lengths.cast(pl.String) + pl.lit(f" chars > {max_chars})")
    )


def _not_utf8(name: str, dtype: pl.DataType) -> pl.Expr:
    bad = (
        pl.col(name).list.eval(pl.element().str.contains(REPLACEMENT_CHAR, literal=True)).list.any()
        if isinstance(dtype, pl.List)
        else pl.col(name).str.contains(REPLACEMENT_CHAR, literal=True)
    )
    return pl.when(bad).then(pl.lit(f"non-UTF-8 text in {name}"))


def reason_expr(frame: pl.DataFrame, required: tuple[str, ...], kb: KBConfig, name_col: str) -> pl.Expr:
    """The first failed check per row as text, null when the row is good."""
    checks = [
        pl.when(pl.col(c).is_null() | (pl.col(c).str.len_chars() == 0)).then(pl.lit(f"missing {c}"))
        for c in required
    ]
    text_cols = [
        (c, t)
        for c, t in frame.schema.items()
        if c not in (LOCATION, IMAGE_ERROR, "source") and (t == pl.String or t == pl.List(pl.String))
    ]
    checks += [_not_utf8(c, t) for c, t in text_cols]
    checks.append(_too_long(name_col, pl.String(), kb.max_name_chars))
    checks += [_too_long(c, t, kb.max_field_chars) for c, t in text_cols]
    checks.append(pl.col(IMAGE_ERROR))
    if "split" in frame.columns:
        checks.append(
            pl.when(~pl.col("split").is_in(SPLITS)).then(
                pl.lit("split not train|dev|test: ") + pl.col("split").fill_null("null")
            )
        )
    return pl.coalesce(checks)


class Validator:
    """Validates batches of one kind (entities or mentions), remembering ids across batches for duplicates."""

    def __init__(self, kb: KBConfig, kind: str):
        self.kb, self.kind = kb, kind
        self.id_col, self.name_col = (
            ("entity_id", "name") if kind == "entities" else ("mention_id", "mention")
        )
        self.required = (self.id_col, self.name_col)
        self.seen_ids: set[str] = set()  # memory O(#ids): the price of exact cross-file duplicate detection

    def __call__(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, list[dict]]:
        """(good rows without helper columns, rejects)."""
        frame = frame.with_columns(reason_expr(frame, self.required, self.kb, self.name_col).alias("_reason"))
        bad, good = frame.filter(pl.col("_reason").is_not_null()), frame.filter(pl.col("_reason").is_null())
        rejects = [self._reject(row, row.pop("_reason")) for row in bad.to_dicts()]
        seen = pl.Series([i in self.seen_ids for i in good[self.id_col].to_list()], dtype=pl.Boolean)
        dup = ~good[self.id_col].is_first_distinct() | seen
        if dup.any():
            rows = good.filter(dup)
            if self.kb.duplicate_policy == "fail":
                first = rows.row(0, named=True)
                raise DuplicateIdError(
                    f"duplicate {self.id_col} {first[self.id_col]!r} at {first[LOCATION]} "
                    "(kb.duplicate_policy=fail)"
                )
            for row in rows.drop("_reason").to_dicts():
                rejects.append(
                    self._reject(row, f"duplicate {self.id_col} {row[self.id_col]!r} (kept the first)")
                )
            good = good.filter(~dup)
        self.seen_ids.update(good[self.id_col].to_list())
        return good.drop("_reason", IMAGE_ERROR, LOCATION), rejects

    def _reject(self, row: dict, reason: str) -> dict:
        location = row.pop(LOCATION)
        row.pop(IMAGE_ERROR, None)
        source = row.pop("source", None) or location.rsplit(":", 1)[0]
        return reject(source, location, reason, row)


class RejectsWriter:
    """Appends rejects to a local rejects.jsonl as they come, so millions of rejects never sit in memory."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self.by_reason: Counter[str] = Counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "w", encoding="utf-8")

    def write(self, rejects: list[dict]) -> None:
        for item in rejects:
            self._file.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")
            self.by_reason[reason_category(item["reason"])] += 1
        self.count += len(rejects)

    def close(self) -> None:
        self._file.close()
