"""Inter-level (cross-modal) MoE unit (shared reference section 1, unit 3).

Text features are projected to d (``text_fc``), image features re-projected (``image_fc``). With
A = [text_cls; image_tokens] and Bc = [image_cls; text_tokens], one shared switch MoE is applied with
cross-modal gating: MoE(x=A, gate=Bc) gives the new text_cls and image tokens, MoE(x=Bc, gate=A) the new
image_cls and text tokens (token i of one modality is routed by token i of the other, hence text length ==
vision token count). Then text -> image: p = softmax(text_cls . image_tokens^T), ctx = p . image_tokens,
g = tanh(Linear(ctx)), out = LayerNorm(text_cls_proj * g + ctx); image -> text symmetrically.
Each side yields two vectors, and S_cross = (<m_ti, e_ti> + <m_it, e_it>) / 2 is an inner product, so both
vectors go into the retrieval vector (reference section 2).

The official code's tanh gate differs by side: entities gate with the attended context, g = tanh(Linear(ctx)),
mentions with the projected cls taken before the MoE, g = tanh(Linear(text_cls_proj)) (image -> text likewise
with image_cls_proj). ``gate: reference`` reproduces that asymmetry, so ``encode`` takes the ``side`` it
encodes. With ``gate: token`` (our default) both sides gate with the context, a documented deviation, and
padded text tokens are masked out of the image -> text attention and the MoE statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mmoe.config import MMoEConfig
from mmoe.experts import SwitchMoE, same_as_for_missing_images

Side = Literal["mention", "entity"]
SIDES = ("mention", "entity")


@dataclass
class CrossSide:
    text_image: Tensor  # [B,d] text cls attending over image tokens (cross_ti)
    image_text: Tensor  # [B,d] image cls attending over text tokens (cross_it)
    aux_loss: Tensor  # [] mean load-balancing loss of the two MoE calls
    gate_text: Tensor  # [B,1+V,E] gates of MoE(x=[text_cls; image_tokens], gate=[image_cls; text_tokens])
    gate_image: Tensor  # [B,1+L,E] gates of MoE(x=[image_cls; text_tokens], gate=[text_cls; image_tokens])


class CrossUnit(nn.Module):
    """Shared switch MoE with cross-modal gating, then gated text<->image attention."""

    def __init__(self, text_dim: int, config: MMoEConfig):
        super().__init__()
        d = config.dim
        self.text_fc = nn.Linear(text_dim, d)
        self.image_fc = nn.Linear(d, d)
        self.moe = SwitchMoE(d, d, config)
        self.gate_fc = nn.Linear(d, 1)
        self.norm = nn.LayerNorm(d)
        self.reference = config.gate == "reference"

    def gate_reads_cls(self, side: Side) -> bool:
        """True where the tanh gate reads the pre-MoE projected cls: the mention side in reference mode."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return self.reference and side == "mention"

    def attend(
        self, cls_moe: Tensor, tokens: Tensor, mask: Tensor, cls_proj: Tensor, gate_on_cls: bool = False
    ) -> Tensor:
        """cls_moe [B,d] attends over tokens [B,S,d] (no scaling, as the official code), tanh-gated residual.

        The gate reads the context ctx [B,d], or cls_proj [B,d] when ``gate_on_cls`` (official mention side).
        """
        att = torch.einsum("bd,bsd->bs", cls_moe, tokens)  # [B,S]
        att = att.masked_fill(~mask, torch.finfo(att.dtype).min).softmax(-1)
        ctx = torch.einsum("bs,bsd->bd", att, tokens)  # [B,d]
        gate = torch.tanh(self.gate_fc(cls_proj if gate_on_cls else ctx))  # [B,1]
        return self.norm(cls_proj * gate + ctx)  # [B,d]

    def encode(
        self,
        text_cls: Tensor,
        text_tokens: Tensor,
        text_mask: Tensor,
        image_cls: Tensor,
        image_tokens: Tensor,
        side: Side,
        no_image: Tensor | None = None,
    ) -> CrossSide:
        """`no_image` [B] bool: records encoded from the zero image (equal image tokens; inference shares them)."""
        if text_tokens.shape[1] != image_tokens.shape[1]:
            raise ValueError(
                f"text length {text_tokens.shape[1]} != vision tokens {image_tokens.shape[1]}: the cross-modal "
                "gate pairs token i of each modality (set mmoe.text_max_tokens to the vision token count)"
            )
        tc, tt = self.text_fc(text_cls), self.text_fc(text_tokens)  # [B,d], [B,L,d]
        ic, it = self.image_fc(image_cls), self.image_fc(image_tokens)  # [B,d], [B,V,d]
        a = torch.cat([tc.unsqueeze(1), it], dim=1)  # [B,1+V,d]
        b = torch.cat([ic.unsqueeze(1), tt], dim=1)  # [B,1+L,d]
        ones = text_mask.new_ones(text_mask.shape[0], 1).bool()
        all_valid = torch.ones_like(text_mask, dtype=torch.bool)  # image tokens are never padding
        a_mask = torch.cat([ones, all_valid], dim=1)  # [B,1+V]
        b_mask = torch.cat([ones, text_mask.bool()], dim=1)  # [B,1+L]
        # At inference the image tokens of records without an image (all the zero image's) share expert passes
        same_as = None if self.training else same_as_for_missing_images(a, no_image, from_row=1)
        if self.training or torch.is_grad_enabled() or self.reference:
            # each direction's load-balancing statistics on its own; the reference gate mixes a batch's records
            moe_a = self.moe(a, gate_input=b, mask=a_mask, same_as=same_as)
            moe_b = self.moe(b, gate_input=a, mask=b_mask)
            ha, hb = moe_a.hidden_states, moe_b.hidden_states  # [B,1+V,d], [B,1+L,d]
            gate_a, gate_b = moe_a.gate_weights, moe_b.gate_weights
            aux = (moe_a.aux_loss + moe_b.aux_loss) / 2
        else:  # one call for both directions: per-token gates give the same numbers at half the fixed cost
            # (a served mention's two calls 0.89 -> 0.64 ms); b's rows follow a's, each its own in `same_as`
            if same_as is not None:
                same_as = torch.cat([same_as, torch.arange(same_as.numel(), 2 * same_as.numel()).to(same_as)])
            both = self.moe(
                torch.cat([a, b]),
                gate_input=torch.cat([b, a]),
                mask=torch.cat([a_mask, b_mask]),
                same_as=same_as,
            )
            n = a.shape[0]
            ha, hb = both.hidden_states[:n], both.hidden_states[n:]
            gate_a, gate_b = both.gate_weights[:n], both.gate_weights[n:]
            aux = both.aux_loss
        on_cls = self.gate_reads_cls(side)
        text_image = self.attend(ha[:, 0], ha[:, 1:], a_mask[:, 1:], tc, on_cls)
        image_text = self.attend(hb[:, 0], hb[:, 1:], b_mask[:, 1:], ic, on_cls)
        return CrossSide(text_image, image_text, aux, gate_a, gate_b)
