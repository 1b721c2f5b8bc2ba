"""Rows and configs the kb_builder tests write: tiny KB configs, JSONL files, entity and mention rows."""

from __future__ import annotations

import json
from pathlib import Path

from kb_builder.config import KBConfig


def kb_config(entity_inputs=(), mention_inputs=(), **kw) -> KBConfig:
    """A non-sample KB config over the given inputs."""
    return KBConfig(
        name=kw.pop("name", "t"),
        sample=False,
        entity_inputs=[str(p) for p in entity_inputs],
        mention_inputs=[str(p) for p in mention_inputs],
        **kw,
    )


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSON lines; a `bytes` or `str` item is written verbatim (bad lines on purpose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for row in rows:
            if isinstance(row, bytes):
                f.write(row.rstrip(b"\n") + b"\n")
            elif isinstance(row, str):
                f.write(row.encode() + b"\n")
            else:
                f.write(json.dumps(row).encode() + b"\n")
    return path


def entity(i: int, **kw) -> dict:
    row = {
        "id": f"Q{i}",
        "name": f"Name{i}",
        "aliases": [f"N{i}"],
        "description": f"desc {i}",
        "image": f"images/q{i}.png",
        "type": "river",
    }
    row.update(kw)
    return row


def mention(i: int, gold: str | None = "Q1", **kw) -> dict:
    row = {
        "id": f"m{i}",
        "mention": f"Name{i}",
        "sentence": f"Name{i} flows north",
        "image": None,
        "answer": gold if gold else "nil",
        "split": ("train", "dev", "test")[i % 3],
    }
    row.update(kw)
    return row
