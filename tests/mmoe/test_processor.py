"""Text templates, the tiny tokenizer, the image processor and the fixed text length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmoe.processor import SPECIAL_TOKENS, MMoEProcessor
from mmoe.texts import entity_text, mention_text
from tests.mmoe.helpers import random_image, tiny_clip


def test_text_templates():
    assert mention_text("Paris", "the city of light", "capital of France") == (
        "Paris [SEP] the city of light [SEP] capital of France"
    )
    assert mention_text("Paris", "the city of light") == "Paris [SEP] the city of light"
    assert entity_text("Paris", "capital of France") == "Paris [SEP] capital of France"
    assert entity_text("Paris", "") == "Paris"


def test_vocab_is_most_frequent_words_deterministically():
    tiny = tiny_clip()
    tiny.vocab_size = len(SPECIAL_TOKENS) + 2
    corpus = ["Zebra zebra apple", "apple APPLE mango", "kiwi"]
    proc = MMoEProcessor.build_tiny(tiny, 17, corpus)
    vocab = proc.tokenizer.get_vocab()
    assert {w for w in vocab if w not in SPECIAL_TOKENS} == {"apple", "zebra"}  # lowercased counts 3 and 2
    assert vocab["[PAD]"] == 0 and vocab["[EOS]"] == 4
    again = MMoEProcessor.build_tiny(tiny, 17, corpus)
    assert again.tokenizer.get_vocab() == vocab


def test_batch_shapes_padding_truncation_and_missing_image(tiny_model):
    _, proc = tiny_model
    rng = np.random.default_rng(0)
    long_text = " ".join(["paris"] * 40)
    batch = proc(["paris [SEP] london", long_text], [random_image(rng), None])
    assert batch["input_ids"].shape == (2, 17) and batch["attention_mask"].shape == (2, 17)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["image_mask"].tolist() == [True, False]
    assert torch.count_nonzero(batch["pixel_values"][1]) == 0
    ids = batch["input_ids"]
    assert ids[0, 0] == SPECIAL_TOKENS["[BOS]"] and ids[0, 2] == SPECIAL_TOKENS["[SEP]"]
    assert batch["attention_mask"][0].sum() == 5  # [BOS] paris [SEP] london [EOS]
    assert ids[1, -1] == SPECIAL_TOKENS["[EOS]"]  # truncation keeps the EOS that CLIP pools
    assert batch["attention_mask"][1].all()


def test_text_length_must_equal_vision_tokens():
    with pytest.raises(ValueError, match="vision token count 17"):
        MMoEProcessor.build_tiny(tiny_clip(), 16, ["a b"])


def test_save_load_roundtrip(tiny_model, tmp_path):
    _, proc = tiny_model
    proc.save_pretrained(tmp_path)
    again = MMoEProcessor.from_pretrained(tmp_path)
    texts = ["paris [SEP] capital of france", "unknownword tiger"]
    rng = np.random.default_rng(3)
    images = [random_image(rng, 40), None]
    a, b = proc(texts, images), again(texts, images)
    for key in a:
        assert torch.equal(a[key], b[key]), key
