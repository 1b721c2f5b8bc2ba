"""Issue 17 item 9: local images outside the KB folder, directly or through a symlink, are rejects at build
time, by the rule indexing applies (kb_builder.image_paths)."""

from __future__ import annotations

import json

from kb_builder.build import build_kb
from kb_builder.shards import read_entities, read_mentions
from kb_builder.storage import Storage
from tests.kb_builder.helpers import entity, kb_config, mention, write_jsonl

OUTSIDE = "image path outside the KB folder and the allowed image roots"


def _rejects(cfg, name="t") -> dict[str, str]:
    text = Storage(cfg).read_bytes(f"{cfg.root}/kb/{name}/rejects.jsonl").decode()
    return {r["location"]: r["reason"] for r in map(json.loads, text.splitlines())}


def _kb_folder(tmp_path):
    kb_dir, outside = tmp_path / "kb", tmp_path / "outside"
    (kb_dir / "images").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"not yours")
    (kb_dir / "images" / "ok.png").write_bytes(b"png")
    (kb_dir / "images" / "link.png").symlink_to(outside / "secret.png")
    (kb_dir / "images" / "dirlink").symlink_to(outside)
    return kb_dir, outside


def test_images_outside_the_kb_folder_are_rejected_at_build(tmp_path, local_storage):
    kb_dir, outside = _kb_folder(tmp_path)
    rows = [
        entity(1, image="images/ok.png"),  # line 1 relative, inside
        entity(2, image=str(kb_dir / "images" / "ok.png")),  # line 2 absolute, inside
        entity(3, image="/etc/passwd"),  # line 3 absolute, outside
        entity(4, image="images/link.png"),  # line 4 a symlink out of the folder
        entity(5, image="images/dirlink/secret.png"),  # line 5 through a symlinked folder
        entity(6, image=["images/ok.png", str(outside / "secret.png")]),  # line 6 the second image is out
        entity(7, image="https://example.org/a.png"),  # line 7 remote: not a local path
    ]
    path = write_jsonl(kb_dir / "e.jsonl", rows)
    ments = write_jsonl(
        kb_dir / "m.jsonl", [mention(1, image="images/ok.png"), mention(2, image="images/link.png")]
    )
    report = build_kb(kb_config([path], [ments]), local_storage, progress=False)
    assert (report.entities, report.mentions) == (3, 1)
    got = _rejects(local_storage)
    assert set(got) == {f"{path}:line {n}" for n in (3, 4, 5, 6)} | {f"{ments}:line 2"}
    assert all(reason.startswith(OUTSIDE) for reason in got.values()), got
    assert got[f"{path}:line 3"].endswith(": /etc/passwd")
    assert report.rejects_by_reason == {OUTSIDE: 5}
    kept = read_entities(Storage(local_storage), "t")
    assert sorted(kept["entity_id"].to_list()) == ["Q1", "Q2", "Q7"]
    assert read_mentions(Storage(local_storage), "t")["mention_id"].to_list() == ["m1"]


def test_configured_image_roots_let_a_folder_through(tmp_path, local_storage):
    kb_dir, outside = _kb_folder(tmp_path)
    path = write_jsonl(
        kb_dir / "e.jsonl", [entity(4, image="images/link.png"), entity(5, image="/etc/passwd")]
    )
    report = build_kb(kb_config([path]), local_storage, progress=False, image_roots=[str(outside)])
    assert (report.entities, report.rejected) == (1, 1)
    assert list(_rejects(local_storage)) == [f"{path}:line 2"]
