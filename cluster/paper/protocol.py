"""The paper's evaluation protocols as `mel bench-paper` runs them, each measured for cost and memory.

- Reference gate (`mmoe.gate: reference`), exhaustive only: the official gate normalises over the batch, so a
  record's features depend on the records beside it and nothing can be cached or retrieved by ANN. We run the
  official code's tiles instead (reference section 1, evaluation): 20 mentions x 6,000 entities, the CLIP
  backbone features of every entity computed once and kept (the authors' 13–20 GB of host RAM), the MoE
  matcher recomputed on both sides for every tile, `model.score(m_tile, e_tile)`.
- Token gate: (a) exhaustive with cached entity features and (b) Milvus top-K + exact rerank, the building
  blocks of `cluster.evaluate.run` (eval_protocols), timed one protocol at a time.

Cost per mention = the protocol's wall time over the mentions it ranked; the one-off KB side (entity encoding,
index build) is reported apart as `setup_s`. Peak memory = the process RSS high-water mark sampled while the
protocol runs, and `torch.cuda.max_memory_allocated` on a GPU. Both are measured and reported, never asserted.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field

import torch

from cluster.evaluate.reference import (
    OFFICIAL_ENTITY_TILE,
    OFFICIAL_MENTION_TILE,
    entity_backbone,
    tile_scores,
)
from cluster.inputs import BatchBuilder
from workers.device import pick_device

RSS_SAMPLE_S = 0.02


# -- measurement ---------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; else the lifetime peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryMeter:
    """Context manager: peak RSS (sampled on a thread) and CUDA max allocated while the block runs."""

    def __init__(self, device: torch.device | str = "cpu", sample_s: float = RSS_SAMPLE_S):
        self.device = torch.device(device)
        self.sample_s = sample_s
        self.start_rss_mib = self.peak_rss_mib = 0.0
        self.cuda_max_allocated_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_s):
            self.peak_rss_mib = max(self.peak_rss_mib, _rss_bytes() / 2**20)

    def __enter__(self) -> MemoryMeter:
        self.start_rss_mib = self.peak_rss_mib = _rss_bytes() / 2**20
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss_mib = max(self.peak_rss_mib, _rss_bytes() / 2**20)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_max_allocated_mib = torch.cuda.max_memory_allocated(self.device) / 2**20


@dataclass
class ProtocolRun:
    """One protocol's outcome and cost."""

    name: str  # "exhaustive" | "system" | "reference exhaustive"
    metrics: dict[str, float]  # hits@k, mrr (fractions), mean_rank, count
    mentions: int
    wall_s: float  # mention-side time: encoding + scoring every mention
    setup_s: float = 0.0  # one-off KB side: entity features (and the index for "system")
    peak_rss_mib: float = 0.0
    cuda_max_allocated_mib: float | None = None
    device: str = "cpu"
    extra: dict = field(default_factory=dict)  # e.g. recall@K, tile sizes

    @property
    def ms_per_mention(self) -> float:
        return 1000.0 * self.wall_s / max(1, self.mentions)


# -- the runs bench-paper measures --------------------------------------------------------------------------
def _inputs(cfg, model_dir, split: str, device: str = "cpu"):
    from cluster.dme.enhance import dme_selections
    from cluster.inputs import entity_rows, linked_mentions
    from kb_builder.storage import Storage
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    storage = Storage(cfg.storage)
    model, processor = load_pretrained(model_dir, device=device)
    builder = BatchBuilder(processor, ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb))
    dme, recipe = dme_selections(cfg, storage)
    rows, nil_skipped = linked_mentions(storage, cfg.kb.name, split, dme)
    return storage, model, builder, rows.to_dicts(), entity_rows(storage, cfg.kb.name), nil_skipped


