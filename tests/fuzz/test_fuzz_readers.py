"""Property tests of the KB readers (issue 9, part 3; issue 17): random JSONL and CSV files, some lines
malformed, ragged, with raw control bytes (NUL...) or a UTF-8 BOM at the start.

Invariants: no crash; every non-blank input line (CSV: record) is either accepted or rejected, never both,
never lost (accepted + rejected == input lines); every reject names its file and line or row.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kb_builder.build import build_kb
from kb_builder.config import KBConfig, StorageConfig
from kb_builder.readers.base import LOCATION
from kb_builder.readers.csv import read_csv
from kb_builder.readers.jsonl import read_jsonl

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# A list nested in a list is flattened to its strings (see the test below).
flat_lists = st.lists(
    json_scalars | st.dictionaries(st.text(max_size=6), json_values, max_size=2), max_size=3
)
odd_values = json_scalars | flat_lists | st.dictionaries(st.text(max_size=6), json_values, max_size=3)
ids = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=8)
BOM = b"\xef\xbb\xbf"
# Text with raw control characters (NUL, tab, bell, escape, ...); newlines are the one thing a line cannot hold.
control_text = st.text(
    st.characters(min_codepoint=0, max_codepoint=0x1F, exclude_characters="\n")
    | st.characters(exclude_characters="\n"),
    max_size=12,
)


@st.composite
def entity_lines(draw) -> bytes:
    """One JSONL line: a plausible entity, an object of odd types, malformed JSON, a non-object, or raw bytes."""
    kind = draw(st.sampled_from(["entity", "odd", "malformed", "non_object", "bytes", "control"]))
    if kind == "entity":
        row = {
            "id": draw(ids),
            "name": draw(st.text(min_size=0, max_size=20)),
            "description": draw(st.text(max_size=30)),
            "aliases": draw(st.lists(st.text(max_size=8), max_size=3) | st.text(max_size=8)),
        }
        return json.dumps(row, ensure_ascii=draw(st.booleans())).encode()
    if kind == "odd":
        keys = st.sampled_from(["id", "name", "description", "aliases", "image", "type", "attributes"])
        return json.dumps(draw(st.dictionaries(keys, odd_values, max_size=5))).encode()
    if kind == "malformed":
        return draw(st.sampled_from([b'{"id": "Q1", "name": "x"', b"{bad", b'{"id": }', b"}{", b'{"a": 1,}']))
    if kind == "control":  # raw control characters inside a JSON string (NUL...): strict JSON refuses them
        name = draw(control_text).replace('"', "").replace("\\", "")
        return ('{"id": ' + json.dumps(draw(ids)) + ', "name": "' + name + '"}').encode(
            "utf-8", "surrogatepass"
        )
    if kind == "non_object":
        return json.dumps(draw(st.lists(json_scalars, max_size=3) | json_scalars)).encode()
    return draw(st.binary(min_size=1, max_size=40)).replace(b"\n", b" ").replace(b"\r", b" ")


def non_blank(lines: list[bytes]) -> list[int]:
    return [n for n, line in enumerate(lines, start=1) if line.strip()]


def write(folder: Path, lines: list[bytes], bom: bool = False) -> Path:
    """The lines as `entities.jsonl` (after a UTF-8 BOM with `bom`). A first line starting with `[` is kept out
    of the properties: the reader then takes the whole file for one JSON array (see the test below)."""
    if lines[0].lstrip().startswith(b"["):
        lines[0] = b'{"id": "first", "name": "First"}'
    path = folder / "entities.jsonl"
    path.write_bytes((BOM if bom else b"") + b"".join(line + b"\n" for line in lines))
    return path


@SETTINGS
@given(
    lines=st.lists(entity_lines(), min_size=1, max_size=30), batch_rows=st.integers(1, 12), bom=st.booleans()
)
def test_reader_accepts_or_rejects_every_line_once(lines, batch_rows, bom):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), lines, bom)
        accepted, rejected = [], []
        for batch in read_jsonl(path, str(path), tmp, batch_rows):
            accepted += batch.rows[LOCATION].to_list() if batch.rows.height else []
            rejected += [r["location"] for r in batch.rejects]
            assert all(r["reason"] for r in batch.rejects)

    def numbers(locs):
        return [int(re.fullmatch(rf"{re.escape(str(path))}:line (\d+)", x).group(1)) for x in locs]

    assert sorted(numbers(accepted) + numbers(rejected)) == non_blank(lines)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(entity_lines(), min_size=1, max_size=25), bom=st.booleans())
def test_build_keeps_or_rejects_every_line_and_rejects_name_it(lines, bom):
    """Through canonical mapping and validation too: entities + rejected == input lines, no crash."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), lines, bom)
        storage = StorageConfig(root=f"{tmp}/data", cache_dir=f"{tmp}/cache")
        report = build_kb(
            KBConfig(name="f", sample=False, entity_inputs=[str(path)]), storage, progress=False
        )
        text = Path(f"{tmp}/data/kb/f/rejects.jsonl").read_text(encoding="utf-8")
        rejects = [json.loads(x) for x in text.split("\n") if x]  # JSONL lines end at \n only
    assert report.entities + report.rejected == len(non_blank(lines))
    assert len(rejects) == report.rejected
    for item in rejects:
        assert re.fullmatch(rf"{re.escape(str(path))}:line \d+", item["location"]) and item["reason"]


