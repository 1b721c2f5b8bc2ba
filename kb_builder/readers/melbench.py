"""MELBench (the original WikiMEL / RichpediaMEL release): one JSON dict sample_id -> caption record.

`{id, sentence, mentions[], entities[], answer[QIDs]}` (RichpediaMEL: the same fields as scalars). One mention
row per (mention, answer) pair, id `<sample_id>-<k>`; entities are the answer QIDs, named by the aligned
`entities` entry (else the mention text). No images, no descriptions, no splits: every mention of one caption
gets the stable hash split of its sample id, so no sentence is shared across splits (a leak, reference §4).
Real text (MIT licence), see reference section 4.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from kb_builder.canonical import stable_split
from kb_builder.readers.base import LOCATION, Batch, parent_uri, reject
from kb_builder.readers.jsonl import rows_frame
from kb_builder.storage import Storage

BATCH_ROWS = 50_000


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _rows(data: dict, source: str, kind: str) -> tuple[list[dict], list[dict]]:
    rows, rejects, seen = [], [], set()
    for key, record in data.items():
        location = f"{source}:sample {key}"
        if not isinstance(record, dict):
            rejects.append(reject(source, location, f"not a JSON object ({type(record).__name__})", record))
            continue
        mentions, names, answers = (_as_list(record.get(k)) for k in ("mentions", "entities", "answer"))
        if len(mentions) != len(answers):
            reason = f"mentions and answers differ in length ({len(mentions)} vs {len(answers)})"
            rejects.append(reject(source, location, reason, record))
            continue
        for k, (surface, qid) in enumerate(zip(mentions, answers)):
            if kind == "mentions":
                rows.append(
                    {
                        "mention_id": f"{record.get('id', key)}-{k}",
                        "mention": surface,
                        "context": record.get("sentence") or "",
                        "gold_entity_id": qid,
                        "split": stable_split(record.get("id", key)),
                        LOCATION: f"{location} mention {k}",
                    }
                )
            elif qid and str(qid).lower() != "nil" and qid not in seen:
                seen.add(qid)
                name = names[k] if k < len(names) and names[k] else surface
                rows.append({"entity_id": qid, "name": name, LOCATION: f"{location} mention {k}"})
    return rows, (rejects if kind == "mentions" else [])  # both passes see a bad record: count it once


def read_melbench(specs: list[str], kind: str, storage: Storage) -> Iterator[tuple[int, Batch]]:
    """(file index, batch) for every MELBench file in `specs` (files, or folders holding `*-MEL.json`)."""
    files = []
    for spec in specs:
        is_file = str(spec).endswith(".json")
        listed = [spec] if is_file else [u for u in storage.list(spec) if u.endswith(".json")]
        if not listed:
            raise FileNotFoundError(f"MELBench input {spec!r}: no .json file")
        files += listed
    for index, uri in enumerate(files):
        local = storage.local_path(uri)
        try:
            data = json.loads(local.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            yield (
                index,
                Batch(
                    rows_frame([]),
                    uri,
                    parent_uri(uri),
                    1.0,
                    [reject(uri, f"{uri}:file", f"malformed JSON: {err}", None)],
                ),
            )
            continue
        if not isinstance(data, dict):
            raise ValueError(f"{uri}: MELBench files hold one JSON object keyed by sample id")
        rows, rejects = _rows(data, uri, kind)
        for start in range(0, max(len(rows), 1), BATCH_ROWS):
            chunk = rows[start : start + BATCH_ROWS]
            fraction = min(1.0, (start + BATCH_ROWS) / max(len(rows), 1))
            yield (
                index,
                Batch(rows_frame(chunk), uri, parent_uri(uri), fraction, rejects if start == 0 else []),
            )
