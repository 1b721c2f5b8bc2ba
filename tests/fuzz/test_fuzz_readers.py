"""Property tests of the KB readers (issue 9, part 3): random JSONL files, some lines malformed.

Invariants: no crash; every non-blank input line is either accepted or rejected, never both, never lost
(accepted + rejected == input lines); every reject names its file and line.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_builder.build import build_kb
from kb_builder.config import KBConfig, StorageConfig
from kb_builder.readers.base import LOCATION
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


@st.composite
def entity_lines(draw) -> bytes:
    """One JSONL line: a plausible entity, an object of odd types, malformed JSON, a non-object, or raw bytes."""
    kind = draw(st.sampled_from(["entity", "odd", "malformed", "non_object", "bytes"]))
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
    if kind == "non_object":
        return json.dumps(draw(st.lists(json_scalars, max_size=3) | json_scalars)).encode()
    return draw(st.binary(min_size=1, max_size=40)).replace(b"\n", b" ").replace(b"\r", b" ")


def non_blank(lines: list[bytes]) -> list[int]:
    return [n for n, line in enumerate(lines, start=1) if line.strip()]


def write(folder: Path, lines: list[bytes]) -> Path:
    """The lines as `entities.jsonl`. A first line starting with `[` is kept out of the properties: the reader
    then takes the whole file for one JSON array (see the test below)."""
    if lines[0].lstrip().startswith(b"["):
        lines[0] = b'{"id": "first", "name": "First"}'
    path = folder / "entities.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@SETTINGS
@given(lines=st.lists(entity_lines(), min_size=1, max_size=30), batch_rows=st.integers(1, 12))
def test_reader_accepts_or_rejects_every_line_once(lines, batch_rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), lines)
        accepted, rejected = [], []
        for batch in read_jsonl(path, str(path), tmp, batch_rows):
            accepted += batch.rows[LOCATION].to_list() if batch.rows.height else []
            rejected += [r["location"] for r in batch.rejects]
            assert all(r["reason"] for r in batch.rejects)

    def numbers(locs):
        return [int(re.fullmatch(rf"{re.escape(str(path))}:line (\d+)", x).group(1)) for x in locs]

    assert sorted(numbers(accepted) + numbers(rejected)) == non_blank(lines)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(entity_lines(), min_size=1, max_size=25))
def test_build_keeps_or_rejects_every_line_and_rejects_name_it(lines):
    """Through canonical mapping and validation too: entities + rejected == input lines, no crash."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), lines)
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
