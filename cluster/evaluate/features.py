"""Encode entities and mentions with a model in memory, in batches, for both evaluation protocols.

Entity features (retrieval vector + rerank cache) are computed once per evaluation and reused by every mention
chunk, unlike the official code, which recomputes the entity side for every tile (reference section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cluster.inputs import BatchBuilder


@dataclass
class EntityFeatures:
    """Every KB entity, row-aligned."""

    ids: list[str]  # [N]
    vectors: torch.Tensor  # [N,D] retrieval vectors u_e
    cache: dict[str, torch.Tensor]  # per-entity rerank features, leading dim N
    has_image: torch.Tensor  # [N] bool

    def index_of(self) -> dict[str, int]:
        return {eid: i for i, eid in enumerate(self.ids)}

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Vectors and cache for `index` of any shape (e.g. [B,K] candidates -> [B,K,D])."""
        flat = index.reshape(-1)
        vectors = self.vectors[flat].reshape(*index.shape, -1)
        cache = {k: v[flat].reshape(*index.shape, *v.shape[1:]) for k, v in self.cache.items()}
        return vectors, cache


def as_float(t: torch.Tensor) -> torch.Tensor:
    """fp32 for floating features (bf16/fp16 encoders); masks stay bool."""
    return t.float() if t.is_floating_point() else t


def bare(model):
    """The model under a DDP wrapper, if any."""
    return getattr(model, "module", model)


@torch.no_grad()
def encode_entities(
    model, builder: BatchBuilder, rows: list[dict], batch_size: int, label: str = ""
) -> EntityFeatures:
    """Retrieval vectors and rerank caches for `rows` (entity-row dicts), in row order; progress when `label`."""
    from kb_builder.progress import Progress

    progress = Progress(label, len(rows), "entities", enabled=bool(label), every_s=5.0)
    model = bare(model)
    was_training = model.training
    model.eval()
    vectors, caches, has_image = [], [], []
    for start in range(0, len(rows), batch_size):
        inputs = builder.entities(rows[start : start + batch_size])
        feats = model.encode(inputs, "entity")
        vectors.append(model.retrieval_vectors(feats).float())
        caches.append({k: as_float(v) for k, v in model.entity_cache(feats).items()})
        has_image.append(inputs["image_mask"])
        progress.update(len(inputs["image_mask"]))
    model.train(was_training)
    if label:
        progress.done()
    cache = {k: torch.cat([c[k] for c in caches]) for k in caches[0]} if caches else {}
    return EntityFeatures(
        ids=[r["entity_id"] for r in rows],
        vectors=torch.cat(vectors) if vectors else torch.zeros(0, 0),
        cache=cache,
        has_image=torch.cat(has_image) if has_image else torch.zeros(0, dtype=torch.bool),
    )


@torch.no_grad()
def encode_mention_batches(
    model, builder: BatchBuilder, rows: list[dict], batch_size: int, use_dme: bool = True, label: str = ""
):
    """Yield (start, mention SideFeatures, retrieval vectors [B,D]) over `rows` in order; progress when `label`."""
    from kb_builder.progress import Progress

    progress = Progress(label, len(rows), "mentions", enabled=bool(label), every_s=5.0)
    model = bare(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            feats = model.encode(
                builder.mentions(rows[start : start + batch_size], use_dme=use_dme), "mention"
            )
            yield start, feats, model.retrieval_vectors(feats).float()
            progress.update(len(rows[start : start + batch_size]))
    finally:
        model.train(was_training)
    if label:
        progress.done()
