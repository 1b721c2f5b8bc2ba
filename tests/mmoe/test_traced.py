"""The traced one-record encoder (mmoe.traced) gives eager `encode`'s features for every kind of record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmoe.model import tensor_leaves
from mmoe.pretrained import build_tiny_model
from mmoe.traced import TracedSide
from tests.mmoe.helpers import WORDS, make_pairs, random_image, tiny_clip, tiny_mmoe


def records(seed: int = 3):
    """(text, image) records a server meets: short and window-filling texts (17 tokens: no padding), with
    and without an image, an empty text, an unknown-word text."""
    rng = np.random.default_rng(seed)
    mentions, _, images = make_pairs(4, seed=seed)
    long_text = " ".join(rng.choice(WORDS, 40))
    return [
        (mentions[0], images[0]),
        (mentions[1], None),
        (long_text, random_image(rng)),
        (long_text, None),
        ("", None),
        ("zzqx unknownword", images[3]),
    ]


def assert_same_features(model, processor, traced: TracedSide, side: str) -> None:
    for text, image in records():
        batch = processor([text], [image])
        with torch.inference_mode():
            eager = tensor_leaves(model.encode(batch, side))
            fast = tensor_leaves(traced(batch))
        assert len(fast) == len(eager)
        for a, b in zip(eager, fast):
            assert a.shape == b.shape and a.dtype == b.dtype
            if a.is_floating_point():
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(a, b)


@pytest.mark.parametrize("side", ["mention", "entity"])
def test_traced_side_equals_eager_on_every_kind_of_record(tiny_model, side):
    model, processor = tiny_model
    traced = TracedSide.build(model, processor, side, "cpu")
    assert traced is not None
    assert_same_features(model, processor, traced, side)
    with torch.inference_mode():
        vectors = model.retrieval_vectors(traced(processor(["paris france"], [None])))
    assert vectors.shape == (1, model.retrieval_dim) and torch.isfinite(vectors).all()


def test_traced_side_follows_the_routing_of_each_input(tiny_model, corpus, monkeypatch):
    """With every MoE call routed (per-expert `nonzero` on the gates), the trace still follows each record's
    own top-k routing: its routing is recorded as tensor ops, not frozen from the probe."""
    monkeypatch.setattr("mmoe.experts.STACKED_MAX_MACS", 0)
    model, processor = build_tiny_model(tiny_clip(), tiny_mmoe(top_k=1), corpus, seed=5)
    model.eval()
    traced = TracedSide.build(model, processor, "mention", "cpu")
    assert traced is not None and "nonzero" in str(traced.graph.inlined_graph)
    assert_same_features(model, processor, traced, "mention")


def test_traced_side_is_for_one_record_of_a_token_gate_model_in_eval(tiny_model, corpus):
    model, processor = tiny_model
    traced = TracedSide.build(model, processor, "mention", "cpu")
    with pytest.raises(ValueError, match="one record, got 2"):
        traced(processor(["paris", "rome"], [None, None]))
    reference, ref_processor = build_tiny_model(tiny_clip(), tiny_mmoe(gate="reference"), corpus, seed=0)
    reference.eval()
    assert TracedSide.build(reference, ref_processor, "mention", "cpu") is None  # batch-dependent gate
    training, train_processor = build_tiny_model(tiny_clip(), tiny_mmoe(), corpus, seed=0)
    training.train()
    assert TracedSide.build(training, train_processor, "mention", "cpu") is None
