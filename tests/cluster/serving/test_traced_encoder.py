"""`MentionEncoder` with `serve.traced_encoder` on gives what it gives with it off: a single mention through the
trace, batches and explanations eagerly, the same vectors, features and gate summaries either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cluster.serve.pipeline import MentionEncoder, MentionQuery
from mmoe.model import tensor_leaves
from mmoe.pretrained import build_tiny_model, save_pretrained
from tests.mmoe.helpers import make_pairs, random_image, tiny_clip, tiny_mmoe


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    mentions, entities, _ = make_pairs(32)
    model, processor = build_tiny_model(tiny_clip(), tiny_mmoe(), mentions + entities, seed=0)
    path = tmp_path_factory.mktemp("model")
    save_pretrained(path, model, processor)
    return MentionEncoder(path, traced=True), MentionEncoder(path, traced=False)


def queries() -> list[MentionQuery]:
    rng = np.random.default_rng(7)
    return [
        MentionQuery("paris", "the capital of france", random_image(rng)),
        MentionQuery("lion", "an animal", None),
        MentionQuery("", "", None),
        MentionQuery("river " * 30, "bridge tower castle", random_image(rng)),
    ]


def assert_same(fast, slow) -> None:
    np.testing.assert_allclose(fast.vector, slow.vector, rtol=1e-5, atol=1e-6)
    for a, b in zip(tensor_leaves(fast.features), tensor_leaves(slow.features), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fast.gates == slow.gates


def test_a_single_mention_runs_the_trace_with_eagers_answer(encoders):
    fast, slow = encoders
    assert fast.traced is not None and slow.traced is None
    for query in queries():
        assert_same(fast.encode([query])[0], slow.encode([query])[0])


def test_batches_and_explanations_run_eagerly_with_the_same_answer(encoders):
    fast, slow = encoders
    batch = queries()
    for a, b in zip(fast.encode(batch), slow.encode(batch), strict=True):
        assert_same(a, b)
    explained = MentionQuery("paris", "france", None, explain=True)
    a, b = fast.encode([explained])[0], slow.encode([explained])[0]
    assert a.gates is not None and set(a.gates) == {"text_intra", "image_intra", "cross_text", "cross_image"}
    assert_same(a, b)
