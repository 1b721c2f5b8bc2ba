"""build_kb end to end: every input format, shards + manifest + read API, diff on rebuilds, S3 in and out."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from kb_builder.build import build_kb
from kb_builder.config import KBConfig, StorageConfig
from kb_builder.diff import kb_version
from kb_builder.shards import entity_shard_uris, read_diff, read_entities, read_manifest, read_mentions
from kb_builder.storage import Storage
from tests.kb_builder.helpers import entity, kb_config, mention, write_jsonl


def test_sample_build_local(local_storage):
    report = build_kb(KBConfig(sample_entities=60, sample_mentions=200), local_storage, progress=False)
    store = Storage(local_storage)
    assert (report.entities, report.mentions, report.rejected) == (60, 200, 0)
    assert report.diff == {"added": 60, "changed": 0, "deleted": 0}
    manifest = read_manifest(store, "sample")
    assert manifest["schema_version"] == 1 and manifest["entities"]["rows"] == 60
    assert sum(manifest["mentions"]["splits"].values()) == 200
    entities = read_entities(store, "sample")
    assert entities["entity_id"].n_unique() == 60
    assert all(u.startswith(local_storage.root) for u in entities["image_uris"].explode().to_list())
    assert json.loads(entities["attributes"][0])["type"]
    assert read_mentions(store, "sample", "dev").height == manifest["mentions"]["splits"]["dev"]
    assert read_mentions(store, "sample")["gold_entity_id"].null_count() >= 1  # NIL mentions
    # unchanged rebuild: same version, empty diff
    again = build_kb(KBConfig(sample_entities=60, sample_mentions=200), local_storage, progress=False)
    assert again.kb_version == report.kb_version and again.diff == {"added": 0, "changed": 0, "deleted": 0}
    assert read_diff(store, "sample")["added"] == []
    assert "60 entities" in again.summary()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_every_row_format_gives_the_same_table(fmt, tmp_path, local_storage):
    rows = [entity(i, aliases=[f"A{i}", f"B{i}"]) for i in range(5)]
    path = tmp_path / f"in/entities.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    else:
        path.parent.mkdir(parents=True)
        frame = pl.DataFrame(rows)
        if fmt == "csv":
            frame.with_columns(pl.col("aliases").list.join("|")).write_csv(path)
        else:
            frame.write_parquet(path)
    report = build_kb(kb_config([path], rows_per_shard=2), local_storage, progress=False)
    store = Storage(local_storage)
    assert report.entities == 5 and report.rejected == 0
    assert len(entity_shard_uris(store, "t")) == 3
    table = read_entities(store, "t").sort("entity_id")
    assert table["entity_id"].to_list() == [f"Q{i}" for i in range(5)]
    assert table["aliases"][1].to_list() == ["A1", "B1"]
    assert table["image_uris"][0].to_list() == [str(tmp_path / "in/images/q0.png")]


def test_globs_folders_and_column_map(tmp_path, local_storage):
    write_jsonl(tmp_path / "in/a.jsonl", [{"qid": "Q1", "label": "One", "kind": "x"}])
    write_jsonl(tmp_path / "in/b.jsonl", [{"qid": "Q2", "label": "Two", "kind": "y"}])
    write_jsonl(tmp_path / "m/ms.jsonl", [{"mid": "m1", "text": "One", "gold": "Q1", "split": "valid"}])
    kb = kb_config(
        [tmp_path / "in/*.jsonl"], [tmp_path / "m"], column_map={"mid": "mention_id", "text": "mention"}
    )
    report = build_kb(kb, local_storage, progress=False)
    assert (report.entities, report.mentions, report.rejected) == (2, 1, 0)
    store = Storage(local_storage)
    assert json.loads(read_entities(store, "t")["attributes"][1]) == {"kind": "y"}
    assert read_mentions(store, "t").row(0, named=True)["split"] == "dev"


def test_diff_after_add_change_delete(tmp_path, local_storage):
    path = tmp_path / "e.jsonl"
    write_jsonl(path, [entity(i) for i in range(4)])
    build_kb(kb_config([path]), local_storage, progress=False)
    write_jsonl(path, [entity(0), entity(1, description="new text"), entity(3), entity(7)])
    # 1 of 4 deleted is 25%, over the default kb.max_delete_fraction of 20%
    report = build_kb(kb_config([path], max_delete_fraction=0.5), local_storage, progress=False)
    assert report.diff == {"added": 1, "changed": 1, "deleted": 1}
    diff = read_diff(Storage(local_storage), "t")
    assert (diff["added"], diff["changed"], diff["deleted"]) == (["Q7"], ["Q1"], ["Q2"])
    assert Storage(local_storage).exists(local_storage.root + "/kb/t/manifest.prev.json")


def test_s3_inputs_and_outputs(s3_storage, tmp_path):
    store = Storage(s3_storage)
    write_jsonl(tmp_path / "e.jsonl", [entity(i) for i in range(3)])
    write_jsonl(tmp_path / "m.jsonl", [mention(i) for i in range(6)])
    store.upload_dir(tmp_path, store.join("inputs"))
    kb = kb_config([store.join("inputs", "e*.jsonl")], [store.join("inputs", "m.jsonl")], rows_per_shard=2)
    report = build_kb(kb, s3_storage, progress=False)
    assert (report.entities, report.mentions, report.rejected) == (3, 6, 0)
    assert report.manifest_uri == store.join("kb", "t", "manifest.json")
    entities = read_entities(store, "t")
    assert entities["image_uris"][0].to_list() == [store.join("inputs", "images", "q0.png")]
    assert read_mentions(store, "t", "train").height == 2
    assert len(entity_shard_uris(store, "t")) == 2
    first_build = read_manifest(store, "t")["build_dir"]
    # rebuild from a changed S3 input: the diff is computed against the shards on S3, stale shards go
    write_jsonl(tmp_path / "e.jsonl", [entity(0, name="Renamed")])
    store.upload_dir(tmp_path, store.join("inputs"))
    again = build_kb(kb, s3_storage, progress=False, allow_mass_delete=True)  # 2 of 3 deleted
    assert again.diff == {"added": 0, "changed": 1, "deleted": 2}
    assert read_diff(store, "t")["deleted"] == ["Q1", "Q2"]
    second_build = read_manifest(store, "t")["build_dir"]
    assert entity_shard_uris(store, "t") == [
        store.join("kb", "t", second_build, "entities", "part-00000.parquet")
    ]
    builds = {
        "/".join(u.split("/kb/t/")[1].split("/")[:2]) for u in store.list(store.join("kb", "t", "builds"))
    }
    assert builds == {first_build, second_build}  # the live build and the previous one, nothing else


def test_each_build_publishes_to_its_own_folder_and_keeps_one_previous(tmp_path, local_storage):
    path = tmp_path / "e.jsonl"
    store = Storage(local_storage)
    dirs = []
    for n in (3, 4, 5):
        write_jsonl(path, [entity(i) for i in range(n)])
        build_kb(kb_config([path], rows_per_shard=2), local_storage, progress=False)
        dirs.append(read_manifest(store, "t")["build_dir"])
        assert read_entities(store, "t").height == n
    assert len(set(dirs)) == 3
    on_disk = sorted(p.name for p in Path(local_storage.root, "kb/t/builds").iterdir())
    assert on_disk == sorted(d.split("/")[1] for d in dirs[1:])  # the oldest build folder is gone
    assert read_diff(store, "t")["added"] == ["Q4"]
    assert json.loads(Path(local_storage.root, "kb/t/diff.json").read_text())["added"] == ["Q4"]


def test_sample_build_on_s3(s3_storage):
    report = build_kb(KBConfig(sample_entities=30, sample_mentions=60), s3_storage, progress=False)
    store = Storage(s3_storage)
    assert (report.entities, report.mentions) == (30, 60)
    assert store.exists(store.join("sample_src", "images", "E00000.png"))
    uri = read_entities(store, "sample")["image_uris"][0][0]
    assert uri.startswith("s3://") and store.exists(uri)


def test_relative_root_gives_absolute_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = StorageConfig(root="./rel_data", cache_dir=str(tmp_path / "cache"))
    report = build_kb(KBConfig(sample_entities=20, sample_mentions=30), cfg, progress=False)
    assert report.manifest_uri == str(tmp_path / "rel_data/kb/sample/manifest.json")
    store = Storage(cfg)
    assert entity_shard_uris(store, "sample")[0].startswith(str(tmp_path))
    image_uri = read_entities(store, "sample")["image_uris"][0][0]
    assert image_uri.startswith(str(tmp_path / "rel_data/sample_src"))


def test_kb_version_is_layout_and_bucket_independent(tmp_path, local_storage):
    path = write_jsonl(tmp_path / "e.jsonl", [entity(i) for i in range(40)])
    one = build_kb(kb_config([path], name="a", rows_per_shard=1000), local_storage, progress=False)
    many = build_kb(kb_config([path], name="b", rows_per_shard=7), local_storage, progress=False)
    assert one.kb_version == many.kb_version
    files = [Storage(local_storage).local_path(u) for u in entity_shard_uris(Storage(local_storage), "b")]
    assert len(files) == 6
    assert {kb_version(files, rows_per_bucket=n) for n in (3, 10, 100)} == {one.kb_version}
