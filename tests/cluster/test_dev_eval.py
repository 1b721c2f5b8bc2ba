"""Dev evaluation during training (cluster.evaluate.dev) on the sample KB and the untrained tiny model:
the system protocol (inner-product top-K + exact rerank) against the exhaustive one, and two gloo ranks
sharing the work against one process."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from tests.fixtures import free_port


@pytest.fixture
def dev(sample_kb):
    from cluster.inputs import entity_rows, linked_mentions

    cfg, storage, model_dir = sample_kb
    rows = linked_mentions(storage, cfg.kb.name, "dev")[0].to_dicts()
    return cfg, model_dir, rows, entity_rows(storage, cfg.kb.name)


def _metrics(cfg, model_dir, rows, entities, protocol, rank=0, world=1):
    from cluster.evaluate.dev import dev_metrics
    from cluster.inputs import BatchBuilder
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    torch.set_num_threads(1)
    model, processor = load_pretrained(model_dir)
    builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []))
    return dev_metrics(model, builder, rows, entities, cfg.eval, protocol, rank, world)


def test_system_dev_protocol_agrees_with_exhaustive(dev):
    cfg, model_dir, rows, entities = dev
    cfg.eval.retrieve_k = 20  # K well below the 120 entities
    exhaustive = _metrics(cfg, model_dir, rows, entities, "exhaustive")
    system = _metrics(cfg, model_dir, rows, entities, "system")
    assert system["count"] == exhaustive["count"] == len(rows) > 0
    assert system["hits@1"] == exhaustive["hits@1"]
    assert set(system) >= {"recall@20", "hits@20"} and "hits@50" not in system
    # Golds the exhaustive protocol ranks beyond K add less than 1/(K+1) each to its MRR; the system protocol
    # counts them as misses (0). Inside K both rank alike, so the MRRs differ by at most that much.
    assert system["hits@20"] == exhaustive["hits@20"] and system["recall@20"] >= exhaustive["hits@20"]
    assert abs(system["mrr"] - exhaustive["mrr"]) <= (1 - exhaustive["hits@20"]) / 21 + 1e-9
    cfg.eval.retrieve_k = len(entities)  # K covering the KB: both protocols rank alike
    assert _metrics(cfg, model_dir, rows, entities, "system")["mrr"] == pytest.approx(exhaustive["mrr"])


def test_system_ranks_from_retrieved_caches_equal_ranks_on_every_entitys_cache(dev):
    """The dev path computes u_e for every entity but rerank caches only for retrieved ones."""
    from cluster.evaluate.dev import Laps, shared_entities, system_ranks
    from cluster.evaluate.protocols import candidate_ranks
    from cluster.inputs import BatchBuilder
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    cfg, model_dir, rows, entities = dev
    model, processor = load_pretrained(model_dir)
    builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []))
    timings = {}
    ranks = system_ranks(model, builder, rows, entities, 16, 20, 0, 1, Laps(timings))
    full = candidate_ranks(model, builder, rows, shared_entities(model, builder, entities, 16, 0, 1), 20, 16)
    assert torch.equal(ranks, full.ranks)
    assert set(timings) >= {"entity vectors", "mention encoding + top-K", "rerank scoring"}


def _exit_rank() -> None:
    """Leave a spawned rank without interpreter finalization, once its result is written and its process group
    destroyed: gloo's worker threads can still hold tensors then, and finalization freeing them aborted a rank
    (SIGABRT, "terminate called without an active exception") once in a CI run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _rank_main(rank, world, port, args, out_dir):
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        metrics = _metrics(*args, rank=rank, world=world)
        (out_dir / f"rank{rank}.json").write_text(json.dumps(metrics))
        torch.distributed.barrier()  # no rank tears its gloo pairs down while the other still reads from them
    finally:
        torch.distributed.destroy_process_group()
    _exit_rank()


@pytest.mark.parametrize("protocol", ["system", "exhaustive"])
def test_two_workers_share_dev_eval_and_agree_with_one(dev, protocol, tmp_path):
    """The ranks are spawned and report through files: nothing here forks pytest, whose process holds Ray's
    and Milvus Lite's gRPC channels (a forked gRPC process wedged the next Ray call of the suite in CI)."""
    import torch.multiprocessing as mp

    cfg, model_dir, rows, entities = dev
    cfg.eval.retrieve_k = 20
    one = _metrics(cfg, model_dir, rows, entities, protocol)
    args = (2, free_port(), (cfg, model_dir, rows, entities, protocol), tmp_path)
    mp.spawn(_rank_main, args=args, nprocs=2)  # start method "spawn": no fork
    both = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    assert both[0] == both[1]  # every rank gets the whole result (early stopping decides alike)
    assert both[0].keys() == one.keys()
    for key, value in one.items():
        assert both[0][key] == pytest.approx(value, abs=1e-6), key


