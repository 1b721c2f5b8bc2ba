"""Where the rest of the system reads DME: cached descriptions for training/eval, one mention for serving.

`load_descriptions` is the one function training and evaluation need (DME on: pass the dict's value as
`desc` to `mmoe.texts.mention_text`; DME off: pass ""). `enhance_mention` computes DME for one request within
a latency budget: an LLM call is cut at the remaining budget and the configured fallback answers instead.
"""

from __future__ import annotations

import time

from cluster.dme.cache import cache_uri, read_cache
from cluster.dme.candidates import Candidate, CandidateFinder
from cluster.dme.selectors import Selection, Selector


def load_descriptions(
    storage,
    kb_name: str,
    kb_version: str | None = None,
    missing_ok: bool = False,
    selector: str | None = None,
) -> dict[str, str]:
    """mention_id -> chosen description from `<root>/dme/<kb_name>/selections.parquet`.

    `kb_version` / `selector` keep only rows computed for that KB version and by that selector (None: all
    rows), so descriptions chosen against an older KB or by another selector are not used. Mentions absent
    from the result have no description: read them with `.get(mention_id, "")`. Without a cache: {} if
    `missing_ok`, else FileNotFoundError naming the fix.
    """
    if not storage.exists(cache_uri(storage, kb_name)):
        if missing_ok:
            return {}
        raise FileNotFoundError(f"no DME cache at {cache_uri(storage, kb_name)}: run `mel dme` first")
    frame = read_cache(storage, kb_name)
    if kb_version is not None:
        frame = frame.filter(frame["kb_version"] == kb_version)
    if selector is not None:
        frame = frame.filter(frame["selector"] == selector)
    return dict(zip(frame["mention_id"].to_list(), frame["desc"].fill_null("").to_list()))


def dme_selections(cfg, storage, recipe: dict | None = None) -> tuple[dict[str, str], dict]:
    """The one reader training, evaluation and bench-paper use: (mention_id -> desc, mention-text recipe).

    Only rows of the current KB version and of the configured `dme.selector` count (stale ones are ignored,
    `mel dme` recomputes them). The recipe {"dme", "selector", "kb_version"} says how mention text was built;
    training stores it beside the model (`cluster.artifacts.write_mention_recipe`). Given a model's `recipe`,
    its DME choice and selector win over the config, so the model sees text built the way it was trained.
    """
    from kb_builder.shards import read_manifest

    kb_version = str(read_manifest(storage, cfg.kb.name)["kb_version"])
    selector = recipe["selector"] if recipe else cfg.dme.selector
    descriptions = {}
    if selector != "none" and (recipe is None or recipe.get("dme")):
        descriptions = load_descriptions(storage, cfg.kb.name, kb_version, missing_ok=True, selector=selector)
    recipe = {"dme": bool(descriptions), "selector": selector, "kb_version": kb_version}
    return descriptions, recipe


def select_within_budget(
    mention: str, context: str, candidates: list[Candidate], selector: Selector, budget_ms: float
) -> Selection:
    """One selection; an LLM selector never waits past `budget_ms` (it falls back, reason `budget`)."""
    from cluster.dme.llm_selector import LLMSelector

    if isinstance(selector, LLMSelector):
        deadline = time.monotonic() + budget_ms / 1000.0
        return selector.select_many([(mention, context, candidates)], deadline=deadline)[0]
    return selector.select(mention, context, candidates)


def enhance_mention(
    mention: str, context: str, candidates: list[Candidate], selector: Selector, budget_ms: float
) -> str:
    """The description to append to a mention at request time ("" when none fits or DME is off)."""
    return select_within_budget(mention, context, candidates, selector, budget_ms).desc


class OnlineDME:
    """Serving-side DME: candidates (names + optional ANN) and a selector, behind one call per mention."""

    def __init__(self, finder: CandidateFinder, selector: Selector, budget_ms: float):
        self.finder = finder
        self.selector = selector
        self.budget_ms = budget_ms

    def enhance(self, mention: str, context: str, vector=None) -> str:
        """`vector` is the mention's retrieval vector [D] for the ANN candidates (None: name matches only)."""
        start = time.monotonic()
        vectors = None if vector is None else vector.reshape(1, -1)
        candidates = self.finder.find([mention], vectors)[0]
        spent_ms = (time.monotonic() - start) * 1000.0
        return enhance_mention(
            mention, context, candidates, self.selector, max(self.budget_ms - spent_ms, 0.0)
        )
