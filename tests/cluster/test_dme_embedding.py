"""The offline `embedding` selector on the sample KB, the `none` selector, and the serving-time budget."""

from __future__ import annotations

import json

import pytest

from cluster.config import DMEConfig, DMELLMConfig
from cluster.dme.candidates import Candidate
from cluster.dme.embedding_selector import EmbeddingSelector
from cluster.dme.enhance import enhance_mention, select_within_budget
from cluster.dme.factory import make_selector
from cluster.dme.llm_selector import LLMSelector
from cluster.dme.selectors import NoneSelector
from tests.cluster.dme_fake_llm import FakeLLM, Reply


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """Sample KB sources and an untrained tiny model whose tokenizer knows their words."""
    from cluster.config import load_config
    from kb_builder.sample_kb import write_sample_kb
    from mmoe.pretrained import build_tiny_model
    from mmoe.texts import entity_text, mention_text

    out = tmp_path_factory.mktemp("dme_sample")
    write_sample_kb(out, n_entities=120, n_mentions=400)
    entities = [json.loads(line) for line in open(out / "entities.jsonl", encoding="utf-8")]
    mentions = [json.loads(line) for line in open(out / "mentions.jsonl", encoding="utf-8")]
    cfg = load_config()
    corpus = [entity_text(e["name"], e["description"]) for e in entities]
    corpus += [mention_text(m["mention"], m["sentence"]) for m in mentions]
    model, processor = build_tiny_model(cfg.encoder.tiny, cfg.mmoe, corpus, seed=0)
    return entities, mentions, model, processor


def ambiguous_cases(entities, mentions):
    """(mention, gold entity, candidates = every entity sharing the gold's name) for ambiguous mentions."""
    by_name: dict[str, list[dict]] = {}
    for e in entities:
        by_name.setdefault(e["name"], []).append(e)
    by_id = {e["id"]: e for e in entities}
    for m in mentions:
        gold = by_id.get(m["answer"])
        if gold is None or m["mention"] != gold["name"] or len(by_name[gold["name"]]) < 2:
            continue
        yield m, gold, [Candidate(e["id"], e["name"], e["description"]) for e in by_name[gold["name"]]]


def test_embedding_selector_picks_the_gold_description_on_clear_cases(sample):
    entities, mentions, model, processor = sample
    # Clear case: the sentence repeats the gold description's first sentence (type, place, field), so even
    # an untrained encoder sees nearly the same tokens on both sides. Candidates share the mention's name.
    cases = list(ambiguous_cases(entities, mentions))
    items = [
        (m["mention"], gold["description"].split(". ")[0] + ". Photo taken at night.", c)
        for m, gold, c in cases
    ]
    selector = EmbeddingSelector(model, processor, batch_size=32)
    picks = selector.select_many(items)

    assert len(cases) >= 50
    hits = sum(p.entity_id(c) == gold["id"] for p, (_, gold, c) in zip(picks, cases))
    chance = sum(1 / len(c) for _, _, c in cases)
    assert hits / len(cases) >= 0.85, (hits, len(cases))
    assert hits > 2 * chance
    assert all(p.desc == c[p.index].description for p, (_, _, c) in zip(picks, cases))
    assert selector.counters.selected == len(cases)


def test_embedding_selector_is_deterministic_and_counts_empty_candidate_lists(sample):
    _, _, model, processor = sample
    selector = EmbeddingSelector(model, processor)
    candidates = [
        Candidate("A", "Kato", "a river of the north"),
        Candidate("B", "Kato", "a painter of the south"),
    ]
    first = selector.select("Kato", "the painter of the south paints", candidates)
    again = selector.select("Kato", "the painter of the south paints", list(candidates))
    empty = selector.select("Kato", "anything", [])
    assert first == again and first.index in (0, 1)
    assert empty.index is None and empty.desc == "" and empty.reason == "no_candidates"
    assert selector.counters.no_candidates == 1 and selector.counters.selected == 2


def test_none_selector_gives_empty_descriptions():
    selector = make_selector(DMEConfig(selector="none"))
    candidates = [Candidate("A", "Kato", "a river")]
    picks = selector.select_many([("Kato", "ctx", candidates), ("Kato", "ctx", [])])
    assert [p.desc for p in picks] == ["", ""] and all(p.index is None for p in picks)
    assert enhance_mention("Kato", "ctx", candidates, selector, budget_ms=50.0) == ""
    assert selector.counters.disabled == 3


def test_make_selector_validates_names_and_needs_the_model_for_embedding():
    with pytest.raises(ValueError, match="dme.selector"):
        make_selector(DMEConfig(selector="gpt"))
    with pytest.raises(ValueError, match="model"):
        make_selector(DMEConfig(selector="embedding"))
    with pytest.raises(ValueError, match="dme.llm.url"):
        make_selector(DMEConfig(selector="llm", fallback="none"))
    with pytest.raises(ValueError, match="dme.fallback"):
        make_selector(
            DMEConfig(selector="llm", fallback="llm", llm=DMELLMConfig(url="http://127.0.0.1:9/v1"))
        )
    llm = make_selector(
        DMEConfig(selector="llm", fallback="none", llm=DMELLMConfig(url="http://127.0.0.1:9/v1"))
    )
    assert isinstance(llm, LLMSelector) and isinstance(llm.fallback, NoneSelector)


def test_enhance_mention_falls_back_to_embedding_when_the_llm_exceeds_the_budget(sample):
    _, _, model, processor = sample
    candidates = [
        Candidate("A", "Kato", "a river of the north"),
        Candidate("B", "Kato", "a painter of the south"),
    ]
    embedding_pick = EmbeddingSelector(model, processor).select(
        "Kato", "the painter of the south", candidates
    )
    script = {"Kato": [Reply("1", delay_s=3.0)], "Lumi": [Reply("2")]}
    with FakeLLM(script) as llm:
        dme = DMEConfig(selector="llm", fallback="embedding", llm=DMELLMConfig(url=llm.url, timeout_s=20.0))
        selector = make_selector(dme, model, processor)
        slow = select_within_budget("Kato", "the painter of the south", candidates, selector, budget_ms=150.0)
        fast = enhance_mention("Lumi", "the painter of the south", candidates, selector, budget_ms=10_000.0)
    assert slow.reason == "fallback:budget"
    assert (slow.index, slow.desc) == (embedding_pick.index, embedding_pick.desc)
    assert fast == candidates[1].description
    assert selector.counters.fell_back["budget"] == 1 and selector.counters.selected == 1


def test_text_only_embedding_equals_the_models_text_cls(sample):
    import torch

    from cluster.dme.embedding_selector import text_embedding

    _, mentions, model, processor = sample
    texts = [m["sentence"] for m in mentions[:6]]
    batch = processor(texts, [None] * len(texts))
    with torch.no_grad():
        assert torch.allclose(
            text_embedding(model, batch), model.encode(batch, "mention").text_cls, atol=1e-5
        )