def _gather_main(rank, world, port, out_dir):
    from cluster.evaluate.dev import gather_rows, my_slice, slice_bounds

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        for n in (8, 7, 1):  # equal slices, slices of 4 and 3, a slice of 1 and an empty one
            rows = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
            flags = torch.arange(n) % 2 == 0
            mine = torch.stack(my_slice(list(rows), rank, world)) if n > rank else rows[:0]
            got = gather_rows(mine, slice_bounds(n, world))
            got_flags = gather_rows(
                torch.tensor(my_slice(flags.tolist(), rank, world), dtype=torch.uint8), slice_bounds(n, world)
            )
            (out_dir / f"gather{rank}_{n}.json").write_text(json.dumps([got.tolist(), got_flags.tolist()]))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
    _exit_rank()


def test_gather_rows_returns_every_ranks_slice_in_order(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_main, args=(2, free_port(), tmp_path), nprocs=2)
    for n in (8, 7, 1):
        expected = [
            torch.arange(n * 3, dtype=torch.float32).reshape(n, 3).tolist(),
            [int(i % 2 == 0) for i in range(n)],
        ]
        for rank in (0, 1):
            assert json.loads((tmp_path / f"gather{rank}_{n}.json").read_text()) == expected, (rank, n)


def test_refreshed_negatives_come_from_the_current_models_top_entities(dev):
    from cluster.evaluate.dev import shared_entities
    from cluster.evaluate.features import encode_mention_batches
    from cluster.inputs import BatchBuilder
    from cluster.train.negatives import refresh_negatives
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    cfg, model_dir, rows, entities = dev
    cfg.train.hard_negatives, cfg.train.hard_negative_pool = 3, 5
    model, processor = load_pretrained(model_dir)
    builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []))
    feats = shared_entities(model, builder, entities, 32, 0, 1)
    picked = refresh_negatives(model, builder, rows, feats, cfg.train, 32, epoch=1)
    vectors = torch.cat([v for _, _, v in encode_mention_batches(model, builder, rows, 32)])
    top = (vectors @ feats.vectors.T).topk(6, dim=1).indices.tolist()
    assert list(picked) == [r["mention_id"] for r in rows]
    for row, hits in zip(rows, top):
        negatives = picked[row["mention_id"]]
        pool = [feats.ids[i] for i in hits if feats.ids[i] != row["gold_entity_id"]][:5]
        assert len(negatives) == 3 and set(negatives) <= set(pool)


def test_inner_product_top_k_in_chunks_equals_torch_top_k_per_batch():
    """`EntityFeatures.top_k` (numpy BLAS, 1024-query blocks) and `with_top_k` (regrouping encoder batches)
    pick the same entities as a plain torch product per batch, in the batches' order."""
    from cluster.evaluate.features import EntityFeatures, with_top_k

    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(5000, 48, generator=gen)
    entities = EntityFeatures(
        [f"E{i}" for i in range(5000)], vectors, {}, torch.zeros(5000, dtype=torch.bool)
    )
    queries = torch.randn(300, 48, generator=gen)
    expected = (queries @ vectors.T).topk(7, dim=1).indices
    assert torch.equal(entities.top_k(queries, 7, chunk=64), expected)  # 64 does not divide 300
    assert entities.top_k(queries, 9000).shape == (300, 5000)  # k beyond the KB: every entity, ranked
    assert entities.top_k(queries[:0], 7).shape == (0, 7)
    sizes = [64, 64, 50, 64, 58]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    batches = [(s, f"feats{s}", queries[s : s + n]) for s, n in zip(starts, sizes)]
    out = list(with_top_k(iter(batches), entities, 7, chunk=100))
    assert [(s, f) for s, f, _ in out] == [(s, f) for s, f, _ in batches]  # every batch, in order, once
    assert torch.equal(torch.cat([t for _, _, t in out]), expected)


def test_batch_builder_reuses_tokenized_texts_and_stays_bounded(dev):
    """A second pass over the same rows (the next epoch's dev evaluation) gives the inputs of a fresh
    tokenization, and the text cache never holds more than its bound."""
    from cluster.inputs import BatchBuilder
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    cfg, model_dir, rows, entities = dev
    _, processor = load_pretrained(model_dir)
    builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []), max_cached_texts=50)
    fresh = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []), max_cached_texts=0)
    for _ in range(2):
        for side, items in (("entities", entities[:40]), ("mentions", rows[:40])):
            got, want = getattr(builder, side)(items), getattr(fresh, side)(items)
            assert got.keys() == want.keys()
            for key in want:
                assert torch.equal(got[key], want[key]), (side, key)
            assert len(builder._tokens) <= 50 and not fresh._tokens
