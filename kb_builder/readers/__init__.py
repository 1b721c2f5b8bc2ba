"""Readers turn input files (jsonl, parquet, csv, MIMIC, MELBench; local or s3://) into raw row batches.

`read_batches(specs, kind, kb, storage)` is the one entry point: it expands globs/folders/prefixes, stages
s3:// files locally (bounded memory, cached by etag) and dispatches on the format.
"""

from __future__ import annotations

from collections.abc import Iterator

from kb_builder.readers.base import (
    DEFAULT_BATCH_ROWS,
    LOCATION,
    Batch,
    detect_format,
    expand_inputs,
    parent_uri,
)
from kb_builder.readers.csv import read_csv
from kb_builder.readers.jsonl import read_jsonl
from kb_builder.readers.parquet import read_parquet
from kb_builder.storage import Storage

READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "csv": read_csv}

__all__ = ["LOCATION", "Batch", "dataset_format", "detect_format", "expand_inputs", "read_batches", "READERS"]
MIMIC_MARKER = "kb_entity.json"


def dataset_format(specs: list[str], storage: Storage) -> str:
    """`auto` resolved for benchmark datasets: a folder with kb_entity.json is MIMIC, a `*-MEL.json` file
    is MELBench; anything else stays `auto` (per-file format from the suffix)."""
    for spec in map(str, specs):
        if spec.endswith("-MEL.json"):
            return "melbench"
        if storage.exists(f"{spec.rstrip('/')}/{MIMIC_MARKER}"):
            return "mimic"
    return "auto"


def read_batches(
    files: list[str], fmt: str, storage: Storage, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[tuple[int, Batch]]:
    """(file index, batch) for every batch of every file; `fmt` is jsonl | parquet | csv | auto."""
    for index, uri in enumerate(files):
        file_fmt = detect_format(uri) if fmt == "auto" else fmt
        if file_fmt not in READERS:
            raise ValueError(f"{uri}: format {file_fmt!r} is not a row format (jsonl | parquet | csv)")
        local = storage.local_path(uri)
        for batch in READERS[file_fmt](local, uri, parent_uri(uri), batch_rows):
            yield index, batch
