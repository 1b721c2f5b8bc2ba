"""What every reader yields (`Batch`), and how input specs (files, globs, folders, s3://) become files."""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kb_builder.storage import Storage, is_s3, split_s3

LOCATION = "_location"  # column every reader adds: "file:line N" or "file:row N"
FORMAT_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}
DEFAULT_BATCH_ROWS = 100_000


@dataclass
class Batch:
    """Raw rows of one input file (source columns + `_location`), ready for canonical mapping."""

    rows: pl.DataFrame
    source: str  # the input file's URI
    base_dir: str  # folder relative image paths resolve against (local path or s3:// prefix)
    fraction_done: float  # of this file, 0..1 (for ETA)
    rejects: list[dict] = field(default_factory=list)  # rows that could not even be parsed


def reject(source: str, location: str, reason: str, row) -> dict:
    """One line of rejects.jsonl."""
    return {"source": source, "location": location, "reason": reason, "row": row}


def parent_uri(uri: str) -> str:
    if is_s3(uri):
        return uri.rsplit("/", 1)[0]
    return str(Path(uri).expanduser().resolve().parent)


def detect_format(uri: str) -> str:
    """jsonl | parquet | csv from the file suffix."""
    suffix = Path(uri.split("?")[0]).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise ValueError(f"{uri}: cannot tell the format from suffix {suffix!r}; set kb.format")
    return FORMAT_BY_SUFFIX[suffix]


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def expand_inputs(specs: list[str], storage: Storage, fmt: str = "auto") -> list[str]:
    """Files for `specs` (files, globs, folders; local or s3://), sorted, de-duplicated, in spec order.

    Folders and s3 prefixes contribute the files whose suffix is a known format (or matches `fmt`).
    A spec that matches nothing is an error naming the spec: silent empty builds hide typos.
    """
    out: list[str] = []
    for spec in specs:
        spec = str(spec)
        if is_s3(spec):
            files = _expand_s3(spec, storage)
        elif _has_magic(spec):
            files = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            files = [str(Path(f).resolve()) for f in files if Path(f).is_file()]
        elif Path(spec).expanduser().is_dir():
            files = [str(Path(f).resolve()) for f in storage.list(spec)]
            files = [f for f in files if _wanted(f, fmt)]
        elif Path(spec).expanduser().is_file():
            files = [str(Path(spec).expanduser().resolve())]
        else:
            raise FileNotFoundError(f"input {spec!r} does not exist")
        if not files:
            raise FileNotFoundError(f"input {spec!r} matched no files")
        out += [f for f in files if f not in out]
    return out


def _wanted(uri: str, fmt: str) -> bool:
    suffix = Path(uri).suffix.lower()
    if fmt in ("auto", "jsonl", "parquet", "csv"):
        return FORMAT_BY_SUFFIX.get(suffix) == fmt if fmt != "auto" else suffix in FORMAT_BY_SUFFIX
    return True


def _expand_s3(spec: str, storage: Storage) -> list[str]:
    bucket, key = split_s3(spec)
    if _has_magic(key):
        prefix = key[: min(key.index(ch) for ch in "*?[" if ch in key)]
        folder = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""  # list the folder, then match
        listed = storage.list(f"s3://{bucket}/{folder}")
        return [u for u in listed if fnmatch.fnmatchcase(split_s3(u)[1], key)]
    if storage.exists(spec):
        return [spec]
    listed = storage.list(spec.rstrip("/") + "/")
    return [u for u in listed if Path(u).suffix.lower() in FORMAT_BY_SUFFIX]
