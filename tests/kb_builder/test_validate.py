"""Bad input: each kind of bad row is rejected with a reason naming file and line/row; other rows survive."""

from __future__ import annotations

import json

import polars as pl
import pytest

from kb_builder.build import build_kb
from kb_builder.shards import read_entities, read_mentions
from kb_builder.storage import Storage
from kb_builder.validate import DuplicateIdError
from tests.kb_builder.helpers import entity, kb_config, mention, write_jsonl


def _rejects(cfg, name="t") -> list[dict]:
    text = Storage(cfg).read_bytes(f"{cfg.root}/kb/{name}/rejects.jsonl").decode()
    return [json.loads(line) for line in text.splitlines()]


def test_bad_jsonl_rows_each_rejected_with_file_and_line(tmp_path, local_storage):
    path = write_jsonl(
        tmp_path / "e.jsonl",
        [
            entity(1),  # line 1 good
            '{"id": "Q2", "name": "broken"',  # line 2 malformed JSON
            b'{"id": "Q3", "name": "bad \xff byte"}',  # line 3 not UTF-8
            entity(4, name=""),  # line 4 empty name
            {"name": "no id"},  # line 5 missing id
            entity(6, name="x" * 40),  # line 6 name too long (max 32)
            entity(7, description="d" * 300),  # line 7 field too long (max 200)
            entity(8, image="ftp://host/a.png"),  # line 8 bad scheme
            entity(9, image="file:///etc/passwd"),  # line 9 bad scheme
            entity(10, image="../../etc/passwd"),  # line 10 escapes the folder
            entity(1, name="again"),  # line 11 duplicate id
            "[1, 2]",  # line 12 not an object
            entity(13, image="https://example.org/a.png"),  # line 13 good (remote image)
            {"id": 14, "name": "Fourteen", "aliases": "solo"},  # line 14 good: other types, same meaning
        ],
    )
    report = build_kb(
        kb_config([path], max_name_chars=32, max_field_chars=200), local_storage, progress=False
    )
    assert (report.entities, report.rejected) == (3, 11)
    got = {r["location"]: r["reason"] for r in _rejects(local_storage)}
    src = str(path)
    assert got[f"{src}:line 2"].startswith("malformed JSON")
    assert got[f"{src}:line 3"].startswith("non-UTF-8 bytes")
    assert got[f"{src}:line 4"] == "missing name"
    assert got[f"{src}:line 5"] == "missing entity_id"
    assert got[f"{src}:line 6"] == "name too long (40 chars > 32)"
    assert got[f"{src}:line 7"] == "description too long (300 chars > 200)"
    assert (
        got[f"{src}:line 8"].startswith("image URI scheme not allowed") and "ftp://" in got[f"{src}:line 8"]
    )
    assert got[f"{src}:line 9"].startswith("image URI scheme not allowed")
    assert got[f"{src}:line 10"].startswith("image path escapes the KB folder")
    assert got[f"{src}:line 11"] == "duplicate entity_id 'Q1' (kept the first)"
    assert got[f"{src}:line 12"] == "not a JSON object (list)"
    assert report.rejects_by_reason["image URI scheme not allowed"] == 2
    kept = read_entities(Storage(local_storage), "t")
    assert sorted(kept["entity_id"].to_list()) == ["14", "Q1", "Q13"]
    assert kept.filter(pl.col("entity_id") == "14")["aliases"][0].to_list() == ["solo"]
    assert kept.filter(pl.col("entity_id") == "Q1")["name"][0] == "Name1"  # the first copy


def test_csv_invalid_utf8_and_missing_fields(tmp_path, local_storage):
    path = tmp_path / "e.csv"
    path.write_bytes(
        b"id,name,description\nQ1,Good,ok\nQ2,Bad \xff\xfe,ok\nQ3,,empty name\n,NoId,x\nQ5,Fine,ok\n"
    )
    report = build_kb(kb_config([path]), local_storage, progress=False)
    assert (report.entities, report.rejected) == (2, 3)
    got = {r["location"]: r["reason"] for r in _rejects(local_storage)}
    assert got == {
        f"{path}:row 2": "non-UTF-8 text in name",
        f"{path}:row 3": "missing name",
        f"{path}:row 4": "missing entity_id",
    }


def test_csv_list_cells_pipe_or_json(tmp_path, local_storage):
    path = tmp_path / "e.csv"
    path.write_text('id,name,aliases\nQ1,One,"[""a"", ""b""]"\nQ2,Two,c|d\nQ3,Three,[oops\nQ4,Four,\n')
    report = build_kb(kb_config([path]), local_storage, progress=False)
    assert (report.entities, report.rejected) == (4, 0)
    table = read_entities(Storage(local_storage), "t").sort("entity_id")
    assert table["aliases"].to_list() == [["a", "b"], ["c", "d"], ["[oops"], []]


def test_mention_rejects_bad_split_and_duplicates(tmp_path, local_storage):
    ents = write_jsonl(tmp_path / "e.jsonl", [entity(1)])
    ments = write_jsonl(
        tmp_path / "m.jsonl",
        [
            mention(0),
            mention(1, split="holdout"),
            mention(0),
            mention(3, mention=None),
            mention(4, gold=None),
        ],
    )
    report = build_kb(kb_config([ents], [ments]), local_storage, progress=False)
    assert (report.mentions, report.rejected) == (2, 3)
    reasons = sorted(r["reason"] for r in _rejects(local_storage))
    assert reasons == [
        "duplicate mention_id 'm0' (kept the first)",
        "missing mention",
        "split not train|dev|test: holdout",
    ]
    table = read_mentions(Storage(local_storage), "t")
    assert table.filter(pl.col("mention_id") == "m4")["gold_entity_id"][0] is None  # "nil" -> NIL


def test_duplicate_policy_fail_names_the_row(tmp_path, local_storage):
    path = write_jsonl(tmp_path / "e.jsonl", [entity(1), entity(2), entity(1)])
    with pytest.raises(DuplicateIdError, match=r"'Q1' at .*e.jsonl:line 3"):
        build_kb(kb_config([path], duplicate_policy="fail"), local_storage, progress=False)


def test_duplicates_across_files_and_batches(tmp_path, local_storage):
    a = write_jsonl(tmp_path / "a.jsonl", [entity(i) for i in range(3)])
    b = write_jsonl(tmp_path / "b.jsonl", [entity(i) for i in range(2, 5)])
    report = build_kb(kb_config([a, b]), local_storage, progress=False)
    assert (report.entities, report.rejected) == (5, 1)
    assert _rejects(local_storage)[0]["location"] == f"{b}:line 1"


def test_missing_input_is_a_clear_error(tmp_path, local_storage):
    with pytest.raises(ValueError, match="kb.entity_inputs and kb.mention_inputs are empty"):
        build_kb(kb_config(), local_storage, progress=False)
    with pytest.raises(FileNotFoundError, match="nope"):
        build_kb(kb_config([tmp_path / "nope.jsonl"]), local_storage, progress=False)
