"""Model behaviour: a tiny MMoE overfits 16 mention/entity pairs with the paper's loss (Hits@1 = 1)."""

from __future__ import annotations

import torch

from mmoe.losses import mmoe_loss
from mmoe.metrics import gold_ranks, hits_and_mrr
from mmoe.pretrained import build_tiny_model
from tests.mmoe.helpers import make_pairs, tiny_clip, tiny_mmoe


def test_tiny_model_overfits_sixteen_pairs(corpus):
    torch.manual_seed(0)
    cfg = tiny_mmoe(aux_loss_weight=0.01)
    model, processor = build_tiny_model(tiny_clip(), cfg, corpus, seed=0)
    mentions, entities, images = make_pairs(16, seed=3)
    m_batch, e_batch = processor(mentions, images), processor(entities, images)
    labels = torch.arange(16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, eps=1e-4, weight_decay=1e-4)

    model.train()
    first_loss = None
    for _ in range(25):
        loss, parts = mmoe_loss(model(m_batch, e_batch), labels, cfg)
        first_loss = parts["total"] if first_loss is None else first_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    with torch.no_grad():  # evaluated through the retrieval + cache path, not the training path
        m, e = model.encode(m_batch, "mention"), model.encode(e_batch, "entity")
        scores = model.score_shared(m, model.retrieval_vectors(e), model.entity_cache(e)).scores
    metrics = hits_and_mrr(gold_ranks(scores, labels))
    assert parts["total"] < first_loss / 4
    assert metrics["hits@1"] == 1.0, metrics
    assert metrics["mrr"] == 1.0
