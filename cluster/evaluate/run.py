"""`mel eval`: Hits@1/3/5/10/20, MRR and mean rank of a checkpoint on a split, under both protocols.

(a) exhaustive: every KB entity scored with the full matcher (the paper's protocol); (b) system: Milvus top-K
then exact rerank, plus retrieval recall@K. With a DME cache, both again with DME off (reference section 3:
always report DME on and off). NIL mentions are skipped and counted. A confidence calibration (temperature,
NIL logit, NIL threshold in confidence; `cluster.evaluate.calibration`) is fitted on dev and written beside
the model, with ECE before/after and a reliability diagram in the reports. Reports go to `<root>/runs/<run>/reports/`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster.evaluate.protocols import exhaustive_ranks, system_ranks
from mmoe.metrics import hits_and_mrr


@dataclass
class EvalReport:
    split: str
    checkpoint: str  # the evaluated model folder (URI)
    entities: int
    mentions: int  # linked mentions evaluated
    nil_skipped: int
    retrieve_k: int
    tables: dict[str, dict] = field(default_factory=dict)  # setting -> hits@k, mrr, mean_rank, count
    recall_at_k: dict[str, float] = field(default_factory=dict)  # setting -> gold among the K retrieved
    calibration: dict = field(default_factory=dict)
    mention_text: dict = field(
        default_factory=dict
    )  # {"dme", "selector", "kb_version"} used for the mentions
    report_uris: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def metrics(self) -> dict[str, dict]:
        """setting ("exhaustive", "system", ... "(DME off)") -> hits@k, mrr, mean_rank, count."""
        return self.tables

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}

    def summary(self) -> str:
        from cluster.evaluate.reports import markdown_table

        recall = ", ".join(f"{k} {v:.4f}" for k, v in self.recall_at_k.items())
        c = self.calibration
        return "\n".join(
            [
                f"{self.split}: {self.mentions} mentions ({self.nil_skipped} NIL skipped), {self.entities} entities, "
                f"checkpoint {self.checkpoint} ({self.wall_s:.1f}s)",
                markdown_table(self.tables),
                f"retrieval recall@{self.retrieve_k}: {recall}",
                f"confidence: temperature {c.get('temperature')}, NIL logit {c.get('nil_logit')}, "
                f"ECE {c.get('ece_before')} -> {c.get('ece_after')} (dev, before -> after calibration)",
                f"NIL threshold (confidence): {c.get('nil_threshold')} ({c.get('method')}), "
                f"NIL precision {c.get('nil_precision')}, recall {c.get('nil_recall')}",
                f"reports: {', '.join(self.report_uris)}",
            ]
        )


def calibrate(model, builder, cfg, storage, entities, recipe: dict | None = None) -> dict:
    """Temperature, NIL logit and NIL threshold (in confidence) from dev's top-K scores (exhaustive protocol)."""
    import torch

    from cluster.dme.enhance import dme_selections
    from cluster.evaluate.calibration import calibrate_confidence
    from cluster.evaluate.protocols import top_k_scores
    from cluster.inputs import linked_mentions
    from kb_builder.shards import read_mentions

    dme, _ = dme_selections(cfg, storage, recipe)
    linked, _ = linked_mentions(storage, cfg.kb.name, "dev", dme)
    linked_ids = set(linked["mention_id"].to_list())
    nil = [
        dict(r, desc=dme.get(r["mention_id"], ""), gold_entity_id=None)
        for r in read_mentions(storage, cfg.kb.name, "dev").to_dicts()
        if r["mention_id"] not in linked_ids
    ]
    rows = linked.to_dicts() + nil
    ev = cfg.eval
    scores, gold = top_k_scores(
        model, builder, rows, entities, cfg.serve.top_k, ev.batch_size, ev.entity_chunk
    )
    is_nil = torch.tensor([False] * len(linked) + [True] * len(nil), dtype=torch.bool)
    return calibrate_confidence(scores, gold, is_nil)


def evaluate(cfg, model_dir, split: str = "test", checkpoint: str = "") -> dict:
    """Both protocols (DME on/off) on `split` for the local model folder `model_dir`; a plain dict."""
    from cluster.artifacts import read_mention_recipe, write_calibration
    from cluster.dme.enhance import dme_selections
    from cluster.evaluate.features import encode_entities
    from cluster.evaluate.index import ensure_eval_index
    from cluster.inputs import BatchBuilder, entity_rows, linked_mentions
    from kb_builder.storage import Storage
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    start, ev = time.monotonic(), cfg.eval
    storage = Storage(cfg.storage)
    model, processor = load_pretrained(model_dir)
    builder = BatchBuilder(processor, ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb))
    dme, recipe = dme_selections(cfg, storage, read_mention_recipe(model_dir))
    rows_frame, nil_skipped = linked_mentions(storage, cfg.kb.name, split, dme)
    rows = rows_frame.to_dicts()
    entities = encode_entities(
        model, builder, entity_rows(storage, cfg.kb.name), ev.entity_batch_size, "eval entities"
    )
    store, collection, cache = ensure_eval_index(cfg, storage, model_dir, entities)
    settings = [("", True)] + ([(" (DME off)", False)] if dme and ev.dme_ablation else [])
    tables, recall = {}, {}
    try:
        for suffix, use_dme in settings:
            a = exhaustive_ranks(
                model,
                builder,
                rows,
                entities,
                ev.batch_size,
                ev.entity_chunk,
                use_dme,
                f"eval {split} exhaustive{suffix}",
            )
            b = system_ranks(
                model,
                builder,
                rows,
                store,
                collection,
                cache,
                ev.retrieve_k,
                ev.batch_size,
                use_dme,
                f"eval {split} system{suffix}",
            )
            tables[f"exhaustive{suffix}"] = hits_and_mrr(a.ranks, ev.ks)
            tables[f"system{suffix}"] = hits_and_mrr(b.ranks, ev.ks)
            recall[f"system{suffix}"] = float(b.retrieved.float().mean()) if len(rows) else 0.0
    finally:
        store.close(release_file=True)
    calibration = calibrate(model, builder, cfg, storage, entities, read_mention_recipe(model_dir))
    write_calibration(storage, Path(model_dir), checkpoint, calibration)
    return {
        "split": split,
        "checkpoint": checkpoint or str(model_dir),
        "entities": len(entities.ids),
        "mentions": len(rows),
        "nil_skipped": nil_skipped,
        "retrieve_k": ev.retrieve_k,
        "tables": tables,
        "recall_at_k": recall,
        "calibration": calibration,
        "mention_text": recipe,
        "wall_s": time.monotonic() - start,
    }


def run_eval(cfg, checkpoint: str = "", split: str = "test") -> EvalReport:
    """`mel eval`: evaluate, write metrics.json / metrics.md next to the run's checkpoints, return the report."""
    from cluster.artifacts import ensure_kb, init_model, run_dir, trained_or_init
    from cluster.evaluate.reports import write_eval_reports
    from kb_builder.storage import Storage
    from workers.model_store import resolve_model_dir

    storage = Storage(cfg.storage)
    ensure_kb(cfg, storage)
    uri = trained_or_init(cfg.train, storage, checkpoint)
    init = uri == init_model(storage)  # built on first need, like every other stage does
    model_dir = resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe, checkpoint="" if init else uri)
    report = EvalReport(**evaluate(cfg, model_dir, split=split, checkpoint=uri))
    flat = {**report.to_dict(), "nil_threshold": report.calibration.get("nil_threshold")}
    report.report_uris = write_eval_reports(
        storage, run_dir(storage, cfg.train.run_name), flat, report.tables, split, report.calibration
    )
    return report
