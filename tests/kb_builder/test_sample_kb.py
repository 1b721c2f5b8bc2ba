"""The synthetic sample KB: deterministic, big enough, truly ambiguous, perturbed (never copied) images."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from kb_builder.sample_kb import write_sample_kb


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_full_size_sample_is_ambiguous_and_well_formed(tmp_path):
    info = write_sample_kb(tmp_path / "kb")
    entities = [json.loads(line) for line in (tmp_path / "kb/entities.jsonl").read_text().splitlines()]
    mentions = [json.loads(line) for line in (tmp_path / "kb/mentions.jsonl").read_text().splitlines()]
    assert info["entities"] == len(entities) == 300
    assert info["mentions"] == len(mentions) == 1200

    per_name = Counter(e["name"] for e in entities)
    shared = {n for n, c in per_name.items() if c >= 2}
    in_groups = sum(per_name[n] for n in shared)
    assert len(shared) >= 20 and 0.3 <= in_groups / len(entities) <= 0.5
    assert max(per_name.values()) <= 4
    for name in shared:  # same name, told apart by description and image
        group = [e for e in entities if e["name"] == name]
        assert len({e["description"] for e in group}) == len(group)
        assert len({_sha(tmp_path / "kb" / e["image"]) for e in group}) == len(group)

    ids = {e["id"] for e in entities}
    by_id = {e["id"]: e for e in entities}
    splits = Counter(m["split"] for m in mentions)
    assert splits == {"train": 840, "dev": 180, "test": 180}
    nil = [m for m in mentions if m["answer"] == "nil"]
    assert 0 < len(nil) <= 30
    assert all(m["answer"] in ids for m in mentions if m["answer"] != "nil")
    no_image = sum(1 for m in mentions if m["image"] is None)
    assert 0.05 * 1200 <= no_image <= 0.15 * 1200
    for m in mentions:
        if m["image"] and m["answer"] != "nil":
            assert _sha(tmp_path / "kb" / m["image"]) != _sha(tmp_path / "kb" / by_id[m["answer"]]["image"])

    # contexts reuse the gold entity's type / place / field ("X is a TYPE of the PLACE known for FIELD.")
    def cues(e):
        words = e["description"].replace(".", "").split()
        return {words[3], words[6], words[9]}

    cued = sum(
        1
        for m in mentions
        if m["answer"] != "nil"
        and cues(by_id[m["answer"]]) & set(m["sentence"].lower().replace(".", "").split())
    )
    assert cued == len(mentions) - len(nil)
    words = {w.strip(".").lower() for m in mentions for w in m["sentence"].split()}
    words |= {w.strip(".").lower() for e in entities for w in e["description"].split()}
    assert len(words) < 4096


def test_same_seed_same_bytes_other_seed_other_kb(tmp_path):
    write_sample_kb(tmp_path / "a", 40, 100, seed=3)
    write_sample_kb(tmp_path / "b", 40, 100, seed=3)
    write_sample_kb(tmp_path / "c", 40, 100, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 40
    assert all(_sha(tmp_path / "a" / f) == _sha(tmp_path / "b" / f) for f in files)
    assert _sha(tmp_path / "a/entities.jsonl") != _sha(tmp_path / "c/entities.jsonl")
