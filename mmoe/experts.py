"""The switch mixture-of-experts layer shared by every MMoE unit (shared reference section 1, "Switch MoE").

Build order: ``Expert`` (one FFN), ``TokenGate`` (ours), ``ReferenceGate`` (the official gate, reproduced),
``SwitchMoE`` (experts + gate, returns ``MoEOutput``).

``gate: token`` (default; reference section 2) is the intended switch gate: softmax over experts for each token
on its own, keep the top-k, renormalise over the kept ones. A token's output then depends on that token only,
which is what lets entity features be cached and scores be split for ANN retrieval + exact rerank.
Deviations from the official code: the per-token gate, padding masks (padded tokens do not count in the
load-balancing statistics), an optional Switch load-balancing loss (Fedus et al. 2021, eq. 4; weight 0 by
default as in the paper), no batch-normalised gates. ``capacity_factor=None`` means no token is ever
dropped: with a capacity, whether a token is kept depends on the other tokens in the batch, so scores would no
longer be batch-independent; dropping is therefore applied in training only.

``gate: reference`` reproduces the official gate *with its defects* (wrong-axis top-k scatter: only sequence
positions 0..E-1 get non-zero gates and only experts 0..k-1 are used; gates normalised over the batch and
scaled by capacity = int(capacity_factor * batch size); no padding masks). It is a reproduction aid for the
paper's exhaustive protocol only: features then depend on the batch, so nothing may be cached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmoe.config import MMoEConfig

# Inference calls up to this many multiply-adds per expert layer (tokens * in_dim * hidden) run `stacked`:
# measured here (1 thread) at dim 96, hidden 384, top-3 of 4: 18 tokens 0.36 vs 0.80 ms routed, 72 tokens
# 0.89 vs 1.20, 288 tokens 3.99 vs 2.85; at dim 512 (ViT-B/32) 50 tokens already favour `routed`.
STACKED_MAX_MACS = 2**22


@dataclass
class MoEOutput:
    hidden_states: Tensor  # [B,S,out]
    aux_loss: Tensor  # [] Switch load-balancing loss (unweighted; mmoe_loss applies aux_loss_weight); 0 at inference
    gate_weights: Tensor  # [B,S,E] combine weights, zero outside the kept experts


class Expert(nn.Module):
    """One expert: Linear(dim -> mult*dim) -> GELU -> Linear(mult*dim -> out) (official FeedForward)."""

    def __init__(self, dim: int, out_dim: int, config: MMoEConfig):
        super().__init__()
        hidden = dim * config.expert_hidden_mult
        self.fc_in = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(config.dropout)
        self.fc_out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.dropout(self.act(self.fc_in(x))))


class TokenGate(nn.Module):
    """Per-token top-k softmax gate (ours): each token is routed on its own features only."""

    def __init__(self, dim: int, config: MMoEConfig):
        super().__init__()
        self.top_k = config.top_k
        self.w_gate = nn.Linear(dim, config.num_experts)

    def forward(self, gate_input: Tensor) -> tuple[Tensor, Tensor]:
        probs = F.softmax(self.w_gate(gate_input).float(), dim=-1)  # [B,S,E]
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # [B,S,k]
        kept = torch.zeros_like(probs).scatter(-1, top_i, 1.0)  # [B,S,E] along the expert axis
        weights = probs * kept
        weights = weights / weights.sum(-1, keepdim=True)  # renormalise over the kept experts
        return weights, probs


class ReferenceGate(nn.Module):
    """The official SwitchGate, defects included (reproduction aid; see the module docstring)."""

    def __init__(self, dim: int, config: MMoEConfig, epsilon: float = 1e-6):
        super().__init__()
        self.top_k = config.top_k
        self.capacity_factor = config.capacity_factor or 1.0  # official default 1.0
        self.epsilon = epsilon
        self.w_gate = nn.Linear(dim, config.num_experts)

    def forward(self, gate_input: Tensor) -> tuple[Tensor, Tensor]:
        probs = F.softmax(self.w_gate(gate_input).float(), dim=-1)  # [B,S,E]
        capacity = int(self.capacity_factor * gate_input.size(0))  # "capacity" = batch size
        _, top_i = probs.topk(self.top_k, dim=-1)  # [B,S,k]
        # Defect 1: the scatter runs along axis 1 (sequence), not the expert axis: mask[b, top_i[b,s,j], j] = 1
        mask = torch.zeros_like(probs).scatter(1, top_i, 1.0)  # non-zero only at positions < E, experts < k
        masked = probs * mask
        # Defect 2: normalised over the batch axis, so a record's gates depend on the other records
        weights = masked / (masked.sum(0, keepdim=True) + self.epsilon) * capacity
        return weights, probs


def load_balancing_loss(weights: Tensor, probs: Tensor, mask: Tensor | None) -> Tensor:
    """Switch Transformer eq. 4 generalised to top-k: E * sum_e f_e * P_e over valid tokens.

    f_e = share of token->expert assignments sent to expert e, P_e = mean router probability of e.
    Equals 1 for a perfectly balanced router, grows as routing collapses onto fewer experts.
    """
    n_experts = probs.shape[-1]
    assigned = (weights > 0).to(probs.dtype)  # [B,S,E]
    valid = torch.ones(probs.shape[:-1], device=probs.device) if mask is None else mask.to(probs.dtype)
    valid = valid.unsqueeze(-1)  # [B,S,1]
    n_valid = valid.sum().clamp_min(1.0)
    f = (assigned * valid).sum((0, 1)) / (assigned * valid).sum().clamp_min(1.0)  # [E]
    p = (probs * valid).sum((0, 1)) / n_valid  # [E]
    return n_experts * (f * p).sum()


def same_as_for_missing_images(x: Tensor, no_image: Tensor | None, from_row: int) -> Tensor | None:
    """`SwitchMoE`'s `same_as` for x [B,S,.] whose rows `from_row`.. encode the zero image in the records with
    `no_image` [B] bool: those rows point at the first such record's (None when fewer than two records)."""
    if no_image is None or int(no_image.sum()) < 2:
        return None
    same_as = torch.arange(x.shape[0] * x.shape[1], device=x.device).view(x.shape[0], x.shape[1])
    first = no_image.nonzero()[0, 0]
    same_as[no_image, from_row:] = same_as[first, from_row:].clone()
    return same_as.reshape(-1)  # [B*S]


