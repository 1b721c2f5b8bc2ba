"""mmoe fixtures: a tiny random-weight CLIP + MMoE (hidden 32, 1 layer, 32 px images), built once per session.

Sizes follow transformers' tiny CLIP tests; no download. 32 / 8 = 4x4 patches + CLS = 17 vision tokens, so
text is 17 tokens long.
"""

from __future__ import annotations

import pytest
import torch

from tests.mmoe.helpers import make_pairs, tiny_clip, tiny_mmoe


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    mentions, entities, _ = make_pairs(32)
    return mentions + entities


@pytest.fixture(scope="session")
def tiny_model(corpus):
    """(model, processor) in eval mode; tests must not modify its weights."""
    from mmoe.pretrained import build_tiny_model

    return build_tiny_model(tiny_clip(), tiny_mmoe(), corpus, seed=0)


@pytest.fixture(scope="session")
def batches(tiny_model):
    """A mention batch (one without an image) and an entity batch of 6 records."""
    _, processor = tiny_model
    mentions, entities, images = make_pairs(6, seed=1)
    mention_images = list(images)
    mention_images[2] = None
    return processor(mentions, mention_images), processor(entities, images)


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share two cores with other suites."""
    torch.set_num_threads(1)
    yield
