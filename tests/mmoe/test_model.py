"""MMoEModel: shapes through every stage, the exact score split, rerank == exhaustive == forward."""

from __future__ import annotations

import pytest
import torch

from mmoe.explain import expert_usage, modality_contributions
from mmoe.model import CACHE_KEYS, select_rows
from mmoe.pretrained import build_tiny_model
from tests.mmoe.helpers import tiny_clip, tiny_mmoe

B, N, L, D_MODEL, P, E = 6, 6, 17, 16, 32, 4


def test_shapes_through_every_stage(tiny_model, batches):
    model, _ = tiny_model
    mentions, _ = batches
    with torch.no_grad():
        f = model.features(
            mentions["input_ids"],
            mentions["attention_mask"],
            mentions["pixel_values"],
            mentions["image_mask"],
        )
        side = model.encode(mentions, "mention", return_gates=True)
    assert f.text_cls.shape == (B, P) and f.text_tokens.shape == (B, L, 32)
    assert f.image_cls.shape == (B, D_MODEL) and f.image_tokens.shape == (B, L, D_MODEL)
    assert side.text.cls_moe.shape == (B, D_MODEL) and side.text.tokens_moe.shape == (B, L, D_MODEL)
    assert side.image.cls_moe.shape == (B, D_MODEL) and side.image.tokens_moe.shape == (B, L, D_MODEL)
    assert side.cross.text_image.shape == (B, D_MODEL) and side.cross.image_text.shape == (B, D_MODEL)
    assert side.has_image.tolist() == [True, True, False, True, True, True]
    assert set(side.gate_weights) == {"text_intra", "image_intra", "cross_text", "cross_image"}
    assert all(g.shape == (B, L + 1, E) for g in side.gate_weights.values())
    assert model.retrieval_dim == P + 3 * D_MODEL
    assert model.retrieval_vectors(side).shape == (B, model.retrieval_dim)
    cache = model.entity_cache(side)
    assert set(cache) == set(CACHE_KEYS)
    assert cache["text_query"].shape == (B, L, D_MODEL) and cache["image_query"].shape == (B, L, D_MODEL)
    assert cache["text_mask"].dtype == torch.bool and cache["text_cls_moe"].shape == (B, D_MODEL)


