"""Dev evaluation during training, shared by every Ray Train worker (`train.dev_protocol`).

`system` (default): exact inner-product top-K over the current model's entity vectors, then the exact MMoE
rerank of those K (`candidate_ranks`); gold entities outside the K are misses, reported as `recall@K`.
`exhaustive`: the paper's protocol (every mention against every entity), as `mel bench-paper` uses.
Each rank encodes a slice of the entities and a slice of the dev mentions; slices are all-gathered over the
training process group, so no worker idles and nothing is encoded twice.
"""

from __future__ import annotations

import torch

from cluster.evaluate.features import EntityFeatures, bare, encode_entities
from cluster.evaluate.protocols import candidate_ranks, exhaustive_ranks
from cluster.inputs import BatchBuilder
from mmoe.metrics import hits_and_mrr

DEV_PROTOCOLS = ("system", "exhaustive")


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def my_slice(items: list, rank: int, world: int) -> list:
    """Rank `rank`'s contiguous share of `items` (sizes differ by at most one)."""
    per, extra = divmod(len(items), world)
    start = rank * per + min(rank, extra)
    return items[start : start + per + (rank < extra)]


def gather(obj, world: int) -> list:
    """Every rank's `obj`, in rank order (just `[obj]` without a process group)."""
    if world == 1 or not _dist():
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def shared_entities(
    model, builder: BatchBuilder, entity_rows: list[dict], batch_size: int, rank: int, world: int
) -> EntityFeatures:
    """Every entity's features; each rank encodes only its slice, then all ranks exchange them."""
    label = "[dev] entity encoding" + (f" (rank 0 of {world}, its slice)" if world > 1 else "")
    mine = encode_entities(
        model, builder, my_slice(entity_rows, rank, world), batch_size, label if rank == 0 else ""
    )
    parts = [p for p in gather(mine, world) if p.ids]
    return EntityFeatures(
        ids=[eid for p in parts for eid in p.ids],
        vectors=torch.cat([p.vectors for p in parts]),
        cache={k: torch.cat([p.cache[k] for p in parts]) for k in parts[0].cache},
        has_image=torch.cat([p.has_image for p in parts]),
    )


def system_metrics(ranks: torch.Tensor, top_k: int, ks) -> dict:
    """Hits@k for k <= K and MRR, a gold outside the K counting as a miss (reciprocal rank 0)."""
    missed = ranks > top_k
    out = hits_and_mrr(ranks.clamp(max=top_k + 1), [k for k in ks if k <= top_k])
    out["mrr"] = float(torch.where(missed, 0.0, 1.0 / ranks.double()).mean()) if len(ranks) else 0.0
    out[f"recall@{top_k}"] = float((~missed).double().mean()) if len(ranks) else 0.0
    out.pop("mean_rank")
    return out


def dev_metrics(
    model,
    builder: BatchBuilder,
    dev_rows: list[dict],
    entity_rows: list[dict],
    eval_cfg,
    protocol: str = "system",
    rank: int = 0,
    world: int = 1,
    top_k: int = 0,
) -> dict:
    """Dev metrics under `protocol`, identical on every rank; each rank scores its slice of `dev_rows`.

    `top_k` is the system protocol's K (0 = `eval_cfg.retrieve_k`)."""
    if protocol not in DEV_PROTOCOLS:
        raise ValueError(f"train.dev_protocol={protocol!r}: expected one of {DEV_PROTOCOLS}")
    if getattr(bare(model), "reference_gate", False):
        # The official gate's features depend on the batch: the paper's tiles, on rank 0 only.
        from cluster.evaluate.protocols import exhaustive_metrics

        mine = exhaustive_metrics(model, builder, dev_rows, entity_rows, eval_cfg) if rank == 0 else None
        return gather(mine, world)[0]
    entities = shared_entities(model, builder, entity_rows, eval_cfg.batch_size, rank, world)
    rows = my_slice(dev_rows, rank, world)
    label = f"[dev] {protocol} scoring" + (f" (rank 0 of {world})" if world > 1 else "")
    label = label if rank == 0 else ""
    top_k = min(top_k or eval_cfg.retrieve_k, len(entities.ids))
    if protocol == "system":
        result = candidate_ranks(model, builder, rows, entities, top_k, eval_cfg.batch_size, label=label)
    else:
        result = exhaustive_ranks(
            model, builder, rows, entities, eval_cfg.batch_size, eval_cfg.entity_chunk, label=label
        )
    ranks = torch.cat(gather(result.ranks, world))
    ranks = ranks[ranks > 0]  # NIL rows (gold not in the KB) are not ranked
    if protocol == "system":
        return system_metrics(ranks, top_k, eval_cfg.ks)
    return hits_and_mrr(ranks, eval_cfg.ks)
