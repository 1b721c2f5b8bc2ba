"""Parquet reader: polars' streaming engine hands out row batches; files bigger than memory stream through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from kb_builder.readers.base import DEFAULT_BATCH_ROWS, LOCATION, Batch, reject

ROW_INDEX = "_row"


def _empty(source: str, base_dir: str, rejects: list[dict] | None = None) -> Batch:
    return Batch(
        pl.DataFrame({LOCATION: pl.Series([], dtype=pl.String)}), source, base_dir, 1.0, rejects or []
    )


def read_parquet(
    path: Path, source: str, base_dir: str, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[Batch]:
    """Batches of the local Parquet file `path`; locations are `file:row N` (1-based)."""
    done_rows = 0
    try:
        total_rows = max(pl.scan_parquet(path).select(pl.len()).collect().item(), 1)  # from the footer
        scan = pl.scan_parquet(path, row_index_name=ROW_INDEX, row_index_offset=1)
        for frame in scan.collect_batches(chunk_size=batch_rows):
            location = (pl.lit(f"{source}:row ") + pl.col(ROW_INDEX).cast(pl.String)).alias(LOCATION)
            done_rows += frame.height
            yield Batch(
                frame.with_columns(location).drop(ROW_INDEX), source, base_dir, done_rows / total_rows
            )
    except pl.exceptions.PolarsError as err:  # a corrupt file is one reject, not a failed build
        yield _empty(
            source,
            base_dir,
            [reject(source, f"{source}:after row {done_rows}", f"unreadable Parquet: {err}", None)],
        )
        return
    if done_rows == 0:
        yield _empty(source, base_dir)
