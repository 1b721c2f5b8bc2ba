"""The switch MoE layer: routing, gradients, load balancing, capacity, cross-modal gating, reference gate."""

from __future__ import annotations

import pytest
import torch

from mmoe.experts import SwitchMoE, load_balancing_loss
from tests.mmoe.helpers import tiny_mmoe


def make_moe(seed: int = 0, **overrides) -> SwitchMoE:
    torch.manual_seed(seed)
    return SwitchMoE(8, 6, tiny_mmoe(**overrides))


def test_token_gate_keeps_top_k_and_renormalises():
    moe = make_moe(top_k=2)
    out = moe(torch.randn(3, 10, 8))
    assert out.hidden_states.shape == (3, 10, 6)
    assert out.gate_weights.shape == (3, 10, 4)
    assert ((out.gate_weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(out.gate_weights.sum(-1), torch.ones(3, 10))


def test_every_expert_receives_tokens_and_gradients():
    moe = make_moe(top_k=2)
    out = moe(torch.randn(8, 17, 8))
    routed_tokens = (out.gate_weights > 0).sum((0, 1))  # [E]
    assert (routed_tokens > 0).all(), routed_tokens
    out.hidden_states.square().mean().backward()
    for expert in moe.experts:
        assert expert.fc_in.weight.grad.abs().sum() > 0
        assert expert.fc_out.weight.grad.abs().sum() > 0
    assert moe.gate.w_gate.weight.grad.abs().sum() > 0  # the router learns through the combine weights


def test_aux_loss_penalises_collapse():
    n_tokens, n_experts = 64, 4  # top-2 routing
    balanced_assign = torch.zeros(1, n_tokens, n_experts)
    for t in range(n_tokens):  # token t -> experts t, t+1 (mod E): every expert gets the same share
        balanced_assign[0, t, [t % n_experts, (t + 1) % n_experts]] = 0.5
    balanced = load_balancing_loss(balanced_assign, torch.full((1, n_tokens, n_experts), 0.25), None)
    collapsed_probs = torch.tensor([0.45, 0.45, 0.05, 0.05]).expand(1, n_tokens, n_experts)
    collapsed_assign = torch.tensor([0.5, 0.5, 0.0, 0.0]).expand(1, n_tokens, n_experts)
    collapsed = load_balancing_loss(collapsed_assign, collapsed_probs, None)
    assert balanced.item() == pytest.approx(1.0)
    assert collapsed.item() == pytest.approx(4 * (0.5 * 0.45 * 2))
    assert collapsed > balanced

    moe = make_moe()  # the same through the layer: a router biased onto experts 0, 1
    x = torch.randn(4, 17, 8)
    spread = moe(x).aux_loss
    with torch.no_grad():
        moe.gate.w_gate.bias.copy_(torch.tensor([8.0, 8.0, -8.0, -8.0]))
    assert moe(x).aux_loss > spread + 0.5


def test_padded_tokens_do_not_count_in_aux_loss():
    moe = make_moe()
    x = torch.randn(2, 10, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 6:] = False
    noisy = x.clone()
    noisy[:, 6:] = 100 * torch.randn(2, 4, 8)  # padding content must not matter
    assert torch.allclose(moe(x, mask=mask).aux_loss, moe(noisy, mask=mask).aux_loss)
    assert not torch.allclose(moe(x).aux_loss, moe(noisy).aux_loss)


def test_cross_modal_gate_reads_the_gate_input():
    moe = make_moe()
    gate_input = torch.randn(2, 5, 8)
    a = moe(torch.randn(2, 5, 8), gate_input=gate_input)
    b = moe(torch.randn(2, 5, 8), gate_input=gate_input)
    assert torch.equal(a.gate_weights, b.gate_weights)
    assert not torch.allclose(a.hidden_states, b.hidden_states)


def test_capacity_drops_tokens_in_training_only():
    moe = make_moe(capacity_factor=0.25)
    x = torch.randn(4, 16, 8)
    moe.train()
    dropped = (moe(x).gate_weights.sum(-1) == 0).sum()
    moe.eval()
    assert dropped > 0
    assert (moe(x).gate_weights.sum(-1) > 0).all()
    no_capacity = make_moe(capacity_factor=None).train()
    assert (no_capacity(x).gate_weights.sum(-1) > 0).all()


def test_token_gate_is_batch_independent():
    moe = make_moe()
    x = torch.randn(5, 17, 8)
    alone = moe(x[:1]).hidden_states
    together = moe(x).hidden_states[:1]
    torch.testing.assert_close(alone, together, atol=1e-6, rtol=1e-5)


def test_reference_gate_reproduces_the_official_defects():
    moe = make_moe(gate="reference", top_k=2)
    x = torch.randn(3, 17, 8)
    out = moe(x)
    nonzero_positions = out.hidden_states.abs().sum((0, 2)).nonzero().flatten()
    assert nonzero_positions.max() < 4  # only sequence positions 0..E-1 survive the wrong-axis scatter
    assert (out.hidden_states[:, 4:] == 0).all()
    assert (out.gate_weights[..., 2:] == 0).all()  # only experts 0..k-1 are ever used
    # gates are normalised over the batch: a record's output depends on its batch mates
    assert not torch.allclose(moe(x[:1]).hidden_states, out.hidden_states[:1])


def test_token_gate_has_no_positional_defect():
    out = make_moe(top_k=2)(torch.randn(3, 17, 8))
    assert (out.hidden_states[:, 4:].abs().sum(-1) > 0).all()
    assert (out.gate_weights[..., 2:] > 0).any()


def test_inference_skips_the_aux_loss_and_keeps_the_output():
    moe = make_moe()
    x = torch.randn(2, 7, 8)
    trained = moe(x)
    moe.eval()
    with torch.inference_mode():
        served = moe(x)
    assert served.aux_loss.item() == 0.0 and trained.aux_loss.item() > 0
    assert torch.allclose(served.hidden_states, trained.hidden_states, atol=1e-6)  # dropout 0 in tiny configs


@pytest.mark.parametrize("gate", ["token", "reference"])
def test_inference_runs_experts_on_routed_tokens_only_with_the_dense_sum(gate):
    moe = make_moe(top_k=2, gate=gate)
    x, mask = torch.randn(5, 9, 8), torch.ones(5, 9, dtype=torch.bool)
    with torch.no_grad():
        dense = moe(x, mask=mask)  # training mode: every expert on every token (capacity off)
        moe.eval()
        routed = moe(x, mask=mask)
    torch.testing.assert_close(routed.hidden_states, dense.hidden_states, atol=1e-6, rtol=1e-6)
    assert torch.equal(routed.gate_weights, dense.gate_weights)


def test_stacked_and_routed_inference_agree_and_the_stacked_weights_follow_updates():
    """A small inference call (`stacked`, every expert in one batched matmul) and a large one (`routed`) give
    the same sum; padded tokens are zeros on both; an in-place update (an optimizer step) is picked up."""
    moe = make_moe(top_k=2).eval()
    x = torch.randn(3, 7, 8)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        weights, _ = moe.gate(x)
        stacked, routed = moe.stacked(x, weights, mask), moe.routed(x, weights, mask=mask)
        torch.testing.assert_close(stacked, routed, atol=1e-6, rtol=1e-6)
        assert stacked[1, 4:].abs().sum() == 0 and routed[1, 4:].abs().sum() == 0
        assert torch.equal(moe(x, mask=mask).hidden_states, stacked)  # 21 tokens: the layer takes `stacked`
        before = moe.stacked(x, weights)
        moe.experts[1].fc_out.weight.mul_(2.0)  # in place, as an optimizer step updates it
        after = moe.stacked(x, weights)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, moe.routed(x, weights), atol=1e-6, rtol=1e-6)
