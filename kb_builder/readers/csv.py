"""CSV/TSV reader that survives bad rows: a ragged or unparsable row is one reject with `file:row N`.

Python's `csv` module streams the records (quoted fields may span lines), so each record is checked against
the header on its own: a row with extra or missing fields is rejected with its row number and every other row
is kept, as the JSONL reader does. All columns are text. Invalid UTF-8 is decoded lossily (U+FFFD), which
validation reports as non-UTF-8 text naming the row. A UTF-8 BOM before the header is dropped.
Locations are `file:row N` (1-based data records, blank lines counted; line N+1 when no field spans lines).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from kb_builder.readers.base import DEFAULT_BATCH_ROWS, LOCATION, Batch, reject

BOM = b"\xef\xbb\xbf"
MAX_REJECT_ROW_CHARS = 1000
MAX_FIELD_CHARS = 1 << 24  # csv's own default (131,072) would reject long descriptions before validation


class _Lines:
    """Lines of a binary file, decoded lossily, split at \\n only (a bare \\r inside an unquoted field is then
    one bad row, not a row break), counting the bytes read for the progress fraction."""

    def __init__(self, f):
        self.f, self.bytes_read = f, 0

    def __iter__(self):
        for n, raw in enumerate(self.f):
            self.bytes_read += len(raw)
            yield (raw[len(BOM) :] if n == 0 and raw.startswith(BOM) else raw).decode("utf-8", "replace")


def _header(names: list[str]) -> list[str]:
    """Unique column names (a repeated name gets `_duplicated_N`, as polars names it)."""
    out: list[str] = []
    for name in names:
        unique, n = name, 0
        while unique in out:
            unique, n = f"{name}_duplicated_{n}", n + 1
        out.append(unique)
    return out


def _frame(columns: list[str], values: list[list[str]], locations: list[str]) -> pl.DataFrame:
    cells = list(zip(*values)) if values else [()] * len(columns)
    data = {name: cells[i] for i, name in enumerate(columns) if name != LOCATION}
    frame = pl.DataFrame(data, schema={name: pl.String for name in data})
    # an empty cell is null, as polars reads it, so content hashes of existing CSV KBs do not change
    frame = frame.with_columns(pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in frame.columns)
    return frame.with_columns(pl.Series(LOCATION, locations, dtype=pl.String))


def read_csv(path: Path, source: str, base_dir: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Batch]:
    """Batches of the local CSV (or .tsv: tab-separated) file `path`."""
    csv.field_size_limit(MAX_FIELD_CHARS)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    size_bytes = max(path.stat().st_size, 1)
    with open(path, "rb") as f:
        lines = _Lines(f)
        records = csv.reader(iter(lines), delimiter=delimiter)
        columns: list[str] | None = None
        values, locations, rejects, row, yielded = [], [], [], 0, False
        while True:
            try:
                fields = next(records)
            except StopIteration:
                break
            except csv.Error as err:  # e.g. a stray carriage return in an unquoted field
                if columns is None:
                    rejects.append(reject(source, f"{source}:header", f"unreadable CSV header: {err}", None))
                    break
                row += 1
                rejects.append(reject(source, f"{source}:row {row}", f"unreadable CSV row: {err}", None))
                continue
            if columns is None:
                columns = _header(fields)
                continue
            row += 1
            if not fields:
                continue  # a blank line is no row (and no reject)
            location = f"{source}:row {row}"
            if len(fields) != len(columns):
                reason = f"ragged CSV row: {len(fields)} fields, the header has {len(columns)}"
                rejects.append(
                    reject(source, location, reason, delimiter.join(fields)[:MAX_REJECT_ROW_CHARS])
                )
            else:
                values.append(fields)
                locations.append(location)
            if len(values) + len(rejects) >= batch_rows:
                fraction = min(1.0, lines.bytes_read / size_bytes)
                yield Batch(_frame(columns, values, locations), source, base_dir, fraction, rejects)
                values, locations, rejects, yielded = [], [], [], True
        if values or rejects or not yielded:
            yield Batch(_frame(columns or [], values, locations), source, base_dir, 1.0, rejects)
