"""The selector `dme.selector` names, built from config (kept apart from the interface to avoid an import cycle)."""

from __future__ import annotations

from cluster.dme.selectors import NoneSelector, Selector

SELECTOR_NAMES = ("embedding", "llm", "none")


def check_dme_config(dme_cfg) -> None:
    """Raise ValueError naming the key for a selector, fallback or LLM endpoint that cannot work."""
    if dme_cfg.selector not in SELECTOR_NAMES:
        raise ValueError(f"dme.selector must be one of {SELECTOR_NAMES}, got {dme_cfg.selector!r}")
    if dme_cfg.fallback not in ("embedding", "none"):
        raise ValueError(f"dme.fallback must be 'embedding' or 'none', got {dme_cfg.fallback!r}")
    if dme_cfg.selector == "llm" and not dme_cfg.llm.url:
        raise ValueError("dme.selector=llm needs dme.llm.url (an OpenAI-compatible base URL, e.g. .../v1)")
    if dme_cfg.max_candidates < 1 or dme_cfg.candidates_top_n < 0:
        raise ValueError("dme.max_candidates must be >= 1 and dme.candidates_top_n >= 0")


def make_selector(dme_cfg, model=None, processor=None) -> Selector:
    """The selector named by `dme.selector`, with `dme.fallback` behind the LLM one.

    The embedding selector (and an embedding fallback) need the MMoE model and processor.
    """
    check_dme_config(dme_cfg)
    if dme_cfg.selector == "none":
        return NoneSelector()
    if dme_cfg.selector == "embedding":
        return _embedding(model, processor)
    from cluster.dme.llm_selector import LLMSelector

    fallback = NoneSelector() if dme_cfg.fallback == "none" else _embedding(model, processor)
    return LLMSelector(dme_cfg.llm, fallback=fallback)


def _embedding(model, processor) -> Selector:
    if model is None or processor is None:
        raise ValueError("the embedding selector needs the MMoE model and processor")
    from cluster.dme.embedding_selector import EmbeddingSelector

    return EmbeddingSelector(model, processor)
