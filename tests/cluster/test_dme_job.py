"""`run_dme` on real Ray over the built sample KB: the Parquet cache, reuse by kb_version, ANN candidates, LLM."""

from __future__ import annotations

import copy
import shutil

import polars as pl
import pytest

from cluster.dme.cache import CACHE_SCHEMA, cache_uri, read_cache, write_cache
from cluster.dme.enhance import load_descriptions
from cluster.dme.job import run_dme
from tests.cluster.dme_fake_llm import FakeLLM, Reply


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sample KB and models/init, built once for this module (small: the tests run several bulk passes)."""
    from cluster.config import load_config
    from kb_builder.build import build_kb
    from workers.model_store import resolve_model_dir

    tmp = tmp_path_factory.mktemp("dme_job")
    cfg = load_config(
        overrides=[
            f"storage.root={tmp / 'data'}",
            f"storage.cache_dir={tmp / 'cache'}",
            "kb.sample_entities=120",
            "kb.sample_mentions=150",
            "encoder.batch_size=32",
        ]
    )
    build_kb(cfg.kb, cfg.storage, progress=False)
    resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe)
    return cfg


@pytest.fixture
def kb(built, tmp_path):
    """A private copy of the built root per test: (cfg, storage, kb_version, mention table)."""
    from kb_builder.shards import read_manifest, read_mentions
    from kb_builder.storage import Storage

    cfg = copy.deepcopy(built)
    cfg.storage.root = str(tmp_path / "data")
    shutil.copytree(built.storage.root, cfg.storage.root)
    storage = Storage(cfg.storage)
    kb_version = str(read_manifest(storage, cfg.kb.name)["kb_version"])
    return cfg, storage, kb_version, read_mentions(storage, cfg.kb.name)


def test_bulk_job_writes_one_row_per_mention_and_reuses_fresh_rows(kb, ray_session):
    cfg, storage, kb_version, mentions = kb
    first = run_dme(cfg, progress=False)

    cache = read_cache(storage, cfg.kb.name)
    assert first.recomputed == mentions.height and first.reused == 0 and not first.ann
    assert cache.height == mentions.height and cache.schema == pl.Schema(CACHE_SCHEMA)
    assert sorted(cache["mention_id"].to_list()) == sorted(mentions["mention_id"].to_list())
    assert set(cache["kb_version"]) == {kb_version} and set(cache["selector"]) == {"embedding"}
    assert first.counters.total == mentions.height and first.counters.selected > 0
    assert cache_uri(storage, cfg.kb.name).endswith("dme/sample/selections.parquet")
    # A picked description is its entity's, and names-only candidates mean the entity shares the surface form.
    picked = cache.filter(pl.col("entity_id").is_not_null())
    assert picked.height == first.counters.selected and (picked["desc"] != "").all()
    summary = first.summary()
    assert "mentions/s" in summary and f"{mentions.height} recomputed" in summary

    again = run_dme(cfg, progress=False)
    assert again.recomputed == 0 and again.reused == mentions.height
    assert read_cache(storage, cfg.kb.name).equals(cache)

    # Rows from another KB version are stale: exactly those are recomputed.
    stale_ids = cache["mention_id"].head(10).to_list()
    aged = cache.with_columns(
        pl.when(pl.col("mention_id").is_in(stale_ids))
        .then(pl.lit("old"))
        .otherwise("kb_version")
        .alias("kb_version")
    )
    write_cache(storage, cfg.kb.name, aged)
    third = run_dme(cfg, progress=False)
    assert third.recomputed == 10 and third.reused == mentions.height - 10
    assert read_cache(storage, cfg.kb.name).equals(cache)

    descriptions = load_descriptions(storage, cfg.kb.name, kb_version=kb_version)
    assert len(descriptions) == mentions.height
    assert descriptions == dict(zip(cache["mention_id"], cache["desc"]))


def test_interrupted_run_resumes_and_none_selector_writes_empty_descriptions(
    kb, ray_session, capsys, monkeypatch
):
    from cluster.cli import main

    cfg, storage, _, mentions = kb
    with pytest.raises(FileNotFoundError, match="mel dme"):
        load_descriptions(storage, cfg.kb.name)
    assert load_descriptions(storage, cfg.kb.name, missing_ok=True) == {}
    cfg.dme.selector, cfg.encoder.batch_size = "none", 50

    # Interrupt the run after its first batch (Ctrl-C on the driver): what finished is kept ...
    def interrupt(self, n):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("kb_builder.progress.Progress.update", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_dme(cfg, progress=False)
    kept = read_cache(storage, cfg.kb.name)
    assert 50 <= kept.height < mentions.height and (kept["desc"] == "").all()

    # ... and `mel dme` resumes from it.
    main(
        [
            f"--set=storage.root={cfg.storage.root}",
            f"--set=storage.cache_dir={cfg.storage.cache_dir}",
            "--set=dme.selector=none",
            "dme",
        ]
    )
    summary = capsys.readouterr().out
    rest = mentions.height - kept.height
    assert f"{rest} recomputed, {kept.height} reused" in summary and f"disabled {rest}," in summary
    assert set(load_descriptions(storage, cfg.kb.name).values()) == {""}


def test_llm_selector_in_bulk_with_ann_candidates(kb, ray_session, monkeypatch):
    """Every mention gets ANN candidates from the Milvus index; the scripted LLM picks #1 or fails for some."""
    cfg, storage, kb_version, mentions = kb
    index_sample_kb(cfg, storage)
    monkeypatch.setenv("DME_TEST_KEY", "sk-bulk")
    failing = mentions["mention"][0]
    with FakeLLM({failing: [Reply(status=500)]}, default=Reply("1")) as llm:
        cfg.dme.selector, cfg.dme.fallback = "llm", "none"
        cfg.dme.llm.url, cfg.dme.llm.max_retries, cfg.dme.llm.backoff_s = llm.url, 1, 0.01
        cfg.dme.llm.api_key_env = "DME_TEST_KEY"  # reaches the Ray actors through their runtime_env
        report = run_dme(cfg, progress=False)
        served = sum(llm.calls.values())
        auth = {r["authorization"] for r in llm.requests}

    n_failing = mentions.filter(pl.col("mention") == failing).height
    assert report.ann and report.counters.no_candidates == 0
    assert report.counters.fell_back == {"http_500": n_failing}
    assert report.counters.selected == mentions.height - n_failing
    assert served == mentions.height + n_failing  # one retry per failing mention
    assert auth == {"Bearer sk-bulk"}
    cache = read_cache(storage, cfg.kb.name)
    assert set(cache["selector"]) == {"llm"} and cache.height == mentions.height
    failed = cache.filter(pl.col("reason") == "fallback:http_500")
    assert failed.height == n_failing and (failed["desc"] == "").all()


