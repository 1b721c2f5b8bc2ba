"""Readers and progress: corrupt files, TSV, split inference, batching, input fingerprints, progress lines."""

from __future__ import annotations

import io

import polars as pl

from kb_builder.build import build_kb
from kb_builder.canonical import stable_split
from kb_builder.config import StorageConfig
from kb_builder.progress import Progress
from kb_builder.readers import expand_inputs, read_batches
from kb_builder.shards import read_manifest, read_mentions
from kb_builder.storage import Storage
from tests.kb_builder.helpers import entity, kb_config, mention, write_jsonl


def test_corrupt_parquet_is_one_reject_and_other_files_survive(tmp_path, local_storage):
    (tmp_path / "bad.parquet").write_bytes(b"garbage")
    pl.DataFrame([entity(1), entity(2)]).write_parquet(tmp_path / "good.parquet")
    report = build_kb(kb_config([tmp_path / "*.parquet"]), local_storage, progress=False)
    assert (report.entities, report.rejected) == (2, 1)
    assert report.rejects_by_reason == {"unreadable Parquet": 1}


def test_tsv_and_batches_keep_row_numbers(tmp_path):
    path = tmp_path / "e.tsv"
    path.write_text("id\tname\n" + "".join(f"Q{i}\tN{i}\n" for i in range(1, 8)))
    store = Storage(StorageConfig(root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    batches = [b for _, b in read_batches(expand_inputs([str(path)], store), "auto", store, batch_rows=3)]
    rows = pl.concat([b.rows for b in batches])
    assert rows.height == 7 and len(batches) >= 3
    assert rows["_location"].to_list()[-1] == f"{path}:row 7"
    assert batches[-1].fraction_done == 1.0


def test_jsonl_batches_keep_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [entity(i) for i in range(5)] + ["{bad"] + [entity(9)])
    store = Storage(StorageConfig(root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    batches = [b for _, b in read_batches([str(path)], "jsonl", store, batch_rows=2)]
    assert [b.rows.height for b in batches] == [2, 2, 1, 1]
    assert batches[2].rejects[0]["location"] == f"{path}:line 6"
    assert batches[-1].rows["_location"][0] == f"{path}:line 7"


def test_split_from_file_name_else_stable_hash(tmp_path, local_storage):
    ents = write_jsonl(tmp_path / "e.jsonl", [entity(1)])
    named = write_jsonl(
        tmp_path / "wiki_test.jsonl",
        [{k: v for k, v in mention(i).items() if k != "split"} for i in range(3)],
    )
    plain = write_jsonl(
        tmp_path / "more.jsonl", [{"id": f"x{i}", "mention": "N", "answer": "Q1"} for i in range(40)]
    )
    build_kb(kb_config([ents], [named, plain]), local_storage, progress=False)
    table = read_mentions(Storage(local_storage), "t")
    assert table.filter(pl.col("mention_id").str.starts_with("m"))["split"].to_list() == ["test"] * 3
    hashed = table.filter(pl.col("mention_id").str.starts_with("x"))
    assert hashed["split"].to_list() == [stable_split(f"x{i}") for i in range(40)]
    assert set(hashed["split"]) == {"train", "dev", "test"}


def test_manifest_records_input_fingerprints(tmp_path, local_storage):
    path = write_jsonl(tmp_path / "e.jsonl", [entity(1)])
    build_kb(kb_config([path]), local_storage, progress=False)
    inputs = read_manifest(Storage(local_storage), "t")["inputs"]
    assert inputs == [
        {
            "kind": "entities",
            "uri": str(path),
            "fingerprint": f"size:{path.stat().st_size}:mtime_ns:{path.stat().st_mtime_ns}",
        }
    ]


def test_progress_prints_rate_eta_and_summary():
    out = io.StringIO()
    meter = Progress("load", every_s=0.0, stream=out)
    meter.update(500, 0.25)
    meter.update(500, 0.5)
    summary = meter.done("1,000 kept")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("load: 500/2,000 rows (25%), ") and "rows/s" in lines[0] and "ETA" in lines[0]
    assert lines[1].startswith("load: 1,000/2,000 rows (50%)") and "ETA" in lines[1]
    assert (
        summary == lines[-1] and summary.startswith("load: done, 1,000 rows in ") and summary.endswith("kept")
    )