def measure_reference(
    cfg,
    model_dir,
    split: str = "test",
    device: str | None = None,
    mention_tile: int = OFFICIAL_MENTION_TILE,
    entity_tile: int = OFFICIAL_ENTITY_TILE,
) -> ProtocolRun:
    """The reference-gate model under the paper's exhaustive protocol, on the official tiles."""
    from mmoe.metrics import gold_ranks, hits_and_mrr

    device = str(pick_device(device))
    _, model, builder, rows, entity_rows, nil_skipped = _inputs(cfg, model_dir, split, device)
    position = {r["entity_id"]: i for i, r in enumerate(entity_rows)}
    gold = torch.tensor([position[r["gold_entity_id"]] for r in rows], dtype=torch.long)
    with MemoryMeter(device) as meter:
        t0 = time.perf_counter()
        entities = entity_backbone(model, builder, entity_rows, cfg.eval.batch_size)
        t1 = time.perf_counter()
        ranks = [
            gold_ranks(scores, gold[s : s + scores.shape[0]])
            for s, scores in tile_scores(model, builder, rows, entities, mention_tile, entity_tile)
        ]
        t2 = time.perf_counter()
    ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    return ProtocolRun(
        "reference exhaustive",
        hits_and_mrr(ranks, cfg.eval.ks),
        len(rows),
        t2 - t1,
        t1 - t0,
        meter.peak_rss_mib,
        meter.cuda_max_allocated_mib,
        device,
        {
            "mention_tile": mention_tile,
            "entity_tile": entity_tile,
            "entities": len(entity_rows),
            "nil_skipped": nil_skipped,
            "ranks": ranks.tolist(),
        },
    )


def measure_token(cfg, model_dir, split: str = "test") -> list[ProtocolRun]:
    """The token-gate model under (a) exhaustive and (b) Milvus top-K + exact rerank, timed apart (CPU, as
    `cluster.evaluate.run` runs them). The DME descriptions are used when a DME cache exists."""
    from cluster.evaluate.features import encode_entities
    from cluster.evaluate.index import ensure_eval_index
    from cluster.evaluate.protocols import exhaustive_ranks, system_ranks
    from mmoe.metrics import hits_and_mrr

    ev = cfg.eval
    storage, model, builder, rows, entity_rows, nil_skipped = _inputs(cfg, model_dir, split)
    with MemoryMeter() as setup_meter:
        t0 = time.perf_counter()
        entities = encode_entities(model, builder, entity_rows, ev.batch_size, "bench-paper entities")
        t1 = time.perf_counter()
        store, collection, cache = ensure_eval_index(cfg, storage, model_dir, entities)
        t2 = time.perf_counter()
    common = {
        "entities": len(entity_rows),
        "nil_skipped": nil_skipped,
        "setup_peak_rss_mib": setup_meter.peak_rss_mib,
    }
    try:
        with MemoryMeter() as meter_a:
            start = time.perf_counter()
            a = exhaustive_ranks(
                model, builder, rows, entities, ev.batch_size, ev.entity_chunk, label="bench-paper exhaustive"
            )
            wall_a = time.perf_counter() - start
        with MemoryMeter() as meter_b:
            start = time.perf_counter()
            b = system_ranks(
                model,
                builder,
                rows,
                store,
                collection,
                cache,
                ev.retrieve_k,
                ev.batch_size,
                label="bench-paper system",
            )
            wall_b = time.perf_counter() - start
    finally:
        store.close(release_file=True)
    recall = float(b.retrieved.float().mean()) if rows else 0.0
    return [
        ProtocolRun(
            "exhaustive",
            hits_and_mrr(a.ranks, ev.ks),
            len(rows),
            wall_a,
            t1 - t0,
            meter_a.peak_rss_mib,
            None,
            "cpu",
            {**common, "entity_chunk": ev.entity_chunk, "ranks": a.ranks.tolist()},
        ),
        ProtocolRun(
            "system",
            hits_and_mrr(b.ranks, ev.ks),
            len(rows),
            wall_b,
            t2 - t0,
            meter_b.peak_rss_mib,
            None,
            "cpu",
            {**common, "retrieve_k": ev.retrieve_k, "recall_at_k": recall, "ranks": b.ranks.tolist()},
        ),
    ]
