"""The matcher units on their own: padding masks, CLIP's pooled EOS token, the cross unit's length check."""

from __future__ import annotations

import pytest
import torch

from mmoe.inter import CrossUnit
from mmoe.intra import IntraUnit
from mmoe.processor import SPECIAL_TOKENS
from tests.mmoe.conftest import tiny_mmoe


def test_intra_unit_ignores_padding():
    torch.manual_seed(0)
    unit = IntraUnit(8, tiny_mmoe(dim=6))
    b, n, length = 2, 3, 5
    mention = unit.encode(
        torch.randn(b, 8), torch.randn(b, length, 8), torch.tensor([[1, 1, 1, 0, 0]] * b).bool()
    )
    entity = unit.encode(
        torch.randn(n, 8), torch.randn(n, length, 8), torch.tensor([[1, 1, 1, 1, 0]] * n).bool()
    )
    assert mention.cls_moe.shape == (b, 6) and mention.tokens_moe.shape == (b, length, 6)
    assert mention.gate_weights.shape == (b, length + 1, 4)
    key, value = unit.mention_keys_values(mention)
    query = unit.entity_queries(entity)

    def g2l(query, key, value):
        return unit.g2l(query[None], entity.mask[None], entity.cls_moe[None], key, value, mention.mask)

    base = g2l(query, key, value)
    assert base.shape == (b, n)
    noisy_q, noisy_k, noisy_v = query.clone(), key.clone(), value.clone()
    noisy_q[:, 4:] = 50 * torch.randn_like(noisy_q[:, 4:])  # padded entity queries
    noisy_k[:, 3:] = 50 * torch.randn_like(noisy_k[:, 3:])  # padded mention keys and values
    noisy_v[:, 3:] = 50 * torch.randn_like(noisy_v[:, 3:])
    torch.testing.assert_close(g2l(noisy_q, noisy_k, noisy_v), base)
    torch.testing.assert_close(
        unit.g2l(
            query[None], entity.mask[None], entity.cls_moe[None], key, value, mention.mask, max_elements=1
        ),
        base,
    )  # entity slicing (one entity at a time here) gives the same numbers
    noisy_k[:, :3] += torch.randn_like(noisy_k[:, :3])  # a valid key does matter
    assert not torch.allclose(g2l(query, noisy_k, value), base)


def test_cross_unit_masks_padded_text_and_checks_lengths():
    torch.manual_seed(0)
    unit = CrossUnit(8, tiny_mmoe(dim=6))
    text_cls, image_cls = torch.randn(2, 8), torch.randn(2, 6)
    text_tokens, image_tokens = torch.randn(2, 5, 8), torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    side = unit.encode(text_cls, text_tokens, mask, image_cls, image_tokens)
    assert side.text_image.shape == (2, 6) and side.image_text.shape == (2, 6)
    assert side.gate_text.shape == (2, 6, 4) and side.gate_image.shape == (2, 6, 4)
    noisy = text_tokens.clone()
    noisy[0, 3:] = 50 * torch.randn(2, 8)
    again = unit.encode(text_cls, noisy, mask, image_cls, image_tokens)
    # padded text tokens still gate the image tokens they pair with (position i routes position i), so only
    # the image -> text vector of record 0 is guaranteed to ignore them
    torch.testing.assert_close(again.image_text[0], side.image_text[0])
    with pytest.raises(ValueError, match="vision tokens"):
        unit.encode(text_cls, text_tokens[:, :4], mask[:, :4], image_cls, image_tokens)


def test_clip_pools_the_eos_token(tiny_model, batches):
    model, _ = tiny_model
    mentions, _ = batches
    ids = mentions["input_ids"]
    text_model = model.features.clip.text_model
    assert text_model.config.eos_token_id == SPECIAL_TOKENS["[EOS]"] != 2
    with torch.no_grad():
        out = text_model(input_ids=ids, attention_mask=mentions["attention_mask"])
    eos_position = (ids == SPECIAL_TOKENS["[EOS]"]).int().argmax(-1)
    assert (eos_position == mentions["attention_mask"].sum(-1) - 1).all()  # last valid token
    torch.testing.assert_close(
        out.pooler_output, out.last_hidden_state[torch.arange(ids.shape[0]), eos_position]
    )
