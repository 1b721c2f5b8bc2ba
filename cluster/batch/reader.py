"""Input side of `mel link-batch`: mention files -> validated rows cut into deterministic parts.

The readers, column mapping and validation are kb_builder's (the same rules as `mel kb build`). Parts are
numbered over the validated rows in input order, so the same input gives the same parts on every run: that
is what lets a re-run skip the parts already written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

LINK_COLUMNS = ("mention_id", "mention", "context", "image_uri", "gold_entity_id", "_location")


@dataclass
class Part:
    """One output part: its number and its validated mention rows (LINK_COLUMNS)."""

    index: int
    rows: pl.DataFrame


def _batches(specs: list[str], kb, storage) -> Iterator:
    """(file index, Batch) over the inputs, with the benchmark formats (MIMIC, MELBench) as `mel kb build`."""
    from kb_builder.readers import dataset_format, expand_inputs, read_batches

    fmt = kb.format if kb.format != "auto" else dataset_format(specs, storage)
    if fmt == "mimic":
        from kb_builder.readers.mimic import read_mimic

        yield from read_mimic(specs, "mentions", storage)
    elif fmt == "melbench":
        from kb_builder.readers.melbench import read_melbench

        yield from read_melbench(specs, "mentions", storage)
    else:
        yield from read_batches(expand_inputs(specs, storage, fmt), fmt, storage)


def read_parts(specs: list[str], kb, storage, rows_per_part: int, rejects) -> Iterator[Part]:
    """Validated mention rows in parts of `rows_per_part`; bad rows go to `rejects` (a RejectsWriter)."""
    from kb_builder.canonical import mentions_from
    from kb_builder.readers.base import LOCATION
    from kb_builder.validate import Validator

    validate = Validator(kb, "mentions")
    pending: list[pl.DataFrame] = []
    held, index = 0, 0
    for _, batch in _batches(specs, kb, storage):
        rejects.write(batch.rejects)
        frame = mentions_from(batch, kb.column_map)
        good, bad = validate(frame)  # keeps row order; drops the location column, put back for the output
        rejects.write(bad)
        rejected = {r["location"] for r in bad}
        kept = [loc for loc in frame[LOCATION].to_list() if loc not in rejected]
        good = good.with_columns(pl.Series(LOCATION, kept, dtype=pl.String)).select(LINK_COLUMNS)
        pending.append(good)
        held += good.height
        while held >= rows_per_part:
            rows = pl.concat(pending)
            yield Part(index, rows[:rows_per_part])
            pending, held, index = [rows[rows_per_part:]], held - rows_per_part, index + 1
    rows = pl.concat(pending) if pending else pl.DataFrame()
    if rows.height:
        yield Part(index, rows)
