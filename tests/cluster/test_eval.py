"""Evaluation protocols on the untrained tiny model (no training needed): (a) exhaustive and (b) Milvus top-K +
exact rerank give identical ranks when K covers the KB; a small K only loses mentions whose gold it missed;
DME on/off both reported when a DME cache exists; NIL threshold calibration."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch


@pytest.fixture
def kb(mel_config):
    from kb_builder.build import build_kb
    from kb_builder.storage import Storage
    from workers.model_store import resolve_model_dir

    build_kb(mel_config.kb, mel_config.storage, progress=False)
    model_dir = resolve_model_dir(mel_config.storage, mel_config.kb, mel_config.encoder, mel_config.mmoe)
    return mel_config, Storage(mel_config.storage), model_dir


def test_exhaustive_and_system_ranks_are_identical_when_k_covers_the_kb(kb):
    from cluster.evaluate.features import encode_entities
    from cluster.evaluate.index import ensure_eval_index
    from cluster.evaluate.protocols import exhaustive_ranks, system_ranks
    from cluster.inputs import BatchBuilder, entity_rows, linked_mentions
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    cfg, storage, model_dir = kb
    model, processor = load_pretrained(model_dir)
    builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []))
    rows = linked_mentions(storage, cfg.kb.name, "test")[0].to_dicts()
    entities = encode_entities(model, builder, entity_rows(storage, cfg.kb.name), 32)
    store, collection, cache = ensure_eval_index(cfg, storage, model_dir, entities)
    try:
        a = exhaustive_ranks(model, builder, rows, entities, batch_size=16, entity_chunk=50)  # 3 chunks
        full = system_ranks(model, builder, rows, store, collection, cache, len(entities.ids), 16)
        small = system_ranks(model, builder, rows, store, collection, cache, 5, 16)
    finally:
        store.close(release_file=True)
    assert torch.equal(a.ranks, full.ranks) and bool(full.retrieved.all())
    assert a.top_ids == full.top_ids
    # K=5: retrieved golds keep a rank <= their exhaustive one among the 5; the others count as missed (K+1)
    assert bool((small.ranks[small.retrieved] <= 5).all())
    assert bool((small.ranks[~small.retrieved] == 6).all())
    assert (small.ranks == 1).sum() <= (a.ranks == 1).sum() + int((~small.retrieved).sum())


def test_run_eval_reports_dme_on_and_off_and_writes_calibration(kb):
    from cluster.evaluate.run import run_eval

    cfg, storage, model_dir = kb
    _write_oracle_dme(cfg, storage)
    cfg.eval.retrieve_k = 10
    report = run_eval(cfg, split="test")
    assert set(report.tables) == {"exhaustive", "system", "exhaustive (DME off)", "system (DME off)"}
    assert report.mentions + report.nil_skipped == 60  # the 120/400 sample KB has 60 test mentions
    for name, metrics in report.tables.items():
        assert metrics["count"] == report.mentions, name
        assert 0.0 <= metrics["hits@1"] <= metrics["hits@3"] <= metrics["hits@20"] <= 1.0
    assert 0.0 < report.recall_at_k["system"] <= 1.0
    calibration = json.loads((model_dir / "calibration.json").read_text())
    assert 0.0 <= calibration["nil_threshold"] <= 1.0 and calibration["nil_threshold_unit"] == "confidence"
    assert calibration["temperature"] > 0 and calibration["candidates_k"] == cfg.serve.top_k
    assert calibration["ece_after"] <= calibration["ece_before"] + 1e-6  # fitted on these very dev scores
    png = [u for u in report.report_uris if u.endswith("reliability.png")]
    assert len(png) == 1 and storage.read_bytes(png[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "DME off" in report.summary() and "ECE" in report.summary()


def _write_oracle_dme(
    cfg, storage, selector: str = "embedding", kb_version: str | None = None
) -> pl.DataFrame:
    """An oracle DME cache (the gold description) for dev and test, as `mel dme` would write it."""
    from cluster.dme.cache import write_cache
    from cluster.inputs import linked_mentions
    from kb_builder.shards import read_manifest

    version = kb_version or str(read_manifest(storage, cfg.kb.name)["kb_version"])
    mentions = pl.concat([linked_mentions(storage, cfg.kb.name, s)[0] for s in ("dev", "test")])
    desc = mentions["entity_description"].fill_null("")
    frame = pl.DataFrame(
        {
            "mention_id": mentions["mention_id"],
            "kb_version": version,
            "selector": selector,
            "entity_id": mentions["gold_entity_id"],
            "desc": desc,
            "reason": "selected",
        }
    )
    write_cache(storage, cfg.kb.name, frame)
    return frame


def test_one_dme_reader_honours_kb_version_selector_and_the_model_recipe(kb):
    from cluster.dme.enhance import dme_selections

    cfg, storage, _ = kb
    _write_oracle_dme(cfg, storage, kb_version="an-older-kb")
    assert dme_selections(cfg, storage)[0] == {}  # stale: computed against another KB version
    frame = _write_oracle_dme(cfg, storage, selector="llm")
    assert dme_selections(cfg, storage)[0] == {}  # stale: another selector than dme.selector
    descriptions, recipe = dme_selections(cfg, storage, {"dme": True, "selector": "llm", "kb_version": "x"})
    assert descriptions == dict(zip(frame["mention_id"], frame["desc"])) and recipe["selector"] == "llm"
    assert recipe["dme"] is True and recipe["kb_version"] != "x"  # the current KB's version
    off, recipe = dme_selections(cfg, storage, {"dme": False, "selector": "llm", "kb_version": "x"})
    assert off == {} and recipe["dme"] is False  # a model trained without DME is evaluated without it


def test_nil_threshold_maximises_link_vs_nil_accuracy():
    from cluster.evaluate.calibration import fit_nil_threshold as nil_threshold

    linked_top = torch.tensor([5.0, 6.0, 7.0, 2.5])
    gold = torch.tensor([5.0, 6.0, float("nan"), 2.5])
    nil_top = torch.tensor([1.0, 2.0, 3.0, 3.5])
    out = nil_threshold(linked_top, gold, nil_top)  # t=5: 3 of 4 linked kept, all 4 NIL caught
    assert out["nil_threshold"] == 5.0 and out["accuracy"] == pytest.approx(7 / 8)
    no_nil = nil_threshold(linked_top, gold, torch.zeros(0))
    assert no_nil["nil_threshold"] == pytest.approx(
        float(torch.quantile(torch.tensor([5.0, 6.0, 2.5]), 0.05))
    )


def test_temperature_and_nil_logit_are_recovered_and_calibrate():
    """Labels drawn from softmax([s / 4, 10]) over 5 candidates + NIL, half the mentions scoring 12 lower (mostly
    NIL): the fit finds T ~ 4 and b ~ 10, the calibrated confidences have a far lower ECE than the raw softmax
    (T = 1 is badly overconfident), and the NIL threshold on confidence catches the low-scoring NILs."""
    from cluster.evaluate.calibration import calibrate_confidence

    gen = torch.Generator().manual_seed(0)
    m, k = 4000, 5
    shift = torch.where(torch.arange(m) % 2 == 0, 0.0, -12.0)[:, None]
    scores = (40 + shift + 4 * torch.randn(m, k, generator=gen)).sort(dim=1, descending=True).values
    logits = torch.cat([scores / 4.0, torch.full((m, 1), 10.0)], dim=1)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
    is_nil = labels == k
    gold = torch.where(is_nil, torch.full_like(labels, -1), labels)
    out = calibrate_confidence(scores, gold, is_nil)
    assert out["temperature"] == pytest.approx(4.0, rel=0.1) and out["nil_logit"] == pytest.approx(
        10.0, abs=0.6
    )
    assert out["ece_after"] < 0.03 < 0.1 < out["ece_before"]
    assert 0.0 < out["nil_threshold"] < 1.0 and out["nil_threshold_unit"] == "confidence"
    assert out["nil_precision"] > 0.7 and out["nil_recall"] > 0.7
    assert sum(b["count"] for b in out["reliability_after"]) == m
