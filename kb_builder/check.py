"""`check_kb`: leakage and integrity checks on a built KB (GitHub issue 11, item 4; reference section 4).

Leaks inflate scores: a mention image byte-identical to one of its gold entity's images, or one sentence in
two splits (a third party saw MIMIC's WikiMEL H@1 drop from 96.7 to 74.2 after removing such leaks).
Also counted: gold ids missing from the KB, missing or unreadable mention images per split, NIL answers.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl
from PIL import Image

from kb_builder.config import KBConfig, StorageConfig
from kb_builder.shards import read_entities, read_mentions
from kb_builder.storage import Storage

IO_THREADS = 8  # image reads are I/O bound (S3 round trips)
EXAMPLES = 5
SPLIT_PAIRS = (("train", "dev"), ("train", "test"), ("dev", "test"))


@dataclass
class CheckReport:
    """Findings; `leaks` is what must be zero before published numbers mean anything."""

    mentions: int = 0
    image_leaks: int = 0  # mentions whose image bytes equal an image of their gold entity
    sentence_leaks: dict[str, int] = field(default_factory=dict)  # "train/test": n later-split repeats
    missing_gold: int = 0  # gold ids not in the entity table
    nil: dict[str, int] = field(default_factory=dict)
    missing_images: dict[str, int] = field(default_factory=dict)  # per split: the file is not there
    unreadable_images: dict[str, int] = field(default_factory=dict)  # per split: there, but not an image
    remote_images_unchecked: int = 0  # http(s) images are not fetched
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def leaks(self) -> int:
        return self.image_leaks + sum(self.sentence_leaks.values())

    def summary(self) -> str:
        def per_split(d: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(d.items()) if v) or "0"

        lines = [
            f"check: {self.mentions:,} mentions, {self.leaks:,} leaks",
            f"  image leaks (mention image == gold entity image): {self.image_leaks:,}",
            f"  sentence leaks across splits: {per_split(self.sentence_leaks)}",
            f"  gold ids missing from the KB: {self.missing_gold:,}",
            f"  NIL answers: {per_split(self.nil)}",
            f"  missing mention images: {per_split(self.missing_images)}; unreadable: "
            f"{per_split(self.unreadable_images)}; remote unchecked: {self.remote_images_unchecked:,}",
        ]
        lines += [f"  e.g. {kind}: {', '.join(ids)}" for kind, ids in self.examples.items() if ids]
        return "\n".join(lines)

    def _note(self, kind: str, item: str) -> None:
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(item)


def _digest(store: Storage, uri: str) -> tuple[str | None, str]:
    """(sha256 or None, status): status is ok | missing | unreadable | remote."""
    if uri.startswith(("http://", "https://")):
        return None, "remote"
    try:
        data = store.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError):
        return None, "missing"
    except Exception:  # noqa: BLE001 - S3 errors, permissions: the image cannot be used either way
        return None, "unreadable"
    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception:  # noqa: BLE001 - PIL raises many types for broken files
        return hashlib.sha256(data).hexdigest(), "unreadable"
    return hashlib.sha256(data).hexdigest(), "ok"


def _sentence_leaks(report: CheckReport, mentions: pl.DataFrame) -> None:
    text = mentions.with_columns(pl.col("context").str.strip_chars().str.to_lowercase().alias("_text"))
    text = text.filter(pl.col("_text").str.len_chars() > 0)
    for first, later in SPLIT_PAIRS:
        seen = text.filter(pl.col("split") == first)["_text"].unique()
        hits = text.filter((pl.col("split") == later) & pl.col("_text").is_in(seen.implode()))
        report.sentence_leaks[f"{first}/{later}"] = hits.height
        for mention_id in hits["mention_id"].head(EXAMPLES).to_list():
            report._note(f"sentence leak {first}/{later}", mention_id)


def check_kb(kb: KBConfig, storage: StorageConfig) -> CheckReport:
    """Run every check over the built KB `kb.name`."""
    store = Storage(storage)
    entities = read_entities(store, kb.name, columns=["entity_id", "image_uris"])
    mentions = read_mentions(store, kb.name)
    report = CheckReport(mentions=mentions.height)
    report.nil = dict(Counter(mentions.filter(pl.col("gold_entity_id").is_null())["split"].to_list()))
    missing = mentions.filter(
        pl.col("gold_entity_id").is_not_null()
        & ~pl.col("gold_entity_id").is_in(entities["entity_id"].implode())
    )
    report.missing_gold = missing.height
    for mention_id in missing["mention_id"].head(EXAMPLES).to_list():
        report._note("missing gold", mention_id)
    _sentence_leaks(report, mentions)

    with_image = mentions.filter(pl.col("image_uri").is_not_null())
    gold_images = dict(zip(entities["entity_id"].to_list(), entities["image_uris"].to_list()))
    needed = set(with_image["image_uri"].to_list())
    for gold in set(with_image["gold_entity_id"].drop_nulls().to_list()):
        needed.update(gold_images.get(gold) or [])
    order = sorted(needed)
    with ThreadPoolExecutor(IO_THREADS) as pool:
        digests = dict(zip(order, pool.map(lambda uri: _digest(store, uri), order)))
    missing_images, unreadable = Counter(), Counter()
    for row in with_image.iter_rows(named=True):
        digest, status = digests[row["image_uri"]]
        if status == "remote":
            report.remote_images_unchecked += 1
        elif status == "missing":
            missing_images[row["split"]] += 1
            report._note("missing image", row["mention_id"])
        elif status == "unreadable":
            unreadable[row["split"]] += 1
            report._note("unreadable image", row["mention_id"])
        gold_digests = {digests[u][0] for u in gold_images.get(row["gold_entity_id"]) or []}
        if digest is not None and digest in gold_digests:
            report.image_leaks += 1
            report._note("image leak", row["mention_id"])
    report.missing_images, report.unreadable_images = dict(missing_images), dict(unreadable)
    report.examples = dict(report.examples)
    return report
