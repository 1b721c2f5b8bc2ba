"""Training and evaluation inputs: mention rows joined with their gold entity, and rows -> model tensors.

The driver reads the canonical Parquet tables once (kb_builder) and hands Ray Data a flat Arrow table; the
workers turn each batch of rows into processor inputs. Images decode inside the worker (ImageLoader), so the
dataset stays a few hundred bytes per mention and never needs Ray Data tasks (which would compete with the
training workers for the same CPUs).
"""

from __future__ import annotations

import random

import polars as pl

ENTITY_JOIN_COLUMNS = {
    "name": "entity_name",
    "description": "entity_description",
    "image_uris": "entity_images",
}


def linked_mentions(
    storage, kb_name: str, split: str, dme: dict[str, str] | None = None
) -> tuple[pl.DataFrame, int]:
    """Mentions of `split` with a gold entity in the KB, joined with that entity's rows; also the NIL count.

    NIL mentions (no gold, or a gold id missing from the KB) are skipped and counted, as in the paper's
    protocol (reference section 1, evaluation).
    """
    from kb_builder.shards import read_entities, read_mentions

    mentions = read_mentions(storage, kb_name, split=split)
    entities = read_entities(storage, kb_name, columns=["entity_id", *ENTITY_JOIN_COLUMNS])
    entities = entities.rename(ENTITY_JOIN_COLUMNS).rename({"entity_id": "gold_entity_id"})
    linked = mentions.join(entities, on="gold_entity_id", how="inner").sort("mention_id")
    dme = dme or {}
    linked = linked.with_columns(
        pl.col("mention_id").map_elements(lambda m: dme.get(m, ""), return_dtype=pl.String).alias("desc")
    )
    return linked, mentions.height - linked.height


def train_subset(frame: pl.DataFrame, fraction: float, seed: int) -> pl.DataFrame:
    """A seeded, fixed subset for low-resource runs (train.train_fraction); the whole frame at 1.0."""
    if fraction >= 1.0:
        return frame
    keep = max(1, int(round(frame.height * fraction)))
    rows = sorted(random.Random(seed).sample(range(frame.height), keep))
    return frame[rows]


def entity_rows(storage, kb_name: str) -> list[dict]:
    """Every KB entity as a dict (id, name, description, image_uris), in entity-table order."""
    from kb_builder.shards import read_entities

    return read_entities(
        storage, kb_name, columns=["entity_id", "name", "description", "image_uris"]
    ).to_dicts()


class BatchBuilder:
    """Rows -> processor inputs for the mention side and the entity side (reference section 1: inputs as text).

    Decoded images and tokenized texts are kept in bounded in-memory caches: every epoch, and every dev
    evaluation, shows the same rows again (tokenizing was 15% of a names-only dev evaluation's entity side).
    """

    def __init__(
        self, processor, image_loader, max_cached_images: int = 20_000, max_cached_texts: int = 500_000
    ):
        self.processor = processor
        self.images = image_loader
        self.max_cached_images = max_cached_images
        self.max_cached_texts = max_cached_texts
        self._cache: dict[str, object] = {}
        self._tokens: dict[str, tuple] = {}  # text -> (input_ids [L], attention_mask [L])

    def _tokenized(self, texts: list[str]) -> tuple:
        """`processor.tokenize(texts)`, tokenizing only the texts not seen before."""
        import torch

        rows = {t: self._tokens[t] for t in texts if t in self._tokens}
        missing = [t for t in dict.fromkeys(texts) if t not in rows]
        if missing:
            ids, mask = self.processor.tokenize(missing)
            for text, i, m in zip(missing, ids, mask):
                rows[text] = (i, m)
                if self.max_cached_texts <= 0:
                    continue
                if len(self._tokens) >= self.max_cached_texts:
                    self._tokens.pop(next(iter(self._tokens)))
                self._tokens[text] = (i, m)
        return torch.stack([rows[t][0] for t in texts]), torch.stack([rows[t][1] for t in texts])

    def _image(self, uri: str | None):
        if not uri:
            return None
        if uri not in self._cache:
            image, _error = self.images.load(uri)  # unreadable -> None -> an all-zero image (as the paper)
            if len(self._cache) >= self.max_cached_images:
                self._cache.pop(next(iter(self._cache)))
            self._cache[uri] = image
        return self._cache[uri]

    def mentions(self, rows: list[dict], use_dme: bool = True) -> dict:
        """Mention text = mention [SEP] sentence [SEP] desc; desc is the DME choice (empty with DME off)."""
        from mmoe.texts import mention_text

        texts = [
            mention_text(r["mention"], r.get("context") or "", (r.get("desc") or "") if use_dme else "")
            for r in rows
        ]
        images = [self._image(r.get("image_uri")) for r in rows]
        return self.processor(texts, images, tokens=self._tokenized(texts))

    def entities(self, rows: list[dict]) -> dict:
        """Entity text = name [SEP] description; the first image of the entity."""
        from mmoe.texts import entity_text

        texts = [entity_text(r["name"], r.get("description") or "") for r in rows]
        images = [self._image((r.get("image_uris") or [None])[0]) for r in rows]
        return self.processor(texts, images, tokens=self._tokenized(texts))


def gold_entity_row(row: dict) -> dict:
    """The gold entity of a joined mention row, in entity-row shape."""
    return {
        "entity_id": row["gold_entity_id"],
        "name": row["entity_name"],
        "description": row.get("entity_description") or "",
        "image_uris": row.get("entity_images") or [],
    }
