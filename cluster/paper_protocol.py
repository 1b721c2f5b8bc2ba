"""The paper's evaluation protocols as `mel bench-paper` runs them, each measured for cost and memory.

- Reference gate (`mmoe.gate: reference`), exhaustive only: the official gate normalises over the batch, so a
  record's features depend on the records beside it and nothing can be cached or retrieved by ANN. We run the
  official code's tiles instead (reference section 1, evaluation): 20 mentions x 6,000 entities, the CLIP
  backbone features of every entity computed once and kept (the authors' 13–20 GB of host RAM), the MoE
  matcher recomputed on both sides for every tile, `model.score(m_tile, e_tile)`.
- Token gate: (a) exhaustive with cached entity features and (b) Milvus top-K + exact rerank, the building
  blocks of `cluster.evaluate` (eval_protocols), timed one protocol at a time.

Cost per mention = the protocol's wall time over the mentions it ranked; the one-off KB side (entity encoding,
index build) is reported apart as `setup_s`. Peak memory = the process RSS high-water mark sampled while the
protocol runs, and `torch.cuda.max_memory_allocated` on a GPU. Both are measured and reported, never asserted.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field, fields

import torch

from cluster.train_data import BatchBuilder

OFFICIAL_MENTION_TILE = 20  # mentions per tile in the official evaluation
OFFICIAL_ENTITY_TILE = 6000  # entities per tile (and per batch-normalised gate) in the official evaluation
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


# -- reference gate: the official tiles ----------------------------------------------------------------------
def match_features(model, f):
    """SideFeatures from backbone features: the second half of `MMoEModel.encode` (MoE units on this batch).

    Kept apart so that the batch-independent CLIP features are computed once per record while the
    batch-dependent MoE runs per tile, as the official evaluation does.
    """
    from mmoe.model import SideFeatures

    text_mask = torch.ones_like(f.text_mask) if model.reference_gate else f.text_mask  # [B,L]
    image_mask = torch.ones(f.image_tokens.shape[:2], dtype=torch.bool, device=f.image_tokens.device)  # [B,V]
    text = model.text_unit.encode(f.text_cls, f.text_tokens, text_mask)
    image = model.image_unit.encode(f.image_cls, f.image_tokens, image_mask)
    cross = model.cross_unit.encode(f.text_cls, f.text_tokens, text_mask, f.image_cls, f.image_tokens)
    aux = (text.aux_loss + image.aux_loss + cross.aux_loss) / 3
    return SideFeatures(f.text_cls, f.image_cls, text, image, cross, f.has_image, aux)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def backbone_features(model, inputs: dict):
    """CLIP features of one batch (independent of the other records: the gate comes later)."""
    from mmoe.features import zero_missing_pixels

    pixels = zero_missing_pixels(inputs["pixel_values"], inputs["image_mask"])
    return model.features(inputs["input_ids"], inputs["attention_mask"], pixels, inputs["image_mask"])


@torch.no_grad()
def entity_backbone(model, builder: BatchBuilder, entity_rows: list[dict], batch_size: int):
    """Backbone features of every entity, concatenated in entity-row order (the official KB feature cache)."""
    device = next(model.parameters()).device
    parts = [
        backbone_features(model, _to(builder.entities(entity_rows[i : i + batch_size]), device))
        for i in range(0, len(entity_rows), batch_size)
    ]
    if not parts:
        raise ValueError("the KB has no entities")
    return type(parts[0])(
        **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])}
    )


@torch.no_grad()
def tile_scores(
    model,
    builder: BatchBuilder,
    rows: list[dict],
    entities,
    mention_tile: int = OFFICIAL_MENTION_TILE,
    entity_tile: int = OFFICIAL_ENTITY_TILE,
    use_dme: bool = True,
):
    """Yield (start, scores [b, N]) per mention tile: `model.score` on every (mention tile, entity tile) pair.

    `entities` = `entity_backbone(...)`. Both sides' MoE is recomputed per tile (reference section 1).
    """
    from mmoe.model import select_rows

    device = next(model.parameters()).device
    n = entities.text_cls.shape[0]
    for start in range(0, len(rows), mention_tile):
        inputs = _to(builder.mentions(rows[start : start + mention_tile], use_dme=use_dme), device)
        m = match_features(model, backbone_features(model, inputs))
        chunks = []
        for lo in range(0, n, entity_tile):
            e = match_features(model, select_rows(entities, slice(lo, min(lo + entity_tile, n))))
            chunks.append(model.score(m, e).scores.float().cpu())  # [b, tile]
        yield start, torch.cat(chunks, dim=1)  # [b, N]


def reference_exhaustive_ranks(
    model,
    builder: BatchBuilder,
    rows: list[dict],
    entity_rows: list[dict],
    batch_size: int = 64,
    mention_tile: int = OFFICIAL_MENTION_TILE,
    entity_tile: int = OFFICIAL_ENTITY_TILE,
    use_dme: bool = True,
) -> torch.Tensor:
    """Ranks [M] of each linked mention's gold among every entity, on the official tiles (works for any gate)."""
    from mmoe.metrics import gold_ranks

    position = {r["entity_id"]: i for i, r in enumerate(entity_rows)}
    gold = torch.tensor([position[r["gold_entity_id"]] for r in rows], dtype=torch.long)  # [M]
    if not rows:
        return torch.zeros(0, dtype=torch.long)
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    try:
        entities = entity_backbone(model, builder, entity_rows, batch_size)
        ranks = [
            gold_ranks(scores, gold[start : start + scores.shape[0]])
            for start, scores in tile_scores(
                model, builder, rows, entities, mention_tile, entity_tile, use_dme
            )
        ]
    finally:
        model.train(was_training)
    return torch.cat(ranks)


