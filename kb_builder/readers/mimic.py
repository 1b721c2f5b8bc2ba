"""MIMIC-format folders (what MIMIC, MMoE and M3EL read; reference section 4).

`kb_entity.json`: list of {id (QID), type, entity_name (URL-quoted), attr | desc, image_list};
`qid2id.json`: QID -> int (kept as attribute `mimic_index`); `<NAME>_{train,dev,test}.json`: lists of
{mentions, entities, sentence, imgPath, answer (QID or "nil"), desc}; images in `kb_image/` and
`mention_image/` (RichpediaMEL: `mention_images/`). Not downloadable here: users drop it in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from kb_builder.readers.base import LOCATION, Batch, reject
from kb_builder.readers.jsonl import rows_frame
from kb_builder.storage import Storage, is_s3

BATCH_ROWS = 50_000
SPLIT_FILE = re.compile(r"^(?P<name>.+)_(?P<split>train|dev|test|valid)\.json$")
MENTION_IMAGE_DIRS = ("mention_image", "mention_images")


def _load(storage: Storage, uri: str) -> tuple[object, str | None]:
    try:
        return json.loads(storage.local_path(uri).read_bytes().decode("utf-8")), None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"malformed JSON: {err}"


def _image(path, folder: str) -> str | None:
    if not path:
        return None
    path = str(path)
    return path if "://" in path or path.startswith("/") else f"{folder}/{path}"


def _objects(items: list, source: str, rejects: list[dict]) -> Iterator[tuple[int, str, dict]]:
    """(index, location, item) for the JSON objects of a list; anything else goes to `rejects`, located."""
    for i, item in enumerate(items):
        location = f"{source}:item {i}"
        if isinstance(item, dict):
            yield i, location, item
        else:
            rejects.append(reject(source, location, f"not a JSON object ({type(item).__name__})", item))


def _entity_rows(items: list, source: str, qid2id: dict) -> tuple[list[dict], list[dict]]:
    rows, rejects = [], []
    for _, location, item in _objects(items, source, rejects):
        qid = item.get("id")
        attributes = {"type": item.get("type")}
        if qid in qid2id:
            attributes["mimic_index"] = qid2id[qid]
        rows.append(
            {
                "entity_id": qid,
                "name": unquote(str(item.get("entity_name") or "")),
                "description": item.get("desc") or item.get("attr") or "",
                "image_uris": [_image(p, "kb_image") for p in item.get("image_list") or [] if p],
                "attributes": json.dumps(attributes, sort_keys=True),
                LOCATION: location,
            }
        )
    return rows, rejects


def _mention_rows(items: list, source: str, stem: str, split: str, image_dir: str):
    rows, rejects = [], []
    for i, location, item in _objects(items, source, rejects):
        mention = item.get("mentions")
        mention = mention[0] if isinstance(mention, list) and mention else mention
        rows.append(
            {
                "mention_id": str(item.get("id") or f"{stem}-{i}"),
                "mention": mention,
                "context": item.get("sentence") or "",
                "image_uri": _image(item.get("imgPath"), image_dir),
                "gold_entity_id": item.get("answer"),
                "split": split,
                LOCATION: location,
            }
        )
    return rows, rejects


def _batches(index: int, rows: list[dict], rejects: list[dict], source: str, base: str):
    for start in range(0, max(len(rows), 1), BATCH_ROWS):
        fraction = min(1.0, (start + BATCH_ROWS) / max(len(rows), 1))
        yield (
            index,
            Batch(
                rows_frame(rows[start : start + BATCH_ROWS]),
                source,
                base,
                fraction,
                rejects if start == 0 else [],
            ),
        )


def read_mimic(specs: list[str], kind: str, storage: Storage) -> Iterator[tuple[int, Batch]]:
    """(folder index, batch) for the entities or mentions of every MIMIC folder in `specs`."""
    for index, spec in enumerate(specs):
        base = str(spec).rstrip("/") if is_s3(spec) else str(Path(spec).expanduser().resolve())
        listed = storage.list(base + "/")
        names = {u.rsplit("/", 1)[-1]: u for u in listed if u[len(base) + 1 :].count("/") == 0}
        if "kb_entity.json" not in names:
            raise FileNotFoundError(f"MIMIC folder {spec!r} has no kb_entity.json")
        if kind == "entities":
            qid2id, _ = _load(storage, names["qid2id.json"]) if "qid2id.json" in names else ({}, None)
            items, error = _load(storage, names["kb_entity.json"])
            source = names["kb_entity.json"]
            if error or not isinstance(items, list):
                raise ValueError(f"{source}: {error or 'expected a JSON list of entities'}")
            yield from _batches(index, *_entity_rows(items, source, qid2id or {}), source, base)
            continue
        image_dir = next(
            (d for d in MENTION_IMAGE_DIRS if any(u.startswith(f"{base}/{d}/") for u in listed)),
            MENTION_IMAGE_DIRS[0],
        )
        for file_name, uri in sorted(names.items()):
            match = SPLIT_FILE.match(file_name)
            if not match:
                continue
            split = "dev" if match["split"] == "valid" else match["split"]
            items, error = _load(storage, uri)
            if error or not isinstance(items, list):
                yield (
                    index,
                    Batch(
                        rows_frame([]),
                        uri,
                        base,
                        1.0,
                        [reject(uri, f"{uri}:file", error or "expected a JSON list of mentions", None)],
                    ),
                )
                continue
            yield from _batches(
                index, *_mention_rows(items, uri, file_name[:-5], split, image_dir), uri, base
            )
