"""CSV/TSV reader: streamed batches, all columns as text; invalid UTF-8 is decoded lossily and then rejected.

Polars' `utf8-lossy` turns bad bytes into U+FFFD, which validation reports as non-UTF-8 text naming the row.
Locations are `file:row N` (1-based data rows; line N+1 when no field spans lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from kb_builder.readers.base import DEFAULT_BATCH_ROWS, LOCATION, Batch, reject

ROW_INDEX = "_row"


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            count += chunk.count(b"\n")
    return max(count - 1, 1)


def read_csv(path: Path, source: str, base_dir: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Batch]:
    """Batches of the local CSV (or .tsv: tab-separated) file `path`."""
    separator = "\t" if path.suffix.lower() == ".tsv" else ","
    total_rows = _count_lines(path)
    frame = pl.scan_csv(
        path,
        separator=separator,
        infer_schema=False,
        encoding="utf8-lossy",
        row_index_name=ROW_INDEX,
        row_index_offset=1,
        truncate_ragged_lines=False,
    )
    done_rows = 0
    try:
        for batch in frame.collect_batches(chunk_size=batch_rows):
            batch = batch.with_columns(
                (pl.lit(f"{source}:row ") + pl.col(ROW_INDEX).cast(pl.String)).alias(LOCATION)
            ).drop(ROW_INDEX)
            done_rows += batch.height
            yield Batch(batch, source, base_dir, min(1.0, done_rows / total_rows))
    except pl.exceptions.PolarsError as err:
        yield Batch(
            pl.DataFrame({LOCATION: pl.Series([], dtype=pl.String)}),
            source,
            base_dir,
            1.0,
            [reject(source, f"{source}:after row {done_rows}", f"unreadable CSV: {err}", None)],
        )