def index_sample_kb(cfg, storage) -> None:
    """Encode the entities with models/init and index them in the Milvus Lite file behind the alias."""
    from cluster.config import milvus_uri
    from kb_builder.shards import read_entities
    from workers.index_job import index_in_process
    from workers.milvus_store import MilvusStore
    from workers.model_store import resolve_model_dir

    model_dir = resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe)
    rows = read_entities(storage, cfg.kb.name).to_dicts()
    name = index_in_process(
        cfg.storage, cfg.encoder, cfg.milvus, milvus_uri(cfg), model_dir, f"{cfg.milvus.collection}_v1", rows
    )
    store = MilvusStore(cfg.milvus, milvus_uri(cfg))
    store.swap_alias(name)
    store.close(release_file=True)


def test_served_mention_text_equals_the_training_text_with_dme_on_and_off(kb, ray_session, tmp_path):
    """The mention text serving builds per request (cluster.serve.pipeline.MentionEncoder) is the text training
    read for that mention: with DME (the bulk job's description) and without (no description)."""
    from cluster.artifacts import write_mention_recipe
    from cluster.dme.enhance import dme_selections
    from cluster.serve.pipeline import MentionEncoder, MentionQuery, mention_texts
    from mmoe.texts import mention_text
    from workers.model_store import resolve_model_dir

    cfg, storage, kb_version, mentions = kb
    run_dme(cfg, progress=False)  # nothing indexed: candidates from names, embedding selector
    descriptions, recipe = dme_selections(cfg, storage)  # what training reads, and the recipe it records
    assert recipe == {"dme": True, "selector": "embedding", "kb_version": kb_version}
    model_dir = tmp_path / "model"
    shutil.copytree(resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe), model_dir)
    rows = mentions.head(40).to_dicts()
    items = [(r["mention"], r["context"] or "") for r in rows]

    write_mention_recipe(storage, str(model_dir), recipe)
    served = mention_texts(cfg, model_dir).build(items)
    trained = [mention_text(m, c, descriptions.get(r["mention_id"], "")) for (m, c), r in zip(items, rows)]
    assert [s.text for s in served] == trained
    assert sum(bool(descriptions.get(r["mention_id"])) for r in rows) > 0  # some texts carry a description
    assert all(s.dme_reason for s in served) and not any(s.fell_back for s in served)

    encoded = MentionEncoder(model_dir, texts=mention_texts(cfg, model_dir)).encode(
        [MentionQuery(m, c) for m, c in items[:4]]
    )
    assert all(e.dme_reason and 0 < e.dme_ms <= e.ms for e in encoded)

    write_mention_recipe(storage, str(model_dir), {**recipe, "dme": False})
    off = mention_texts(cfg, model_dir)
    assert not off.enabled
    assert [s.text for s in off.build(items)] == [mention_text(m, c) for m, c in items]
    assert MentionEncoder(model_dir, texts=off).encode([MentionQuery(*items[0])])[0].dme_reason == ""


def test_a_dme_trained_model_answers_say_how_dme_went(kb, ray_session, tmp_path):
    """`/link` answers of a DME-trained model carry `dme` (the outcome Prometheus counts by); without DME they
    carry none."""
    from cluster.artifacts import write_mention_recipe
    from cluster.dme.enhance import dme_selections
    from cluster.serve.metrics import dme_tags
    from cluster.serve.pipeline import Linker, MentionQuery
    from workers.model_store import resolve_model_dir

    cfg, storage, _, mentions = kb
    run_dme(cfg, progress=False)
    _, recipe = dme_selections(cfg, storage)
    index_sample_kb(cfg, storage)
    model_dir = tmp_path / "model"
    shutil.copytree(resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe), model_dir)
    queries = [MentionQuery(r["mention"], r["context"] or "") for r in mentions.head(6).to_dicts()]

    write_mention_recipe(storage, str(model_dir), recipe)
    answers = Linker.from_config(cfg, model_dir=model_dir).link(queries)
    assert all(a["dme"] in {"selected", "no_match", "no_candidates"} for a in answers)
    assert all(a["timings_ms"]["dme"] > 0 for a in answers)

    write_mention_recipe(storage, str(model_dir), {**recipe, "dme": False})
    answers = Linker.from_config(cfg, model_dir=model_dir).link(queries)
    assert not any("dme" in a or "dme" in a["timings_ms"] for a in answers)

    assert dme_tags("fallback:http_500") == {"outcome": "fallback", "why": "http_500"}
    assert dme_tags("selected") == {"outcome": "selected", "why": ""}
