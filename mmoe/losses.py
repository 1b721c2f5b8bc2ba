"""Training loss (shared reference section 1, "Losses").

L = w0 CE(score) + w1 CE(S_text) + w2 CE(S_img) + w3 CE(S_cross) + aux_loss_weight * aux, with raw dot products
as logits (no temperature) and ``labels[b]`` = the gold column of mention b (the diagonal for in-batch
negatives; extra hard-negative columns may follow the B gold columns, so N >= B).

Deviation from the official code: ``same_entity_mask [B,N]`` (True where column n holds mention b's gold
entity) removes the *other* columns with the same gold entity from b's negatives; the official loss treats a
duplicate gold entity in a batch as a negative (a false negative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmoe.config import MMoEConfig


def mask_duplicate_golds(logits: Tensor, labels: Tensor, same_entity_mask: Tensor | None) -> Tensor:
    """Set logits of non-gold columns that hold the gold entity to -inf (they are not negatives)."""
    if same_entity_mask is None:
        return logits
    gold_column = F.one_hot(labels, logits.shape[1]).bool()  # [B,N]
    duplicate = same_entity_mask.bool() & ~gold_column
    return logits.masked_fill(duplicate, float("-inf"))


def mmoe_loss(
    output,
    labels: Tensor,
    config: MMoEConfig,
    same_entity_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``output``: a ``ScoreOutput`` [B,N]; labels [B] long gold columns. Returns (loss, float parts)."""
    if output.scores.shape[1] < output.scores.shape[0]:
        raise ValueError(f"scores {tuple(output.scores.shape)}: need N >= B (B gold columns first)")
    w_score, w_text, w_image, w_cross = config.loss_weights
    terms = {
        "score": (w_score, output.scores),
        "text": (w_text, output.text),
        "image": (w_image, output.image),
        "cross": (w_cross, output.cross),
    }
    loss = output.scores.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    for name, (weight, logits) in terms.items():
        ce = F.cross_entropy(mask_duplicate_golds(logits.float(), labels, same_entity_mask), labels)
        parts[name] = ce.item()
        loss = loss + weight * ce
    if output.aux_loss is not None:
        parts["aux"] = float(output.aux_loss.item())
        if config.aux_loss_weight:
            loss = loss + config.aux_loss_weight * output.aux_loss.float()
    parts["total"] = loss.item()
    return loss, parts