class SwitchMoE(nn.Module):
    """Switch MoE: ``MoE(x, gate_input)``; the gate may read another tensor (cross-modal gating, unit 3).

    In training the experts are applied densely (every expert on every token, combined with zero weights where
    not routed): with 4 experts and top-3 routing this costs at most 4/3 of routed compute and needs no
    gather/scatter. At inference each expert runs on its routed tokens only (`routed`): the same sum, less the
    terms of weight 0, about 40% less CPU time at top-3 of 4 (entity encoding for evaluation and the index).
    A small inference call (at most `STACKED_MAX_MACS` per expert layer: one or a few tiny-model mentions, a
    served request) runs all experts at once on stacked weights (`stacked`) instead: three batched matmuls
    in place of ~15 small ops per expert, whose per-op cost outweighs the skipped terms there.
    """

    def __init__(self, dim: int, out_dim: int, config: MMoEConfig):
        super().__init__()
        if not 1 <= config.top_k <= config.num_experts:
            raise ValueError(f"top_k={config.top_k} must be in [1, num_experts={config.num_experts}]")
        if config.gate not in ("token", "reference"):
            raise ValueError(f"unknown gate {config.gate!r}: expected 'token' or 'reference'")
        self.reference = config.gate == "reference"
        self.capacity_factor = config.capacity_factor
        self.top_k = config.top_k
        self.experts = nn.ModuleList([Expert(dim, out_dim, config) for _ in range(config.num_experts)])
        self.gate = ReferenceGate(dim, config) if self.reference else TokenGate(dim, config)

    def drop_over_capacity(self, weights: Tensor, mask: Tensor | None) -> Tensor:
        """Training only: an expert keeps its first ``capacity`` tokens (in order); later ones get weight 0."""
        n_experts = weights.shape[-1]
        flat = weights.reshape(-1, n_experts)  # [B*S,E]
        routed = flat > 0
        if mask is not None:
            routed = routed & mask.reshape(-1, 1).bool()
        n_tokens = routed.any(-1).sum().item()
        capacity = math.ceil(self.capacity_factor * n_tokens * self.top_k / n_experts)
        position = routed.long().cumsum(0)  # [B*S,E] 1-based slot in each expert's buffer
        keep = routed & (position <= capacity)
        return (flat * keep).reshape(weights.shape)

    def forward(
        self,
        x: Tensor,
        gate_input: Tensor | None = None,
        mask: Tensor | None = None,
        same_as: Tensor | None = None,
    ) -> MoEOutput:
        """`same_as` [B*S] (inference only): for each token, a token whose x equals it (itself if none)."""
        gate_input = x if gate_input is None else gate_input
        if self.reference:
            mask = None  # the official gate ignores padding
        weights, probs = self.gate(gate_input)  # [B,S,E] each
        if self.training or torch.is_grad_enabled():
            aux_loss = load_balancing_loss(weights, probs, mask)
        else:  # inference (eval + no_grad): only the training loss reads it, so skip its reductions
            aux_loss = weights.new_zeros(())
        if self.training and self.capacity_factor is not None and not self.reference:
            weights = self.drop_over_capacity(weights, mask)
        if not self.training:
            return MoEOutput(self.inference(x, weights, same_as, mask), aux_loss, weights)
        out = 0
        for e, expert in enumerate(self.experts):
            out = out + weights[..., e : e + 1].to(x.dtype) * expert(x)  # [B,S,out]
        return MoEOutput(hidden_states=out, aux_loss=aux_loss, gate_weights=weights)

    def inference(self, x: Tensor, weights: Tensor, same_as: Tensor | None, mask: Tensor | None) -> Tensor:
        """`stacked` for a call small enough that per-op overhead dominates (and no graph is being built: the
        cached stacked weights are not the parameters autograd tracks), else `routed`."""
        hidden = self.experts[0].fc_in.out_features
        small = x.numel() * hidden <= STACKED_MAX_MACS  # tokens * in_dim * hidden MACs per expert layer
        if small and not torch.is_grad_enabled():
            return self.stacked(x, weights, mask)
        return self.routed(x, weights, same_as, mask)

    def stacked_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The experts' weights stacked [E,in,H], [E,1,H], [E,H,out], [E,1,out], rebuilt when any parameter
        changed in place (optimizer step, load_state_dict: `_version`) or moved (`data_ptr`)."""
        params = getattr(self, "_stacked_params", None)  # `.to()`, load_state_dict: same objects, new data
        if params is None or params[0] is not self.experts[0].fc_in.weight:  # load_state_dict(assign=True)
            layers = [layer for e in self.experts for layer in (e.fc_in, e.fc_out)]
            params = self._stacked_params = [p for layer in layers for p in (layer.weight, layer.bias)]
        key = (params[0].data_ptr(), *(p._version for p in params))  # a tuple of ints: ~2 us, not 60
        cached = getattr(self, "_stacked", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                w_in = torch.stack([e.fc_in.weight.t() for e in self.experts]).contiguous()
                b_in = torch.stack([e.fc_in.bias for e in self.experts]).unsqueeze(1)
                w_out = torch.stack([e.fc_out.weight.t() for e in self.experts]).contiguous()
                b_out = torch.stack([e.fc_out.bias for e in self.experts]).unsqueeze(1)
            cached = self._stacked = (key, (w_in, b_in, w_out, b_out))
        return cached[1]

    def stacked(self, x: Tensor, weights: Tensor, mask: Tensor | None = None) -> Tensor:
        """The dense sum with every expert in one batched matmul per layer; padded tokens come out as zeros."""
        w_in, b_in, w_out, b_out = self.stacked_weights()
        flat_x = x.reshape(1, -1, x.shape[-1]).expand(len(self.experts), -1, -1)  # [E,T,in]
        flat_w = weights.reshape(-1, weights.shape[-1]).to(x.dtype)  # [T,E]
        if mask is not None:
            flat_w = flat_w * mask.reshape(-1, 1).to(flat_w.dtype)
        h = self.experts[0].act(torch.baddbmm(b_in.to(x.dtype), flat_x, w_in.to(x.dtype)))  # [E,T,H]
        y = torch.baddbmm(b_out.to(x.dtype), h, w_out.to(x.dtype))  # [E,T,out]
        out = torch.bmm(flat_w.unsqueeze(1), y.transpose(0, 1)).squeeze(1)  # [T,out] sum_e w_e * y_e
        return out.reshape(*x.shape[:-1], -1)  # [B,S,out]

    def routed(
        self, x: Tensor, weights: Tensor, same_as: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """sum_e weights[..., e] * expert_e(x), each expert run only on the tokens with a non-zero weight, and
        once per group of tokens with equal x (`same_as`; e.g. the image tokens of records without an image).

        Padded tokens (`mask` False) are not run at all and come out as zeros: every reader of a padded
        position masks it (attention keys, the mean over entity queries), so scores are unchanged, and a
        names-only record of 5 tokens in a 17- or 50-token window no longer pays for its padding."""
        flat_x = x.reshape(-1, x.shape[-1])  # [T,in]
        flat_w = weights.reshape(-1, weights.shape[-1]).to(x.dtype)  # [T,E]
        if mask is not None:
            flat_w = flat_w * mask.reshape(-1, 1).to(flat_w.dtype)  # [T,E] padded rows: no expert
        out = None
        for e, expert in enumerate(self.experts):  # in expert order, as the dense sum
            rows = flat_w[:, e].nonzero().squeeze(1)  # [T_e]
            w = flat_w[:, e].index_select(0, rows).unsqueeze(1)  # [T_e,1]
            if same_as is None:
                y = w * expert(flat_x.index_select(0, rows))  # [T_e,out]
            else:
                distinct, inverse = torch.unique(same_as.index_select(0, rows), return_inverse=True)
                y = w * expert(flat_x.index_select(0, distinct)).index_select(0, inverse)  # [T_e,out]
            out = y.new_zeros(flat_x.shape[0], y.shape[-1]) if out is None else out
            out.index_add_(0, rows, y.to(out.dtype))
        return out.reshape(*x.shape[:-1], -1)  # [B,S,out]