def test_score_paths_agree_and_split_exactly(tiny_model, batches):
    model, _ = tiny_model
    mentions, entities = batches
    with torch.no_grad():
        out = model(mentions, entities)
        m, e = model.encode(mentions, "mention"), model.encode(entities, "entity")
        vectors, cache = model.retrieval_vectors(e), model.entity_cache(e)
        shared = model.score_shared(m, vectors, cache)
        chunks = [
            model.score_shared(m, vectors[i : i + 4], select_rows(cache, slice(i, i + 4))) for i in (0, 4)
        ]
        cand_index = torch.tensor([[(b + k) % N for k in range(3)] for b in range(B)])  # [B,3]
        cand = model.score_candidates(m, vectors[cand_index], {k: v[cand_index] for k, v in cache.items()})
    assert out.scores.shape == (B, N) and out.aux_loss.dim() == 0
    for name in ("scores", "text", "image", "cross"):
        torch.testing.assert_close(getattr(shared, name), getattr(out, name), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            getattr(cand, name), getattr(out, name).gather(1, cand_index), atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(torch.cat([c.scores for c in chunks], 1), out.scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.scores, (out.text + out.image + out.cross) / 3)
    # reference section 2: score = <u_m, u_e>/6 + (g2l_text + g2l_img)/6
    g2l_t, g2l_i = model._g2l(m, {k: v.unsqueeze(0) for k, v in cache.items()})
    split = model.retrieval_vectors(m) @ vectors.T / 6 + (g2l_t + g2l_i) / 6
    torch.testing.assert_close(split, out.scores, atol=1e-5, rtol=1e-5)


def test_fp16_cache_scores_close(tiny_model, batches):
    model, _ = tiny_model
    mentions, entities = batches
    with torch.no_grad():
        m, e = model.encode(mentions, "mention"), model.encode(entities, "entity")
        exact = model.score_shared(m, model.retrieval_vectors(e), model.entity_cache(e)).scores
        half = {k: v.half() if v.is_floating_point() else v for k, v in model.entity_cache(e).items()}
        approx = model.score_shared(m, model.retrieval_vectors(e).half(), half).scores
    assert approx.dtype == torch.float32
    torch.testing.assert_close(approx, exact, atol=2e-2, rtol=1e-2)


def test_scores_are_batch_independent(tiny_model, batches):
    model, _ = tiny_model
    mentions, entities = batches
    with torch.no_grad():
        together = model(mentions, entities).scores
        alone = model(select_rows(mentions, slice(1, 2)), entities).scores
        single_entity = model(mentions, select_rows(entities, slice(3, 4))).scores
    torch.testing.assert_close(alone, together[1:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single_entity, together[:, 3:4], atol=1e-5, rtol=1e-5)


def test_missing_image_ignores_its_pixels(tiny_model, batches):
    model, _ = tiny_model
    mentions, entities = batches
    noisy = dict(mentions, pixel_values=mentions["pixel_values"].clone())
    noisy["pixel_values"][2] = torch.randn(3, 32, 32)  # image_mask[2] is False
    with torch.no_grad():
        torch.testing.assert_close(model(noisy, entities).scores, model(mentions, entities).scores)


def test_same_seed_same_model_and_different_seed_differs(corpus, batches):
    mentions, entities = batches
    a, _ = build_tiny_model(tiny_clip(), tiny_mmoe(), corpus, seed=5)
    b, _ = build_tiny_model(tiny_clip(), tiny_mmoe(), corpus, seed=5)
    c, _ = build_tiny_model(tiny_clip(), tiny_mmoe(), corpus, seed=6)
    with torch.no_grad():
        sa, sb, sc = (m(mentions, entities).scores for m in (a, b, c))
    assert torch.equal(sa, sb)
    assert not torch.allclose(sa, sc)


def test_bf16_autocast_runs_on_cpu(tiny_model, batches):
    model, _ = tiny_model
    mentions, entities = batches
    with torch.no_grad():
        exact = model(mentions, entities).scores
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(mentions, entities).scores
    assert low.shape == exact.shape and torch.isfinite(low).all()
    assert torch.corrcoef(torch.stack([low.float().flatten(), exact.flatten()]))[0, 1] > 0.9


def test_reference_gate_mode(corpus, batches):
    model, _ = build_tiny_model(tiny_clip(), tiny_mmoe(gate="reference"), corpus, seed=0)
    mentions, entities = batches
    with torch.no_grad():
        out = model(mentions, entities)
        side = model.encode(mentions, "mention")
        alone = model(select_rows(mentions, slice(1, 2)), entities).scores
    assert torch.isfinite(out.scores).all()
    assert (side.text.tokens_moe[:, 3:] == 0).all()  # positions 4.. of [cls; tokens] are zero
    assert (side.image.tokens_moe[:, 3:] == 0).all()
    assert not torch.allclose(alone, out.scores[1:2], atol=1e-4)  # features depend on the batch
    with pytest.raises(RuntimeError, match="gate='token'"):
        model.entity_cache(side)
    with pytest.raises(RuntimeError, match="gate='token'"):
        model.score_candidates(side, torch.zeros(B, 2, model.retrieval_dim), {})


def test_token_gate_keeps_late_positions(tiny_model, batches):
    model, _ = tiny_model
    with torch.no_grad():
        side = model.encode(batches[1], "mention")
    energy = side.text.tokens_moe.abs().sum(-1)  # [B,L]
    valid = side.text.mask
    assert valid[:, 3:].any() and (energy[valid] > 0).all()  # every real token, late ones included
    assert (side.image.tokens_moe[:, 3:].abs().sum(-1) > 0).all()
    # padded tokens run no expert at inference (every reader masks them): their rows are zero
    assert (~valid).any() and (energy[~valid] == 0).all()


def test_explain_helpers(tiny_model, batches):
    model, _ = tiny_model
    mentions, entities = batches
    with torch.no_grad():
        side = model.encode(mentions, "mention", return_gates=True)
        out = model(mentions, entities)
    usage = expert_usage(side)
    assert set(usage) == {"text_intra", "image_intra", "cross_text", "cross_image"}
    for layer in usage.values():
        assert sum(layer["share"]) == pytest.approx(1.0)
        assert len(layer["weight"]) == E
    parts = modality_contributions(out)
    torch.testing.assert_close(parts["text"] + parts["image"] + parts["cross"], out.scores)
    with pytest.raises(ValueError, match="return_gates"):
        expert_usage(model.encode(mentions, "mention"))


def test_records_without_image_share_one_vision_pass_at_inference(tiny_model, batches):
    model, _ = tiny_model
    mentions, _ = batches
    no_images = dict(mentions, image_mask=torch.tensor([False, True, False, False, True, False]))
    model.eval()
    pixels, row = model.features.distinct_images(no_images["pixel_values"], no_images["image_mask"])
    assert len(pixels) == 3 and row.tolist() == [0, 1, 0, 0, 2, 0]  # two images + one zero image
    with torch.no_grad():
        shared = model.backbone(no_images)
        model.features.train()  # training encodes every record
        assert model.features.distinct_images(pixels, no_images["image_mask"][:3])[1] is None
        plain = model.backbone(no_images)
        model.features.eval()
    for name in ("image_cls", "image_tokens", "text_cls", "text_tokens"):
        torch.testing.assert_close(getattr(shared, name), getattr(plain, name), atol=1e-6, rtol=1e-6)


def test_retrieval_vectors_and_cache_computed_apart_match_full_encoding(tiny_model, batches):
    """The system protocol's split: u_e without units 1-2, the rerank cache without unit 3."""
    model, _ = tiny_model
    _, entities = batches
    with torch.no_grad():
        full = model.encode(entities, "entity")
        f = model.backbone(entities)
        vectors, cache = model.entity_retrieval_vectors(f), model.entity_cache_of(f)
    assert torch.equal(vectors, model.retrieval_vectors(full))
    expected = model.entity_cache(full)
    assert set(cache) == set(expected) and all(torch.equal(cache[k], expected[k]) for k in cache)


def test_inference_shortcuts_for_records_without_image_keep_the_features(tiny_model, batches):
    """Eval mode shares the zero image's vision pass and expert passes, runs experts on routed tokens only (or
    stacked, for a small call) and both cross-unit directions in one MoE call; train mode (dropout 0, no
    capacity) encodes every record densely, with two cross-unit calls: the same features."""
    model, _ = tiny_model
    mentions, entities = batches
    no_images = dict(entities, image_mask=torch.tensor([False, True, False, False, True, False]))
    with torch.no_grad():
        model.eval()
        shared = model.encode(no_images, "entity")
        m = model.encode(mentions, "mention")
        model.train()
        plain = model.encode(no_images, "entity")
        m_plain = model.encode(mentions, "mention")
        model.eval()
        scores = model.score_shared(m, model.retrieval_vectors(shared), model.entity_cache(shared)).scores
        dense = model.score_shared(m_plain, model.retrieval_vectors(plain), model.entity_cache(plain)).scores
    torch.testing.assert_close(scores, dense)  # the scores the shortcuts exist for, padding skipped or not
    torch.testing.assert_close(model.retrieval_vectors(shared), model.retrieval_vectors(plain))
    mask = model.entity_cache(shared)["text_mask"]  # padded text queries are masked wherever they are read
    for key, value in model.entity_cache(shared).items():
        other = model.entity_cache(plain)[key]
        if key == "text_query":
            value, other = value[mask], other[mask]
        torch.testing.assert_close(value, other, msg=key)
