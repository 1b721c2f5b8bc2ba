"""The paper's exhaustive protocol on the official tiles (cluster.paper.protocol), on a tiny random model in memory.

The tiled path reproduces the cached exhaustive protocol exactly for the token gate (its features do not depend
on the batch); for the reference gate it gives finite ranks that change with the tile sizes, because the official
gate normalises over the batch (see also tests/mmoe/test_model.py::test_reference_gate_mode).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cluster.evaluate.reference import (
    entity_backbone,
    reference_exhaustive_metrics,
    reference_exhaustive_ranks,
    tile_scores,
)
from cluster.inputs import BatchBuilder
from cluster.paper.protocol import MemoryMeter

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
N_ENTITIES, N_MENTIONS = 12, 9


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # two cores shared with other suites


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Entity and mention rows with small PNGs; mention i links to entity (i * 5) % 12."""
    root = tmp_path_factory.mktemp("paper_protocol")
    rng = np.random.default_rng(0)

    def png(name: str) -> str:
        path = root / name
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        return str(path)

    entities = [
        {
            "entity_id": f"Q{i}",
            "name": f"{WORDS[i]} {WORDS[(i + 3) % len(WORDS)]}",
            "description": f"{WORDS[(i + 5) % len(WORDS)]} of {WORDS[(i + 7) % len(WORDS)]}",
            "image_uris": [png(f"e{i}.png")] if i % 4 else [],
        }
        for i in range(N_ENTITIES)
    ]
    mentions = [
        {
            "mention_id": f"m{i}",
            "mention": WORDS[(i * 5) % N_ENTITIES],
            "gold_entity_id": f"Q{(i * 5) % 12}",
            "context": f"{WORDS[i]} saw {WORDS[(i * 5) % N_ENTITIES]} near {WORDS[(i + 2) % len(WORDS)]}",
            "image_uri": png(f"m{i}.png") if i % 3 else None,
        }
        for i in range(N_MENTIONS)
    ]
    return root, entities, mentions


def _model(data, gate: str):
    from cluster.config import load_config
    from mmoe.config import MMoEConfig
    from mmoe.pretrained import build_tiny_model
    from tests.mmoe.helpers import tiny_clip
    from workers.images import ImageLoader

    root, entities, mentions = data
    tiny = tiny_clip()
    corpus = [e["name"] + " " + e["description"] for e in entities] + [m["context"] for m in mentions]
    model, processor = build_tiny_model(
        tiny, MMoEConfig(dim=16, top_k=2, text_max_tokens=17, gate=gate), corpus
    )
    cfg = load_config(overrides=[f"storage.root={root}"])
    return model, BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, [str(root)]))


@pytest.fixture(scope="module")
def token(data):
    return _model(data, "token")


@pytest.fixture(scope="module")
def reference(data):
    return _model(data, "reference")


@pytest.mark.parametrize("gate", ["token", "reference"])
def test_cached_backbone_plus_match_features_equals_encode(data, token, reference, gate):
    model, builder = token if gate == "token" else reference
    inputs = builder.entities(data[1][:6])
    with torch.no_grad():
        direct_m, direct_e = model.encode(inputs, "mention"), model.encode(inputs, "entity")
        split_m = model.match_features(model.backbone(inputs), "mention")
        split = model.match_features(model.backbone(inputs), "entity")
        direct = direct_e
        scores = model.score(direct_m, direct_e).scores
        scores_split = model.score(split_m, split).scores
    assert inputs["image_mask"].tolist() == [False, True, True, True, False, True]  # images really load
    torch.testing.assert_close(model.retrieval_vectors(split), model.retrieval_vectors(direct))
    torch.testing.assert_close(split.text.tokens_moe, direct.text.tokens_moe)
    torch.testing.assert_close(scores_split, scores)


def test_tiles_reproduce_the_cached_exhaustive_protocol_for_the_token_gate(data, token):
    from cluster.evaluate.features import encode_entities
    from cluster.evaluate.protocols import exhaustive_ranks

    _, entities, mentions = data
    model, builder = token
    cached = exhaustive_ranks(
        model, builder, mentions, encode_entities(model, builder, entities, 8), 4, 5
    ).ranks
    tiled = reference_exhaustive_ranks(
        model, builder, mentions, entities, batch_size=8, mention_tile=4, entity_tile=5
    )  # 3 mention tiles x 3 entity tiles, uneven last ones
    assert tiled.tolist() == cached.tolist()
    assert len(tiled) == N_MENTIONS and bool(((tiled >= 1) & (tiled <= N_ENTITIES)).all())


def test_reference_gate_ranks_are_finite_and_depend_on_the_tiles(data, reference):
    from cluster.config import EvalConfig

    _, entities, mentions = data
    model, builder = reference
    with pytest.raises(RuntimeError, match="gate='token'"):  # the cached protocols refuse the official gate
        with torch.no_grad():
            model.entity_cache(model.encode(builder.entities(entities[:2]), "entity"))
    with torch.no_grad():
        backbone = entity_backbone(model, builder, entities, batch_size=5)

        def scores(mention_tile: int, entity_tile: int) -> torch.Tensor:
            return torch.cat(
                [s for _, s in tile_scores(model, builder, mentions, backbone, mention_tile, entity_tile)]
            )

        whole = scores(N_MENTIONS, N_ENTITIES)  # one tile: every record sees the same batch
        small = scores(3, 4)
    assert whole.shape == small.shape == (N_MENTIONS, N_ENTITIES)
    assert torch.isfinite(whole).all() and torch.isfinite(small).all()
    assert not torch.allclose(whole, small, atol=1e-4)  # batch-normalised gates: features depend on the tile
    metrics = reference_exhaustive_metrics(model, builder, mentions, entities, EvalConfig(batch_size=5))
    assert metrics["count"] == N_MENTIONS
    assert all(np.isfinite(v) for v in metrics.values()) and 0 < metrics["mrr"] <= 1
    assert 1 <= metrics["mean_rank"] <= N_ENTITIES and metrics["hits@20"] == 1.0


def test_memory_meter_reports_rss_and_no_cuda_on_cpu():
    with MemoryMeter("cpu") as meter:
        block = torch.ones(4 * 2**20)  # 16 MiB, touched
        block += 1
    assert meter.start_rss_mib > 0 and meter.peak_rss_mib >= meter.start_rss_mib
    assert meter.cuda_max_allocated_mib is None
