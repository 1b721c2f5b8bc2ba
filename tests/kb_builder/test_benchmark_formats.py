"""Benchmark formats: the real MELBench WikiMEL file and a tiny MIMIC folder (local and on S3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kb_builder.build import build_kb
from kb_builder.config import KBConfig
from kb_builder.shards import read_entities, read_mentions
from kb_builder.storage import Storage

# shared/ lies beside the checkout (as in CI); MEL_SHARED_DIR points elsewhere.
SHARED = Path(os.environ.get("MEL_SHARED_DIR", Path(__file__).resolve().parents[2].parent / "shared"))
WIKIMEL = SHARED / "data" / "melbench" / "Wikidata-MEL.json"


@pytest.mark.skipif(not WIKIMEL.exists(), reason=f"MELBench data not found at {WIKIMEL} (set MEL_SHARED_DIR)")
def test_melbench_wikimel_counts(local_storage):
    kb = KBConfig(name="wikimel", sample=False, entity_inputs=[str(WIKIMEL)])  # format auto-detected
    report = build_kb(kb, local_storage, progress=False)
    assert report.mentions == 25_846 and report.rejected == 0
    assert report.entities == 17_391  # distinct answer QIDs
    store = Storage(local_storage)
    mentions = read_mentions(store, "wikimel")
    assert sum(report.splits.values()) == 25_846 and set(report.splits) == {"train", "dev", "test"}
    row = mentions.filter(mentions["mention_id"] == "46351-1").row(0, named=True)
    assert (row["mention"], row["gold_entity_id"]) == ("Powers", "Q256474")
    entities = read_entities(store, "wikimel")
    assert entities.filter(entities["entity_id"] == "Q256474")["name"][0] == "Stefanie Powers"


def write_mimic(folder: Path, image_dir: str = "mention_image") -> Path:
    folder.mkdir(parents=True)
    entities = [
        {
            "id": "Q1",
            "type": "person",
            "entity_name": "Ada%20Lovelace",
            "desc": "mathematician",
            "image_list": ["Q1_0.jpg", "Q1_1.jpg"],
        },
        {
            "id": "Q2",
            "type": "place",
            "entity_name": "S%C3%A3o%20Paulo",
            "attr": "city in Brazil",
            "image_list": [],
        },
        "not an entity",
    ]
    (folder / "kb_entity.json").write_text(json.dumps(entities))
    (folder / "qid2id.json").write_text(json.dumps({"Q1": 0, "Q2": 1}))
    mention = {
        "mentions": "Ada",
        "entities": "Ada Lovelace",
        "sentence": "Ada at work",
        "imgPath": "m0.jpg",
        "answer": "Q1",
        "desc": "",
    }
    (folder / "WikiMEL_train.json").write_text(
        json.dumps([mention, {**mention, "answer": "nil", "imgPath": ""}])
    )
    (folder / "WikiMEL_dev.json").write_text(json.dumps([{**mention, "mentions": "Paulo", "answer": "Q2"}]))
    (folder / "WikiMEL_test.json").write_text("[{broken")
    (folder / image_dir).mkdir()
    (folder / image_dir / "m0.jpg").write_bytes(b"jpg")
    return folder


def test_mimic_folder(tmp_path, local_storage):
    folder = write_mimic(tmp_path / "wikimel")
    report = build_kb(
        KBConfig(name="mimic", sample=False, format="mimic", entity_inputs=[str(folder)]),
        local_storage,
        progress=False,
    )
    assert (report.entities, report.mentions, report.rejected) == (2, 3, 2)
    assert report.splits == {"train": 2, "dev": 1}
    store = Storage(local_storage)
    entities = read_entities(store, "mimic").sort("entity_id").to_dicts()
    assert [e["name"] for e in entities] == ["Ada Lovelace", "São Paulo"]
    assert entities[0]["image_uris"] == [str(folder / "kb_image/Q1_0.jpg"), str(folder / "kb_image/Q1_1.jpg")]
    assert json.loads(entities[0]["attributes"]) == {"mimic_index": 0, "type": "person"}
    assert entities[1]["description"] == "city in Brazil"
    mentions = read_mentions(store, "mimic").sort("mention_id").to_dicts()
    assert mentions[0]["image_uri"] == str(folder / "mention_image/m0.jpg")
    assert [m["gold_entity_id"] for m in mentions] == ["Q2", "Q1", None]


def test_mimic_on_s3_with_richpedia_image_folder(tmp_path, s3_storage):
    folder = write_mimic(tmp_path / "rich", image_dir="mention_images")
    store = Storage(s3_storage)
    store.upload_dir(folder, store.join("in", "rich"))
    kb = KBConfig(name="rich", sample=False, entity_inputs=[store.join("in", "rich")])  # format auto-detected
    report = build_kb(kb, s3_storage, progress=False)
    assert (report.entities, report.mentions) == (2, 3)
    uri = read_mentions(store, "rich").sort("mention_id")["image_uri"][1]
    assert uri == store.join("in", "rich", "mention_images", "m0.jpg") and store.exists(uri)


def test_melbench_bad_records_counted_once(tmp_path, local_storage):
    data = {
        "1": {
            "id": "1",
            "sentence": "A, B",
            "mentions": ["A", "B"],
            "entities": ["Aa", "Bb"],
            "answer": ["Q1", "Q2"],
        },
        "2": {"id": "2", "sentence": "C", "mentions": ["C"], "entities": ["Cc"], "answer": []},
        "3": "not a record",
        "4": {"id": "4", "sentence": "R", "mentions": "R", "entities": "Rr", "answer": "Q1"},  # scalars
    }
    path = tmp_path / "Tiny-MEL.json"
    path.write_text(json.dumps(data))
    kb = KBConfig(name="mb", sample=False, entity_inputs=[str(path)])
    report = build_kb(kb, local_storage, progress=False)
    assert (report.entities, report.mentions, report.rejected) == (2, 3, 2)
    assert report.rejects_by_reason == {"mentions and answers differ in length": 1, "not a JSON object": 1}
    assert read_entities(Storage(local_storage), "mb").sort("entity_id")["name"].to_list() == ["Aa", "Bb"]
