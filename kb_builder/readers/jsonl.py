"""JSON Lines reader that survives bad lines: a malformed line is one reject with file:line, not a lost file.

Fast path: polars parses a chunk of lines at once. If that chunk fails (a bad line, bad UTF-8, mixed types),
the chunk is re-read line by line with `json.loads`, so only the bad lines are rejected.
A `.json` file holding one JSON array of objects is read too (small files: benchmark folders). A UTF-8 BOM at
the start of a file is dropped. A raw control character (NUL...) inside a string is malformed JSON: a reject.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from kb_builder.readers.base import DEFAULT_BATCH_ROWS, LOCATION, Batch, reject

MAX_REJECT_ROW_CHARS = 1000
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark some editors put at the start of a file: not part of the data


def read_jsonl(
    path: Path, source: str, base_dir: str, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[Batch]:
    """Batches of up to `batch_rows` rows of the local file `path` (`source` names it in locations)."""
    size_bytes = max(path.stat().st_size, 1)
    with open(path, "rb") as f:
        head = f.read(64).removeprefix(BOM).lstrip()
    # A JSON array file (.json); a .jsonl/.ndjson file is one object per line even if a line is an array.
    if head.startswith(b"[") and path.suffix.lower() not in (".jsonl", ".ndjson"):
        yield from _read_json_array(path, source, base_dir, batch_rows)
        return
    with open(path, "rb") as f:
        lines, numbers, line_no = [], [], 0
        for raw in f:
            line_no += 1
            if line_no == 1:
                raw = raw.removeprefix(BOM)
            if raw.strip():
                lines.append(raw)
                numbers.append(line_no)
            if len(lines) >= batch_rows:
                yield _parse_chunk(lines, numbers, source, base_dir, f.tell() / size_bytes)
                lines, numbers = [], []
        if lines or line_no == 0:
            yield _parse_chunk(lines, numbers, source, base_dir, 1.0)


def _parse_chunk(
    lines: list[bytes], numbers: list[int], source: str, base_dir: str, fraction: float
) -> Batch:
    locations = pl.Series(LOCATION, [f"{source}:line {n}" for n in numbers], dtype=pl.String)
    if not lines:
        return Batch(pl.DataFrame({LOCATION: locations}), source, base_dir, fraction)
    try:
        frame = pl.read_ndjson(
            io.BytesIO(b"".join(lines if lines[-1].endswith(b"\n") else lines + [b"\n"])),
            infer_schema_length=None,
        )
        if frame.height == len(lines):
            return Batch(frame.with_columns(locations), source, base_dir, fraction)
    except Exception:  # noqa: BLE001 - any polars failure falls back to the line-by-line path
        pass
    return _parse_lines(lines, numbers, source, base_dir, fraction)


def _parse_lines(
    lines: list[bytes], numbers: list[int], source: str, base_dir: str, fraction: float
) -> Batch:
    rows, rejects = [], []
    for raw, n in zip(lines, numbers):
        location = f"{source}:line {n}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            snippet = raw.decode("utf-8", errors="replace")[:MAX_REJECT_ROW_CHARS]
            rejects.append(reject(source, location, f"non-UTF-8 bytes (at byte {err.start})", snippet))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            rejects.append(
                reject(
                    source,
                    location,
                    f"malformed JSON: {err.msg} (column {err.colno})",
                    text.strip()[:MAX_REJECT_ROW_CHARS],
                )
            )
            continue
        if not isinstance(obj, dict):
            rejects.append(
                reject(
                    source,
                    location,
                    f"not a JSON object ({type(obj).__name__})",
                    text.strip()[:MAX_REJECT_ROW_CHARS],
                )
            )
            continue
        obj[LOCATION] = location
        rows.append(obj)
    return Batch(rows_frame(rows), source, base_dir, fraction, rejects)


def rows_frame(rows: list[dict]) -> pl.DataFrame:
    """Dicts -> frame. Rows whose types disagree (an id that is a number here, a string there; a list here,
    a text there) fall back to all-text columns (lists as JSON text), so one odd row cannot sink the batch."""
    if not rows:
        return pl.DataFrame({LOCATION: pl.Series([], dtype=pl.String)})
    try:
        return pl.DataFrame(rows, infer_schema_length=None)
    except Exception:  # noqa: BLE001 - polars raises several types for mixed columns
        columns = list(dict.fromkeys(k for row in rows for k in row))
        clean = {c: [_as_text(row.get(c)) for row in rows] for c in columns}
        return pl.DataFrame(clean, schema={c: pl.String for c in columns})


def _as_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)


def _read_json_array(path: Path, source: str, base_dir: str, batch_rows: int) -> Iterator[Batch]:
    try:
        items = json.loads(path.read_bytes().removeprefix(BOM).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        yield Batch(
            rows_frame([]),
            source,
            base_dir,
            1.0,
            [reject(source, f"{source}:file", f"malformed JSON: {err}", None)],
        )
        return
    items = items if isinstance(items, list) else [items]
    for start in range(0, max(len(items), 1), batch_rows):
        rows, rejects = [], []
        for i, obj in enumerate(items[start : start + batch_rows], start=start):
            location = f"{source}:item {i}"
            if isinstance(obj, dict):
                rows.append({**obj, LOCATION: location})
            else:
                rejects.append(reject(source, location, f"not a JSON object ({type(obj).__name__})", obj))
        fraction = min(1.0, (start + batch_rows) / max(len(items), 1))
        yield Batch(rows_frame(rows), source, base_dir, fraction, rejects)
