"""Issue 17 (KB build): a ragged CSV row, a BOM or a NUL never loses other rows; a build that would delete
most of the live KB stops before publishing unless the user allows it."""

from __future__ import annotations

import json

import pytest

from kb_builder.build import MassDeleteError, build_kb
from kb_builder.shards import read_entities, read_manifest
from kb_builder.storage import Storage
from tests.kb_builder.helpers import kb_config


def _rejects(cfg, name="t") -> list[dict]:
    text = Storage(cfg).read_bytes(f"{cfg.root}/kb/{name}/rejects.jsonl").decode()
    return [json.loads(line) for line in text.splitlines()]


def _csv(path, n_rows: int, extra: bytes = b"") -> None:
    rows = b"".join(f"Q{i},Name{i},desc {i}\n".encode() for i in range(n_rows))
    path.write_bytes(b"id,name,description\n" + rows + extra)


def test_a_ragged_csv_row_is_one_reject_and_the_rebuild_deletes_nothing(tmp_path, local_storage):
    path = tmp_path / "e.csv"
    _csv(path, 10)
    assert build_kb(kb_config([path]), local_storage, progress=False).entities == 10
    _csv(path, 10, b"Q10,Ten,desc,EXTRA\nQ11,Eleven\n")  # one extra field, one missing field
    report = build_kb(kb_config([path]), local_storage, progress=False)
    assert (report.entities, report.rejected, report.diff["deleted"]) == (10, 2, 0)
    got = {r["location"]: r["reason"] for r in _rejects(local_storage)}
    assert got == {
        f"{path}:row 11": "ragged CSV row: 4 fields, the header has 3",
        f"{path}:row 12": "ragged CSV row: 2 fields, the header has 3",
    }
    assert report.rejects_by_reason == {"ragged CSV row": 2}


def test_a_ragged_row_in_the_middle_keeps_the_rows_after_it(tmp_path, local_storage):
    path = tmp_path / "e.tsv"
    path.write_bytes(b'id\tname\nQ1\tOne\nQ2\tTwo\tx\ty\nQ3\tThree\n\nQ5\t"Fi\nve"\n')
    report = build_kb(kb_config([path]), local_storage, progress=False)
    assert (report.entities, report.rejected) == (3, 1)
    kept = read_entities(Storage(local_storage), "t").sort("entity_id")
    assert kept["name"].to_list() == ["One", "Three", "Fi\nve"]
    assert [r["location"] for r in _rejects(local_storage)] == [f"{path}:row 2"]


def test_a_build_deleting_most_of_the_kb_refuses_and_leaves_the_old_manifest(tmp_path, local_storage):
    path = tmp_path / "e.csv"
    _csv(path, 10)
    build_kb(kb_config([path]), local_storage, progress=False)
    before = read_manifest(Storage(local_storage), "t")
    _csv(path, 2)  # 8 of 10 deleted: 80% > 20%
    with pytest.raises(
        MassDeleteError, match=r"delete 8 of 10 live entities \(80% > kb.max_delete_fraction 20%\)"
    ):
        build_kb(kb_config([path]), local_storage, progress=False)
    assert read_manifest(Storage(local_storage), "t") == before
    assert read_entities(Storage(local_storage), "t").height == 10
    # a configured share lets it through, and so does the explicit flag
    report = build_kb(kb_config([path], max_delete_fraction=0.9), local_storage, progress=False)
    assert (report.entities, report.diff["deleted"]) == (2, 8)


def test_mel_kb_build_refuses_with_a_message_and_allow_mass_delete_lets_it_through(
    tmp_path, local_storage, capsys
):
    from cluster.cli import main

    path = tmp_path / "e.csv"
    _csv(path, 10)
    sets = [
        "--set",
        f"storage.root={local_storage.root}",
        "--set",
        f"storage.cache_dir={local_storage.cache_dir}",
    ]
    sets += ["--set", "kb.name=t", "--set", "kb.sample=false", "--set", f"kb.entity_inputs=[{path}]"]
    assert main([*sets, "kb", "build"]) == 0
    path.write_bytes(b"id,name\nQ0,Name0\n")
    assert main([*sets, "kb", "build"]) == 2
    err = capsys.readouterr().err
    assert "would delete 9 of 10 live entities" in err and "--allow-mass-delete" in err
    assert read_entities(Storage(local_storage), "t").height == 10
    assert main([*sets, "kb", "build", "--allow-mass-delete"]) == 0
    assert read_entities(Storage(local_storage), "t")["entity_id"].to_list() == ["Q0"]


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_utf8_bom_is_accepted(tmp_path, local_storage, suffix):
    path = tmp_path / f"e.{suffix}"
    body = (
        b'{"id": "Q1", "name": "One"}\n{"id": "Q2", "name": "Two"}\n'
        if suffix == "jsonl"
        else b"id,name\nQ1,One\nQ2,Two\n"
    )
    path.write_bytes(b"\xef\xbb\xbf" + body)
    report = build_kb(kb_config([path]), local_storage, progress=False)
    assert (report.entities, report.rejected) == (2, 0)


def test_a_json_array_file_with_a_bom_is_read(tmp_path, local_storage):
    path = tmp_path / "e.json"
    path.write_bytes(b'\xef\xbb\xbf[{"id": "Q1", "name": "One"}, {"id": "Q2", "name": "Two"}]')
    report = build_kb(kb_config([path]), local_storage, progress=False)
    assert (report.entities, report.rejected) == (2, 0)


def test_a_raw_nul_in_a_jsonl_string_is_rejected_with_a_reason(tmp_path, local_storage):
    path = tmp_path / "e.jsonl"
    path.write_bytes(
        b'{"id": "Q1", "name": "a\x00b"}\n{"id": "Q2", "name": "ok"}\n{"id": "Q3", "name": "c\\u0000d"}\n'
    )
    report = build_kb(kb_config([path]), local_storage, progress=False)
    assert (report.entities, report.rejected) == (2, 1)
    (bad,) = _rejects(local_storage)
    assert bad["location"] == f"{path}:line 1" and "control character" in bad["reason"]
