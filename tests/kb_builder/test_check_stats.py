"""check_kb finds planted leaks and broken references with exact counts; kb_stats describes the KB."""

from __future__ import annotations

import shutil

from PIL import Image

from kb_builder.build import build_kb
from kb_builder.check import check_kb
from kb_builder.config import KBConfig
from kb_builder.stats import kb_stats
from tests.kb_builder.helpers import entity, kb_config, mention, write_jsonl


def _png(path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_check_finds_each_planted_problem(tmp_path, local_storage):
    _png(tmp_path / "images/q1.png", "red")
    _png(tmp_path / "images/q2.png", "blue")
    shutil.copy(tmp_path / "images/q1.png", tmp_path / "images/leak.png")  # byte copy of the gold image
    _png(tmp_path / "images/fine.png", "green")
    (tmp_path / "images/broken.png").write_bytes(b"not a png")
    write_jsonl(tmp_path / "e.jsonl", [entity(1), entity(2)])
    write_jsonl(
        tmp_path / "m.jsonl",
        [
            mention(0, gold="Q1", image="images/leak.png", sentence="same words", split="train"),
            mention(
                1, gold="Q1", image="images/fine.png", sentence="Same words ", split="test"
            ),  # sentence leak
            mention(2, gold="Q2", image="images/gone.png", split="dev"),  # missing image
            mention(3, gold="Q2", image="images/broken.png", split="test"),  # unreadable
            mention(4, gold="Q9", split="test"),  # gold not in KB
            mention(5, gold=None, split="dev"),  # NIL
            mention(6, gold="Q2", image="https://example.org/x.png", split="train"),  # remote
        ],
    )
    build_kb(kb_config([tmp_path / "e.jsonl"], [tmp_path / "m.jsonl"]), local_storage, progress=False)
    report = check_kb(KBConfig(name="t"), local_storage)
    assert report.mentions == 7
    assert report.image_leaks == 1 and report.examples["image leak"] == ["m0"]
    assert report.sentence_leaks == {"train/dev": 0, "train/test": 1, "dev/test": 0}
    assert report.leaks == 2
    assert report.missing_gold == 1 and report.examples["missing gold"] == ["m4"]
    assert report.missing_images == {"dev": 1} and report.unreadable_images == {"test": 1}
    assert report.nil == {"dev": 1} and report.remote_images_unchecked == 1
    assert "2 leaks" in report.summary()


def test_sample_kb_is_leak_free_and_stats_show_ambiguity(local_storage):
    build_kb(KBConfig(sample_entities=60, sample_mentions=150), local_storage, progress=False)
    report = check_kb(KBConfig(), local_storage)
    assert report.leaks == 0 and report.missing_gold == 0
    assert not report.missing_images and not report.unreadable_images
    text = kb_stats(KBConfig(), local_storage)
    assert "entities: 60" in text and "mentions: 150" in text
    assert "shared by >= 2 entities" in text and "0 shared" not in text
