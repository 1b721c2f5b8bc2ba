"""The reference gate's exhaustive protocol on the official tiles (reference section 1, evaluation).

The official gate normalises over the batch, so a record's features depend on the records beside it and nothing
can be cached or retrieved by ANN. We run the official code's tiles instead: 20 mentions x 6,000 entities, the
CLIP backbone features of every entity computed once and kept, the MoE matcher recomputed on both sides for
every tile, `model.score(m_tile, e_tile)` on `model.match_features` of each side. Training's dev evaluation and `mel bench-paper` both use it.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from cluster.evaluate.features import eval_mode
from cluster.inputs import BatchBuilder

OFFICIAL_MENTION_TILE = 20  # mentions per tile in the official evaluation
OFFICIAL_ENTITY_TILE = 6000  # entities per tile (and per batch-normalised gate) in the official evaluation


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def entity_backbone(
    model, builder: BatchBuilder, entity_rows: list[dict], batch_size: int, label: str = "reference entities"
):
    """Backbone features of every entity, concatenated in entity-row order (the official KB feature cache)."""
    from kb_builder.progress import Progress

    device = next(model.parameters()).device
    meter = Progress(label, len(entity_rows), "entities", enabled=bool(label), every_s=5.0)
    parts = []
    for i in range(0, len(entity_rows), batch_size):
        parts.append(model.backbone(_to(builder.entities(entity_rows[i : i + batch_size]), device)))
        meter.update(len(entity_rows[i : i + batch_size]))
    meter.done()
    if not parts:
        raise ValueError("the KB has no entities")
    return type(parts[0])(
        **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])}
    )


@torch.no_grad()
def tile_scores(
    model,
    builder: BatchBuilder,
    rows: list[dict],
    entities,
    mention_tile: int = OFFICIAL_MENTION_TILE,
    entity_tile: int = OFFICIAL_ENTITY_TILE,
    use_dme: bool = True,
    label: str = "reference scoring",
):
    """Yield (start, scores [b, N]) per mention tile: `model.score` on every (mention tile, entity tile) pair.

    `entities` = `entity_backbone(...)`. Both sides' MoE is recomputed per tile (reference section 1).
    """
    from kb_builder.progress import Progress
    from mmoe.model import select_rows

    device = next(model.parameters()).device
    n = entities.text_cls.shape[0]
    meter = Progress(label, len(rows), "mentions", enabled=bool(label), every_s=5.0)
    for start in range(0, len(rows), mention_tile):
        inputs = _to(builder.mentions(rows[start : start + mention_tile], use_dme=use_dme), device)
        m = model.match_features(model.backbone(inputs), "mention")
        chunks = []
        for lo in range(0, n, entity_tile):
            e = model.match_features(select_rows(entities, slice(lo, min(lo + entity_tile, n))), "entity")
            chunks.append(model.score(m, e).scores.float().cpu())  # [b, tile]
        meter.update(len(rows[start : start + mention_tile]))
        yield start, torch.cat(chunks, dim=1)  # [b, N]
    meter.done()


def reference_exhaustive_ranks(
    model,
    builder: BatchBuilder,
    rows: list[dict],
    entity_rows: list[dict],
    batch_size: int = 64,
    mention_tile: int = OFFICIAL_MENTION_TILE,
    entity_tile: int = OFFICIAL_ENTITY_TILE,
    use_dme: bool = True,
) -> torch.Tensor:
    """Ranks [M] of each linked mention's gold among every entity, on the official tiles (works for any gate)."""
    from mmoe.metrics import gold_ranks

    position = {r["entity_id"]: i for i, r in enumerate(entity_rows)}
    gold = torch.tensor([position[r["gold_entity_id"]] for r in rows], dtype=torch.long)  # [M]
    if not rows:
        return torch.zeros(0, dtype=torch.long)
    with eval_mode(model) as model:
        entities = entity_backbone(model, builder, entity_rows, batch_size)
        ranks = [
            gold_ranks(scores, gold[start : start + scores.shape[0]])
            for start, scores in tile_scores(
                model, builder, rows, entities, mention_tile, entity_tile, use_dme
            )
        ]
    return torch.cat(ranks)


def reference_exhaustive_metrics(
    model, builder: BatchBuilder, rows: list[dict], entity_rows: list[dict], eval_cfg
) -> dict:
    """Same signature as `eval_protocols.exhaustive_metrics`, for a reference-gate model (training's dev eval)."""
    from mmoe.metrics import hits_and_mrr

    ranks = reference_exhaustive_ranks(model, builder, rows, entity_rows, eval_cfg.batch_size)
    return hits_and_mrr(ranks, eval_cfg.ks)