def reference_exhaustive_metrics(
    model, builder: BatchBuilder, rows: list[dict], entity_rows: list[dict], eval_cfg
) -> dict:
    """Same signature as `eval_protocols.exhaustive_metrics`, for a reference-gate model (training's dev eval)."""
    from cluster.eval_protocols import metrics_of

    ranks = reference_exhaustive_ranks(model, builder, rows, entity_rows, eval_cfg.batch_size)
    return metrics_of(ranks, eval_cfg.ks)


# -- the runs bench-paper measures --------------------------------------------------------------------------
def _inputs(cfg, model_dir, split: str, device: str = "cpu"):
    from cluster.train_data import entity_rows, linked_mentions, read_dme
    from kb_builder.storage import Storage
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    storage = Storage(cfg.storage)
    model, processor = load_pretrained(model_dir, device=device)
    builder = BatchBuilder(processor, ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb))
    dme = read_dme(storage, cfg.kb.name)
    rows, nil_skipped = linked_mentions(storage, cfg.kb.name, split, dme)
    return storage, model, builder, rows.to_dicts(), entity_rows(storage, cfg.kb.name), nil_skipped


def pick_device(device: str | None = None) -> str:
    """The device chosen once: the given one, else CUDA when present."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def measure_reference(
    cfg,
    model_dir,
    split: str = "test",
    device: str | None = None,
    mention_tile: int = OFFICIAL_MENTION_TILE,
    entity_tile: int = OFFICIAL_ENTITY_TILE,
) -> ProtocolRun:
    """The reference-gate model under the paper's exhaustive protocol, on the official tiles."""
    from cluster.eval_protocols import metrics_of
    from mmoe.metrics import gold_ranks

    device = pick_device(device)
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
        metrics_of(ranks, cfg.eval.ks),
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
    `cluster.evaluate` runs them). The DME descriptions are used when a DME cache exists."""
    from cluster.eval_features import encode_entities
    from cluster.eval_index import ensure_eval_index
    from cluster.eval_protocols import exhaustive_ranks, metrics_of, system_ranks

    ev = cfg.eval
    storage, model, builder, rows, entity_rows, nil_skipped = _inputs(cfg, model_dir, split)
    with MemoryMeter() as setup_meter:
        t0 = time.perf_counter()
        entities = encode_entities(model, builder, entity_rows, ev.batch_size)
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
            a = exhaustive_ranks(model, builder, rows, entities, ev.batch_size, ev.entity_chunk)
            wall_a = time.perf_counter() - start
        with MemoryMeter() as meter_b:
            start = time.perf_counter()
            b = system_ranks(model, builder, rows, store, collection, cache, ev.retrieve_k, ev.batch_size)
            wall_b = time.perf_counter() - start
    finally:
        store.close(release_file=True)
    recall = float(b.retrieved.float().mean()) if rows else 0.0
    return [
        ProtocolRun(
            "exhaustive",
            metrics_of(a.ranks, ev.ks),
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
            metrics_of(b.ranks, ev.ks),
            len(rows),
            wall_b,
            t2 - t0,
            meter_b.peak_rss_mib,
            None,
            "cpu",
            {**common, "retrieve_k": ev.retrieve_k, "recall_at_k": recall, "ranks": b.ranks.tolist()},
        ),
    ]
