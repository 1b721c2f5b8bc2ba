"""Interpretability helpers for ``explain=true`` in serving (paper: expert usage per level and modality).

``expert_usage`` summarises the gate weights of every MoE layer (text intra, image intra, the two cross-modal
calls) as the share of (valid) token->expert assignments and the mean combine weight of each expert.
``modality_contributions`` splits each score into its unit terms: score = S_text/3 + S_img/3 + S_cross/3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmoe.model import ScoreOutput, SideFeatures


def _layer_masks(f: SideFeatures) -> dict[str, Tensor]:
    """Valid rows of each gate tensor: [cls; tokens], padded text tokens excluded."""
    ones = f.text.mask.new_ones(f.text.mask.shape[0], 1)
    text_rows = torch.cat([ones, f.text.mask], dim=1)  # [B,1+L]
    image_rows = torch.cat([ones, f.image.mask], dim=1)  # [B,1+V]
    return {
        "text_intra": text_rows,
        "image_intra": image_rows,
        "cross_text": image_rows,
        "cross_image": text_rows,
    }


def expert_usage(f: SideFeatures) -> dict[str, dict[str, list[float]]]:
    """Per MoE layer: {"share": assignments share per expert, "weight": mean gate weight per expert}.

    Averaged over the whole batch in ``f``; pass ``select_rows(f, [i])`` for one record.
    """
    if f.gate_weights is None:
        raise ValueError("encode(batch, return_gates=True) first")
    masks = _layer_masks(f)
    usage = {}
    for name, weights in f.gate_weights.items():
        valid = masks[name].to(weights.dtype).unsqueeze(-1)  # [B,S,1]
        assigned = (weights > 0).to(weights.dtype) * valid  # [B,S,E]
        share = assigned.sum((0, 1)) / assigned.sum().clamp_min(1.0)  # [E]
        mean_weight = (weights * valid).sum((0, 1)) / valid.sum().clamp_min(1.0)  # [E]
        usage[name] = {"share": share.tolist(), "weight": mean_weight.tolist()}
    return usage


def modality_contributions(out: ScoreOutput, index: Tensor | None = None) -> dict[str, Tensor]:
    """Additive parts of the score: {"text", "image", "cross"} each [B,N] (or [B,K]), summing to scores.

    ``index`` [B,K] optionally picks columns (e.g. the top candidates) first.
    """
    parts = {"text": out.text / 3, "image": out.image / 3, "cross": out.cross / 3}
    if index is not None:
        parts = {k: v.gather(1, index) for k, v in parts.items()}
    return parts
