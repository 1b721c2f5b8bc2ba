"""The matcher units on their own: padding masks, CLIP's pooled EOS token, the cross unit's length check."""

from __future__ import annotations

import pytest
import torch

from mmoe.inter import CrossUnit
from mmoe.intra import IntraUnit
from mmoe.processor import SPECIAL_TOKENS
from tests.mmoe.helpers import tiny_mmoe


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
    side = unit.encode(text_cls, text_tokens, mask, image_cls, image_tokens, "mention")
    assert side.text_image.shape == (2, 6) and side.image_text.shape == (2, 6)
    assert side.gate_text.shape == (2, 6, 4) and side.gate_image.shape == (2, 6, 4)
    noisy = text_tokens.clone()
    noisy[0, 3:] = 50 * torch.randn(2, 8)
    again = unit.encode(text_cls, noisy, mask, image_cls, image_tokens, "mention")
    # padded text tokens still gate the image tokens they pair with (position i routes position i), so only
    # the image -> text vector of record 0 is guaranteed to ignore them
    torch.testing.assert_close(again.image_text[0], side.image_text[0])
    with pytest.raises(ValueError, match="vision tokens"):
        unit.encode(text_cls, text_tokens[:, :4], mask[:, :4], image_cls, image_tokens, "mention")


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


def _layer_norm(values: list[float], eps: float = 1e-5) -> torch.Tensor:
    x = torch.tensor(values)
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps)


@pytest.mark.parametrize("gate", ["reference", "token"])
def test_cross_gate_reads_the_official_input_on_each_side(gate):
    """Hand-computed: tokens [[2,0,0],[0,1,0]] with a zero cls_moe attend uniformly, ctx = [1, .5, 0];
    cls_proj = [0,0,3]; gate_fc = <[.5,0,.25], .> + 0. Context gate: tanh(.5) = .4621172 -> pre-norm
    [1, .5, 3*.4621172]. Cls gate (official mention side): tanh(.75) = .6351490 -> [1, .5, 3*.6351490]."""
    unit = CrossUnit(3, tiny_mmoe(dim=3, gate=gate))
    with torch.no_grad():
        unit.gate_fc.weight.copy_(torch.tensor([[0.5, 0.0, 0.25]]))
        unit.gate_fc.bias.zero_()
    cls_moe, cls_proj = torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 3.0]])
    tokens, mask = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]), torch.ones(1, 2, dtype=torch.bool)
    by_context = _layer_norm([1.0, 0.5, 1.3863516])
    by_cls = _layer_norm([1.0, 0.5, 1.9054470])
    expected = {"entity": by_context, "mention": by_cls if gate == "reference" else by_context}
    for side, want in expected.items():
        got = unit.attend(cls_moe, tokens, mask, cls_proj, unit.gate_reads_cls(side))
        torch.testing.assert_close(got[0], want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="side"):
        unit.gate_reads_cls("query")


def test_reference_cross_unit_differs_by_side_only_through_the_gate():
    """encode(side): the same inputs give other mention vectors in reference mode; a gate_fc that ignores its
    input (zero weight) makes the two sides equal again, so the gate input is the only side difference."""
    torch.manual_seed(0)
    inputs = (torch.randn(3, 8), torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool))
    images = (torch.randn(3, 6), torch.randn(3, 5, 6))
    for gate in ("reference", "token"):
        unit = CrossUnit(8, tiny_mmoe(dim=6, gate=gate)).eval()
        m = unit.encode(*inputs, *images, "mention")
        e = unit.encode(*inputs, *images, "entity")
        same = torch.allclose(m.text_image, e.text_image) and torch.allclose(m.image_text, e.image_text)
        assert same == (gate == "token")
        with torch.no_grad():
            unit.gate_fc.weight.zero_()
        m = unit.encode(*inputs, *images, "mention")
        e = unit.encode(*inputs, *images, "entity")
        torch.testing.assert_close(m.text_image, e.text_image)
        torch.testing.assert_close(m.image_text, e.image_text)