def test_a_first_line_that_is_an_array_loses_only_that_line(tmp_path):
    path = tmp_path / "entities.jsonl"
    path.write_bytes(b'[1, 2]\n{"id": "Q1", "name": "One"}\n{"id": "Q2", "name": "Two"}\n')
    batches = list(read_jsonl(path, str(path), str(tmp_path)))
    accepted = [loc for b in batches for loc in (b.rows[LOCATION].to_list() if b.rows.height else [])]
    rejected = [r["location"] for b in batches for r in b.rejects]
    assert accepted == [f"{path}:line 2", f"{path}:line 3"] and rejected == [f"{path}:line 1"]


def test_a_nested_list_in_one_row_rejects_only_that_row(tmp_path):
    path = tmp_path / "entities.jsonl"
    path.write_bytes(
        b'{"id": "Q1", "name": "One", "aliases": ["a"]}\n{"id": "Q2", "name": "Two", "aliases": [["b"]]}\n'
        b'{"id": "Q3", "name": "Three", "image": [["x.png"]]}\n'
    )
    storage = StorageConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    report = build_kb(KBConfig(name="f", sample=False, entity_inputs=[str(path)]), storage, progress=False)
    assert report.entities + report.rejected == 3 and report.entities >= 1


# -- CSV: records, not lines (a quoted field may span lines) -------------------------------------------------------
CSV_HEADER = ["id", "name", "description"]


@st.composite
def csv_records(draw) -> bytes:
    """One CSV record: a good row (fields quoted by csv.writer, control characters and newlines inside), a
    ragged row (too many or too few fields), or raw bytes without quotes (at most one line)."""
    kind = draw(st.sampled_from(["row", "ragged", "bytes"]))
    if kind == "bytes":
        raw = draw(st.binary(min_size=1, max_size=40))
        return raw.replace(b"\n", b" ").replace(b'"', b" ").replace(b"\r", b" ") or b" "
    n_fields = len(CSV_HEADER) if kind == "row" else draw(st.sampled_from([1, 2, 4, 5]))
    fields = [draw(ids)] + [draw(control_text | st.text(max_size=12)) for _ in range(n_fields - 1)]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(fields)  # "\r\n": fields holding a CR are quoted too
    return out.getvalue().encode("utf-8", "surrogatepass")[:-2]


def write_csv(folder: Path, records: list[bytes], bom: bool) -> Path:
    path = folder / "entities.csv"
    header = ",".join(CSV_HEADER).encode()
    path.write_bytes((BOM if bom else b"") + b"".join(r + b"\n" for r in [header, *records]))
    return path


def csv_rows(records: list[bytes]) -> list[int]:
    """Row numbers of the records that are rows (an empty line is none)."""
    return [n for n, record in enumerate(records, start=1) if record]


@SETTINGS
@given(
    records=st.lists(csv_records(), min_size=1, max_size=30), batch_rows=st.integers(1, 12), bom=st.booleans()
)
@example(records=[b"0,,", b"0,,\r0"], batch_rows=1, bom=False)  # a bare CR is one bad row, not a row break
def test_csv_reader_accepts_or_rejects_every_record_once(records, batch_rows, bom):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp), records, bom)
        accepted, rejected = [], []
        for batch in read_csv(path, str(path), tmp, batch_rows):
            accepted += batch.rows[LOCATION].to_list() if batch.rows.height else []
            rejected += [r["location"] for r in batch.rejects]
            assert all(r["reason"] for r in batch.rejects)
            assert batch.rows.height == 0 or batch.rows.columns[:3] == CSV_HEADER  # the BOM is not in "id"

    def numbers(locs):
        return [int(re.fullmatch(rf"{re.escape(str(path))}:row (\d+)", x).group(1)) for x in locs]

    assert sorted(numbers(accepted) + numbers(rejected)) == csv_rows(records)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(csv_records(), min_size=1, max_size=25), bom=st.booleans())
@example(records=[b"0,\r,"], bom=False)
def test_csv_build_keeps_or_rejects_every_record(records, bom):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp), records, bom)
        storage = StorageConfig(root=f"{tmp}/data", cache_dir=f"{tmp}/cache")
        report = build_kb(
            KBConfig(name="f", sample=False, entity_inputs=[str(path)]), storage, progress=False
        )
    assert report.entities + report.rejected == len(csv_rows(records))
