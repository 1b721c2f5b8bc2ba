"""A tiny random-weight CLIP + MMoE config (hidden 32, 1 layer, 32 px images) and toy (mention, entity, image)
data; no download. 32 / 8 = 4x4 patches + CLS = 17 vision tokens, so text is 17 tokens long."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmoe.config import MMoEConfig, TinyCLIPConfig
from mmoe.texts import entity_text, mention_text

WORDS = (
    "paris london berlin rome madrid vienna prague lisbon oslo dublin cat dog horse tiger lion eagle river "
    "mountain city capital france england germany italy spain austria animal bird singer actor river lake "
    "painter writer team club band film song album novel island bridge tower castle church museum"
).split()


def tiny_clip() -> TinyCLIPConfig:
    return TinyCLIPConfig(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        projection_dim=32,
        image_size=32,
        patch_size=8,
        vocab_size=256,
    )


def tiny_mmoe(**overrides) -> MMoEConfig:
    values = dict(dim=16, num_experts=4, top_k=2, text_max_tokens=17)
    return MMoEConfig(**(values | overrides))


def random_image(rng: np.random.Generator, size: int = 32) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str], list[Image.Image]]:
    """n (mention text, entity text, shared image) triples with distinct names and descriptions."""
    rng = np.random.default_rng(seed)
    mentions, entities, images = [], [], []
    for i in range(n):
        name = f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i + 7) % len(WORDS)]}"
        desc = " ".join(rng.choice(WORDS, 4))
        context = " ".join(rng.choice(WORDS, 6))
        mentions.append(mention_text(name, context))
        entities.append(entity_text(name, desc))
        images.append(random_image(rng))
    return mentions, entities, images
