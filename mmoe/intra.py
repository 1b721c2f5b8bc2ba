"""Intra-level MoE units (shared reference section 1, units 1 "text" and 2 "vision").

One class serves both modalities (text: MoE P -> d over [text_cls; text_tokens]; image: MoE d -> d over
[image_cls; image_tokens]). Build order: ``IntraSide`` (one side's features), ``IntraUnit``.

Per side: X = [cls; tokens] -> switch MoE; row 0 = ``cls_moe``, rows 1.. = MoE'd tokens. Matching a mention
batch against entities: query = Linear(entity tokens), key/value = Linear(mention tokens),
softmax(QK^T / sqrt(d)) over token pairs, averaged over the entity queries, LayerNorm -> context;
g2l = <cls_moe_e, context>. (g2g and the (g2l + g2g)/2 unit score live in ``mmoe.model``, next to the
retrieval vectors that carry g2g.)

Deviation from the official code: padding masks. Padded mention tokens are masked out as keys and padded
entity tokens are excluded from the mean over queries (the official matcher attends to and averages padding).
Averaging attention rows before multiplying by V gives the same context as averaging the context rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmoe.config import MMoEConfig
from mmoe.experts import SwitchMoE, same_as_for_missing_images


@dataclass
class IntraSide:
    cls_moe: Tensor  # [B,d] row 0 of the MoE output
    tokens_moe: Tensor  # [B,L,d] rows 1.. of the MoE output
    mask: Tensor  # [B,L] bool, valid tokens
    aux_loss: Tensor  # [] load-balancing loss of this MoE call
    gate_weights: Tensor  # [B,L+1,E]


class IntraUnit(nn.Module):
    """Switch MoE over [cls; tokens] + entity-query / mention-key attention (the g2l term)."""

    def __init__(self, in_dim: int, config: MMoEConfig):
        super().__init__()
        d = config.dim
        self.moe = SwitchMoE(in_dim, d, config)
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.scale = 1.0 / math.sqrt(d)

    def encode(self, cls: Tensor, tokens: Tensor, mask: Tensor, no_image: Tensor | None = None) -> IntraSide:
        """One side (mentions or entities; the MoE is the same for both). cls [B,H], tokens [B,L,H].

        `no_image` [B] bool (vision unit): records encoded from the zero image, whose whole input is equal;
        at inference their expert passes are shared."""
        x = torch.cat([cls.unsqueeze(1), tokens], dim=1)  # [B,1+L,H]
        x_mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)  # [B,1+L]
        same_as = None if self.training else same_as_for_missing_images(x, no_image, from_row=0)
        moe = self.moe(x, mask=x_mask, same_as=same_as)
        h = moe.hidden_states  # [B,1+L,d]
        return IntraSide(h[:, 0], h[:, 1:], mask, moe.aux_loss, moe.gate_weights)

    def entity_queries(self, side: IntraSide) -> Tensor:
        return self.query(side.tokens_moe)  # [N,L,d]

    def mention_keys_values(self, side: IntraSide) -> tuple[Tensor, Tensor]:
        return self.key(side.tokens_moe), self.value(side.tokens_moe)  # [B,L,d] each

    def g2l(
        self,
        query: Tensor,
        query_mask: Tensor,
        cls_moe: Tensor,
        key: Tensor,
        value: Tensor,
        key_mask: Tensor,
        max_elements: int = 2**26,
    ) -> Tensor:
        """g2l for every (mention b, entity n) pair -> [B,N].

        Entity tensors have a leading [1,N] (one candidate set shared by all mentions) or [B,N] (own candidates
        per mention): query [.,N,Lq,d], query_mask [.,N,Lq], cls_moe [.,N,d]. Mention tensors: key, value
        [B,Lk,d], key_mask [B,Lk]. Entities are processed in slices so that the [B,n,Lq,Lk] attention holds
        at most ``max_elements`` values (256 MB in fp32), whatever N the caller passes.
        """
        step = max(1, max_elements // (key.shape[0] * query.shape[-2] * key.shape[-2]))
        if query.shape[1] <= step:
            return self._g2l(query, query_mask, cls_moe, key, value, key_mask)
        parts = [
            self._g2l(
                query[:, i : i + step],
                query_mask[:, i : i + step],
                cls_moe[:, i : i + step],
                key,
                value,
                key_mask,
            )
            for i in range(0, query.shape[1], step)
        ]
        return torch.cat(parts, dim=1)  # [B,N]

    def _g2l(self, query, query_mask, cls_moe, key, value, key_mask) -> Tensor:
        dtype = key.dtype
        query, cls_moe = query.to(dtype), cls_moe.to(dtype)
        (lead, n, lq, d), b = query.shape, key.shape[0]
        # whole GEMMs, not one tiny product per (mention, entity) pair, and no broadcast copy of the queries
        if lead == 1 and b > 1:  # one shared candidate set: all its queries x all mentions' keys at once
            att = (query.reshape(n * lq, d) @ key.reshape(b * key.shape[1], d).T).view(n, lq, b, -1)
            att = att.permute(2, 0, 1, 3)  # [B,N,Lq,Lk]
        else:  # each mention's own candidates
            att = torch.matmul(query.reshape(lead, n * lq, d), key.transpose(-1, -2)).view(b, n, lq, -1)
        att = (att * self.scale).masked_fill(~key_mask.bool()[:, None, None, :], torch.finfo(att.dtype).min)
        att = att.softmax(dim=-1)
        q_weight = query_mask.to(att.dtype)
        q_weight = q_weight / q_weight.sum(-1, keepdim=True).clamp_min(1.0)  # [.,N,Lq] mean over valid
        mean_att = (att * q_weight.unsqueeze(-1)).sum(-2)  # [B,N,Lk]
        context = self.norm(torch.matmul(mean_att, value.to(mean_att.dtype)))  # [B,N,d]
        return (context * cls_moe.to(context.dtype)).sum(-1)  # [B,N]
