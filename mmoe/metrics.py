"""Ranking metrics of the paper's evaluation (shared reference section 1, "Evaluation").

Hits@1/3/5/10/20, MRR and mean rank. A gold entity's rank is 1 + the number of candidates with a strictly
greater score (ties resolve in the gold's favour, as ``score > gold_score`` counting does in MIMIC/MMoE).
``exhaustive_ranks`` ranks every mention against a whole KB in entity chunks, never holding more than
[B, chunk] scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def gold_ranks(scores: Tensor, gold_index: Tensor) -> Tensor:
    """scores [B,N], gold_index [B] -> ranks [B] (1-based, long)."""
    gold = scores.gather(1, gold_index.view(-1, 1))  # [B,1]
    return 1 + (scores > gold).sum(dim=1).long()


def hits_and_mrr(ranks: Tensor, ks: Sequence[int] = (1, 3, 5, 10, 20)) -> dict[str, float]:
    """{"hits@k": fraction, "mrr": fraction, "mean_rank": float, "count": int}; empty ranks give zeros."""
    ranks = ranks.double()
    n = ranks.numel()
    if n == 0:
        return {**{f"hits@{k}": 0.0 for k in ks}, "mrr": 0.0, "mean_rank": 0.0, "count": 0}
    out = {f"hits@{k}": (ranks <= k).double().mean().item() for k in ks}
    out["mrr"] = (1.0 / ranks).mean().item()
    out["mean_rank"] = ranks.mean().item()
    out["count"] = n
    return out


def exhaustive_ranks(
    score_fn: Callable[[Tensor], Tensor],
    n_entities: int,
    gold_index: Tensor,
    chunk: int = 4096,
) -> Tensor:
    """Ranks of the gold entities among all ``n_entities``.

    ``score_fn(entity_index [C] long) -> [B,C]`` scores every mention against the given entities. The gold
    scores come from one extra call on the distinct gold entities; each chunk then counts strictly greater
    scores, skipping the gold column itself so that float noise between the two calls cannot move a rank.
    """
    gold_index = gold_index.long()
    if gold_index.numel() and (gold_index.min() < 0 or gold_index.max() >= n_entities):
        raise ValueError("gold_index must lie in [0, n_entities): drop NIL mentions first")
    unique, inverse = torch.unique(gold_index, return_inverse=True)
    unique_scores = score_fn(unique)  # [B,U]
    gold_scores = unique_scores.gather(1, inverse.view(-1, 1).to(unique_scores.device))  # [B,1]
    device = gold_scores.device
    gold = gold_index.to(device).view(-1, 1)
    greater = torch.zeros(gold_index.shape[0], dtype=torch.long, device=device)
    for start in range(0, n_entities, chunk):
        index = torch.arange(start, min(start + chunk, n_entities), device=device)  # [C]
        scores = score_fn(index)  # [B,C]
        beats = (scores > gold_scores) & (index.view(1, -1) != gold)
        greater += beats.sum(dim=1)
    return greater + 1
