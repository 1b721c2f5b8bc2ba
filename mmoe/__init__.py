"""MMoE: multi-level mixture of experts for multimodal entity linking (Hu et al., KDD 2025, arXiv 2507.07108).

Pure PyTorch + transformers; no Ray, Milvus, polars or boto3; local paths only. Parts, in build order
(sections of the shared MMoE reference, reference/mmoe.md):

- ``config``     MMoEConfig, TinyCLIPConfig (official WikiMEL defaults)
- ``texts``      mention / entity text templates                          (section 1, inputs as text)
- ``processor``  MMoEProcessor: tokenizer + image processor, fixed length  (section 1, backbone)
- ``features``   CLIP features: text_cls, text/image tokens, image_cls     (section 1, features per record)
- ``experts``    Expert, TokenGate, ReferenceGate, SwitchMoE               (section 1 switch MoE; section 2 gate)
- ``intra``      text and vision intra-level MoE units (g2l)               (section 1, units 1-2)
- ``inter``      cross-modal inter-level MoE unit                          (section 1, unit 3)
- ``model``      MMoEModel: encode, retrieval_vectors, entity_cache, score_* (section 1.4 and section 2)
- ``losses``     mmoe_loss                                                 (section 1, losses)
- ``metrics``    gold_ranks, hits_and_mrr, exhaustive_ranks                (section 1, evaluation)
- ``explain``    expert usage per level/modality, score breakdown
- ``pretrained`` save_pretrained, load_pretrained, build_tiny_model, build_from_clip

Deviations from the official code (each explained where it lives): a per-token gate (``experts``), padding
masks (``intra``, ``inter``, ``experts``), no batch-normalised gates (``experts``), a symmetric tanh gate in
the cross unit (``inter``; reference mode keeps the official mention/entity asymmetry), duplicate-gold masking in the loss (``losses``). ``gate: reference`` reproduces
the official gate for the paper's exhaustive protocol only.

Usage::

    model, processor = load_pretrained("runs/mmoe/best")                # or build_tiny_model(tiny, cfg, corpus)
    e = model.encode(processor(entity_texts, entity_images), "entity")          # once per KB shard
    vectors, cache = model.retrieval_vectors(e), model.entity_cache(e)  # -> Milvus (IP) + feature cache
    m = model.encode(processor(mention_texts, mention_images), "mention", return_gates=True)
    # retrieve top-K by <u_m, u_e> in the index, then the exact score of those K:
    out = model.score_candidates(m, vectors[top_k_ids], {k: v[top_k_ids] for k, v in cache.items()})
    out.scores, out.text, out.image, out.cross, expert_usage(m)          # [B,K] each; gate summary
"""

import importlib

# Lazy exports (PEP 562): `import mmoe.config` (done by cluster.config at `mel --help`) must not pull in
# torch or transformers.
_EXPORTS = {
    "MMoEConfig": "mmoe.config",
    "TinyCLIPConfig": "mmoe.config",
    "expert_usage": "mmoe.explain",
    "modality_contributions": "mmoe.explain",
    "mmoe_loss": "mmoe.losses",
    "exhaustive_ranks": "mmoe.metrics",
    "gold_ranks": "mmoe.metrics",
    "hits_and_mrr": "mmoe.metrics",
    "MMoEModel": "mmoe.model",
    "ScoreOutput": "mmoe.model",
    "SideFeatures": "mmoe.model",
    "select_rows": "mmoe.model",
    "build_from_clip": "mmoe.pretrained",
    "build_tiny_model": "mmoe.pretrained",
    "load_pretrained": "mmoe.pretrained",
    "save_pretrained": "mmoe.pretrained",
    "MMoEProcessor": "mmoe.processor",
    "entity_text": "mmoe.texts",
    "mention_text": "mmoe.texts",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmoe' has no attribute {name!r}")


__all__ = [
    "MMoEConfig",
    "MMoEModel",
    "MMoEProcessor",
    "ScoreOutput",
    "SideFeatures",
    "TinyCLIPConfig",
    "build_from_clip",
    "build_tiny_model",
    "entity_text",
    "exhaustive_ranks",
    "expert_usage",
    "gold_ranks",
    "hits_and_mrr",
    "load_pretrained",
    "mention_text",
    "mmoe_loss",
    "modality_contributions",
    "save_pretrained",
    "select_rows",
]
