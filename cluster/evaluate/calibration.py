"""NIL threshold calibration on dev: below the threshold, the best candidate's score means "not in the KB".

With NIL mentions in dev: the score threshold that maximises the accuracy of the link-vs-NIL decision.
Without any: the 5th percentile of the gold entities' scores (keeps 95% of correct links). `mel eval` writes it beside
the model (`cluster.artifacts.write_calibration`), where serving reads it.
"""

from __future__ import annotations

import torch

GOLD_PERCENTILE = 0.05


def fit_nil_threshold(linked_top: torch.Tensor, linked_gold: torch.Tensor, nil_top: torch.Tensor) -> dict:
    """{"nil_threshold", "method", "accuracy"} from top scores of linked and NIL mentions and gold scores."""
    linked_top, nil_top = linked_top.float(), nil_top.float()
    gold = linked_gold[~torch.isnan(linked_gold)].float()
    if nil_top.numel() == 0:
        if gold.numel() == 0:
            return {"nil_threshold": None, "method": "none", "accuracy": None}
        value = float(torch.quantile(gold, GOLD_PERCENTILE))
        return {
            "nil_threshold": value,
            "method": f"p{int(GOLD_PERCENTILE * 100)} of gold scores",
            "accuracy": None,
        }
    candidates = torch.cat([linked_top, nil_top]).unique()  # sorted ascending
    total = linked_top.numel() + nil_top.numel()
    best_t, best_acc = float(candidates[0]), -1.0
    for t in candidates.tolist():
        acc = (int((linked_top >= t).sum()) + int((nil_top < t).sum())) / total
        if acc > best_acc:
            best_t, best_acc = t, acc
    return {"nil_threshold": best_t, "method": "max link-vs-NIL accuracy on dev", "accuracy": best_acc}
