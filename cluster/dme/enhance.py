"""Where the rest of the system reads DME: cached descriptions for training/eval, one mention for serving.

`load_descriptions` is the one function training and evaluation need (DME on: pass the dict's value as
`desc` to `mmoe.texts.mention_text`; DME off: pass ""). `MentionTexts` builds a served mention's text the way
the served model was trained (its recorded recipe), running DME per request within `dme.latency_budget_ms`:
an LLM call is cut at the budget and the configured fallback answers instead.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.dme.cache import cache_uri, read_cache
from cluster.dme.candidates import Candidate
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


@dataclass
class MentionText:
    """One served mention's text, and how DME went for it ("" reason: the model was trained without DME)."""

    text: str
    dme_reason: str = ""

    @property
    def fell_back(self) -> bool:
        return self.dme_reason.startswith("fallback:")


class MentionTexts:
    """`mention [SEP] context [SEP] desc` for served mentions, the way the served model's training built it.

    A model trained with DME (its `mention_text.json` says so) gets a description chosen per request by the
    bulk job's own worker (same selector, same candidate finder), so the text served for a mention equals the
    text training read for it; a model trained without DME (or from before the recipe) gets none.
    """

    def __init__(self, worker=None, budget_ms: float = 0.0):
        self.worker = worker  # cluster.dme.worker.DMEWorker, or None: DME off
        self.budget_ms = budget_ms

    @classmethod
    def for_model(cls, cfg, model_dir: str | Path, milvus_uri: str = "") -> MentionTexts:
        """DME as the model at `model_dir` was trained; `milvus_uri` "" keeps candidates to names and aliases."""
        from cluster.artifacts import read_mention_recipe
        from cluster.dme.worker import DMEWorker

        recipe = read_mention_recipe(model_dir) or {}
        if not recipe.get("dme") or recipe.get("selector", "none") == "none":
            return cls()
        dme_cfg = copy.deepcopy(cfg)
        dme_cfg.dme.selector = recipe["selector"]  # the model's recipe wins over the config, as in `mel eval`
        worker = DMEWorker(dme_cfg, str(recipe.get("kb_version", "")), milvus_uri)
        return cls(worker, cfg.dme.latency_budget_ms)

    @property
    def enabled(self) -> bool:
        return self.worker is not None

    def build(self, items: list[tuple[str, str]]) -> list[MentionText]:
        """(mention, context) pairs -> their texts; DME, when on, within the latency budget."""
        from mmoe.texts import mention_text

        if self.worker is None:
            return [MentionText(mention_text(m, c)) for m, c in items]
        rows = [{"mention": m, "context": c} for m, c in items]
        deadline = time.monotonic() + self.budget_ms / 1000.0
        _, selections = self.worker.select(rows, deadline=deadline)
        return [MentionText(mention_text(m, c, s.desc), s.reason) for (m, c), s in zip(items, selections)]
