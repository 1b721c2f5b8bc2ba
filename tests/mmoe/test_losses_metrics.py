"""Loss (diagonal labels, duplicate-gold masking, hard-negative columns) and ranking metrics on hand-made scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmoe.losses import mmoe_loss
from mmoe.metrics import exhaustive_ranks, gold_ranks, hits_and_mrr
from mmoe.model import ScoreOutput
from tests.mmoe.helpers import tiny_mmoe


def score_output(scores: torch.Tensor, aux: float | None = None) -> ScoreOutput:
    aux_loss = None if aux is None else torch.tensor(aux)
    return ScoreOutput(scores, scores * 2, scores * 3, scores * 4, aux_loss)


def test_gold_ranks_and_hits_mrr_exact():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],  # gold 0 is best -> rank 1
            [0.5, 0.4, 0.6, 0.1],  # gold 1: 0.5 and 0.6 beat it -> rank 3
            [0.2, 0.2, 0.2, 0.2],  # ties count in the gold's favour -> rank 1
            [0.4, 0.3, 0.2, 0.1],  # gold 3 is last -> rank 4
        ]
    )
    ranks = gold_ranks(scores, torch.tensor([0, 1, 2, 3]))
    assert ranks.tolist() == [1, 3, 1, 4]
    m = hits_and_mrr(ranks, ks=(1, 3, 5))
    assert m["hits@1"] == pytest.approx(0.5)
    assert m["hits@3"] == pytest.approx(0.75)
    assert m["hits@5"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 + 1 / 4) / 4)
    assert m["mean_rank"] == pytest.approx(9 / 4)
    assert hits_and_mrr(torch.tensor([], dtype=torch.long))["mrr"] == 0.0


def test_exhaustive_ranks_match_full_matrix_in_chunks():
    torch.manual_seed(0)
    scores = torch.randn(5, 23)
    scores[0, 7] = scores[0, 2]  # a tie with the gold
    gold = torch.tensor([2, 0, 22, 11, 11])
    calls = []

    def score_fn(index):
        calls.append(index.numel())
        return scores[:, index] + 0.0

    ranks = exhaustive_ranks(score_fn, 23, gold, chunk=4)
    assert ranks.tolist() == gold_ranks(scores, gold).tolist()
    assert max(calls[1:]) <= 4  # never more than [B, chunk]
    with pytest.raises(ValueError, match="NIL"):
        exhaustive_ranks(score_fn, 23, torch.tensor([-1]), chunk=4)


def test_loss_is_weighted_sum_of_four_diagonal_cross_entropies():
    torch.manual_seed(0)
    scores = torch.randn(4, 4)
    labels = torch.arange(4)
    cfg = tiny_mmoe(loss_weights=[1.0, 0.5, 0.25, 2.0], aux_loss_weight=0.1)
    loss, parts = mmoe_loss(score_output(scores, aux=3.0), labels, cfg)
    ce = [F.cross_entropy(scores * s, labels) for s in (1, 2, 3, 4)]
    expected = ce[0] + 0.5 * ce[1] + 0.25 * ce[2] + 2.0 * ce[3] + 0.1 * 3.0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["total"] == pytest.approx(expected.item(), rel=1e-5)
    assert parts["aux"] == pytest.approx(3.0)


def test_duplicate_gold_is_not_a_negative_and_hard_negative_columns():
    torch.manual_seed(1)
    scores = torch.randn(3, 5)  # 3 gold columns + 2 hard-negative columns
    labels = torch.arange(3)
    same = torch.zeros(3, 5, dtype=torch.bool)
    same[0, 2] = same[2, 0] = True  # mentions 0 and 2 link to the same entity
    same[0, 0] = same[2, 2] = True  # the gold column itself may be flagged too
    cfg = tiny_mmoe(loss_weights=[1.0, 0.0, 0.0, 0.0])
    loss, _ = mmoe_loss(score_output(scores), labels, cfg, same_entity_mask=same)
    keep = [[0, 1, 3, 4], [0, 1, 2, 3, 4], [1, 2, 3, 4]]
    gold_pos = [0, 1, 1]
    expected = torch.stack(
        [F.cross_entropy(scores[b, keep[b]][None], torch.tensor([gold_pos[b]])) for b in range(3)]
    ).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    unmasked, _ = mmoe_loss(score_output(scores), labels, cfg)
    assert unmasked.item() != pytest.approx(loss.item())
    with pytest.raises(ValueError, match="N >= B"):
        mmoe_loss(score_output(torch.randn(4, 3)), torch.arange(4), cfg)
