"""Ranking metrics of the paper's evaluation (shared reference section 1, "Evaluation").

Hits@1/3/5/10/20, MRR and mean rank. A gold entity's rank is 1 + the number of candidates with a strictly
greater score (ties resolve in the gold's favour, as ``score > gold_score`` counting does in MIMIC/MMoE).
``rank_all`` ranks every mention against a whole KB in entity chunks, never holding more than [B, chunk]
scores; it is the one exhaustive ranking every protocol and report uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass
class Ranking:
    """Every mention ranked against a whole KB: what both evaluation and NIL calibration need."""

    ranks: Tensor  # [B] long, 1-based; 0 for NIL mentions (gold index < 0)
    gold_scores: Tensor  # [B] float, the gold entity's score; NaN for NIL mentions
    top_scores: Tensor  # [B] float, the best score over all entities
    top_index: Tensor  # [B] long, the best-scoring entity


def rank_all(
    score_fn: Callable[[Tensor], Tensor], n_entities: int, gold_index: Tensor, chunk: int = 4096
) -> Ranking:
    """Rank every mention's gold among all ``n_entities``; a gold index < 0 marks a NIL mention.

    ``score_fn(entity_index [C] long) -> [B,C]`` scores every mention against the given entities. The gold
    scores come from one extra call on the distinct gold entities; each chunk then counts strictly greater
    scores, skipping the gold column itself so that float noise between the two calls cannot move a rank.
    Never more than [B, chunk] scores are held at once.
    """
    gold_index = gold_index.long()
    if gold_index.numel() and gold_index.max() >= n_entities:
        raise ValueError("gold_index must lie below n_entities")
    linked = gold_index >= 0  # [B]
    unique, inverse = torch.unique(gold_index.clamp(min=0), return_inverse=True)
    unique_scores = score_fn(unique).float()  # [B,U]
    device = unique_scores.device
    linked, gold = linked.to(device), gold_index.to(device)
    gold_scores = unique_scores.gather(1, inverse.view(-1, 1).to(device))[:, 0]  # [B]
    gold_scores = torch.where(linked, gold_scores, torch.full_like(gold_scores, float("nan")))
    greater = torch.zeros(gold.shape[0], dtype=torch.long, device=device)
    best = torch.full((gold.shape[0],), float("-inf"), device=device)
    best_index = torch.zeros(gold.shape[0], dtype=torch.long, device=device)
    for start in range(0, n_entities, chunk):
        index = torch.arange(start, min(start + chunk, n_entities), device=device)  # [C]
        scores = score_fn(index).float()  # [B,C]
        greater += ((scores > gold_scores[:, None]) & (index[None, :] != gold[:, None])).sum(dim=1)
        value, arg = scores.max(dim=1)
        better = value > best
        best, best_index = torch.where(better, value, best), torch.where(better, index[arg], best_index)
    ranks = torch.where(linked, greater + 1, torch.zeros_like(greater))
    return Ranking(ranks, gold_scores, best, best_index)


def exhaustive_ranks(
    score_fn: Callable[[Tensor], Tensor],
    n_entities: int,
    gold_index: Tensor,
    chunk: int = 4096,
) -> Tensor:
    """Ranks [B] of the gold entities among all ``n_entities`` (every mention linked; see `rank_all`)."""
    if gold_index.numel() and gold_index.min() < 0:
        raise ValueError("gold_index must lie in [0, n_entities): drop NIL mentions first")
    return rank_all(score_fn, n_entities, gold_index, chunk).ranks
