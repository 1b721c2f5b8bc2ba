"""Candidate descriptions for a mention: exact name/alias matches plus the ANN top-N, deduplicated and capped.

Name matching catches the ambiguous names DME exists for (several entities called "Paris"); the ANN top-N
(the mention's retrieval vector against the Milvus index) adds entities whose name differs from the surface
form. Both are cheap: an in-memory dict built once from the entity table, and one batched Milvus search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

# ANN search: query vectors [B, D] and top_n -> per mention, entity ids in rank order.
AnnSearch = Callable[[np.ndarray, int], list[list[str]]]


@dataclass(frozen=True)
class Candidate:
    entity_id: str
    name: str
    description: str


def normalise_name(text: str) -> str:
    """Case-insensitive exact matching key: lower case, whitespace collapsed."""
    return " ".join((text or "").lower().split())


class NameIndex:
    """name or alias (normalised) -> entity ids, plus entity id -> (name, description)."""

    def __init__(self, entities: pl.DataFrame):
        ids = entities["entity_id"].to_list()
        self._info: dict[str, tuple[str, str]] = dict(
            zip(
                ids,
                zip(
                    entities["name"].fill_null("").to_list(), entities["description"].fill_null("").to_list()
                ),
            )
        )
        aliases = (
            entities.select("entity_id", pl.col("aliases").fill_null(pl.lit([], dtype=pl.List(pl.String))))
            .explode("aliases")
            .rename({"aliases": "key"})
        )
        keys = (
            pl.concat([entities.select("entity_id", pl.col("name").alias("key")), aliases])
            .with_row_index("order")
            .drop_nulls("key")
            .with_columns(pl.col("key").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars())
            .filter(pl.col("key") != "")
            .unique(subset=["key", "entity_id"], keep="first", maintain_order=True)
            .group_by("key", maintain_order=True)
            .agg(pl.col("entity_id").sort_by("order"))
        )
        self._by_key: dict[str, list[str]] = dict(zip(keys["key"].to_list(), keys["entity_id"].to_list()))

    def __len__(self) -> int:
        return len(self._info)

    def match(self, mention: str) -> list[str]:
        return list(self._by_key.get(normalise_name(mention), []))

    def candidate(self, entity_id: str) -> Candidate | None:
        info = self._info.get(entity_id)
        return None if info is None else Candidate(entity_id, info[0], info[1])


class CandidateFinder:
    """Name/alias matches first (in entity-table order), then ANN hits in rank order; unique, capped."""

    def __init__(
        self, index: NameIndex, top_n: int, max_candidates: int, ann_search: AnnSearch | None = None
    ):
        self.index = index
        self.top_n = top_n
        self.max_candidates = max_candidates
        self.ann_search = ann_search

    def find(self, mentions: list[str], vectors: np.ndarray | None = None) -> list[list[Candidate]]:
        """Candidates per mention; `vectors` [B, D] are the mentions' retrieval vectors (None: names only)."""
        ann: list[list[str]] = [[] for _ in mentions]
        if self.ann_search is not None and vectors is not None and self.top_n > 0 and len(mentions):
            ann = self.ann_search(np.asarray(vectors, dtype=np.float32), self.top_n)
        return [self._merge(self.index.match(m), hits[: self.top_n]) for m, hits in zip(mentions, ann)]

    def _merge(self, name_ids: list[str], ann_ids: list[str]) -> list[Candidate]:
        out: list[Candidate] = []
        seen: set[str] = set()
        for entity_id in [*name_ids, *ann_ids]:
            if len(out) >= self.max_candidates:
                break
            if entity_id in seen:
                continue
            seen.add(entity_id)
            candidate = self.index.candidate(entity_id)
            if candidate is not None:  # an ANN hit deleted from the KB since indexing is skipped
                out.append(candidate)
        return out


def milvus_ann(store, collection: str | None = None) -> AnnSearch:
    """Adapt `workers.milvus_store.MilvusStore.search` to `AnnSearch` (entity ids only)."""

    def search(vectors: np.ndarray, top_n: int) -> list[list[str]]:
        kwargs = {} if collection is None else {"collection": collection}
        hits = store.search(vectors, top_n, **kwargs)
        return [[_hit_id(hit) for hit in row] for row in hits]

    return search


def _hit_id(hit) -> str:
    if isinstance(hit, dict):
        return str(hit.get("entity_id", hit.get("id")))
    return str(getattr(hit, "entity_id", getattr(hit, "id", "")))
