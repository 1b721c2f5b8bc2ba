"""One DME worker: holds the name index, the model and the selector, and turns mention rows into cache rows.

A plain class (tests and the serving path call it directly); `job.run_dme` wraps it as a Ray actor so each
process loads the entity table and the model once and then serves many batches.
"""

from __future__ import annotations

import logging

import numpy as np

from cluster.dme.candidates import CandidateFinder, NameIndex, milvus_ann
from cluster.dme.factory import make_selector
from cluster.dme.selectors import DMECounters, Selection

log = logging.getLogger(__name__)

ENTITY_COLUMNS = ["entity_id", "name", "aliases", "description"]


class DMEWorker:
    """`process(rows) -> (cache rows, counters, used_ann)` for canonical mention rows."""

    def __init__(self, cfg, kb_version: str, milvus_uri: str = ""):
        """`milvus_uri` "" means no index to search: candidates come from names only."""
        from kb_builder.shards import read_entities
        from kb_builder.storage import Storage

        self.dme = cfg.dme
        self.kb_version = kb_version
        storage = Storage(cfg.storage)
        self.index = NameIndex(read_entities(storage, cfg.kb.name, columns=ENTITY_COLUMNS))
        self.encoder, ann_search = None, None
        if cfg.dme.selector == "none":
            self.selector = make_selector(cfg.dme)
        else:
            from workers.encoder import EntityEncoder
            from workers.model_store import resolve_model_dir

            model_dir = resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe, checkpoint="")
            from workers.images import ImageLoader

            loader = ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb)
            self.encoder = EntityEncoder(model_dir, cfg.encoder, loader=loader)
            self.selector = make_selector(cfg.dme, *_model_and_processor(self.encoder, model_dir))
            if milvus_uri and cfg.dme.candidates_top_n > 0:
                ann_search = _open_ann(cfg.milvus, milvus_uri)
        self.finder = CandidateFinder(
            self.index, cfg.dme.candidates_top_n, cfg.dme.max_candidates, ann_search
        )

    def process(self, rows: list[dict]) -> tuple[list[dict], DMECounters, bool]:
        self.selector.counters = DMECounters()  # per batch: the driver adds them up
        candidates, selections = self.select(rows)
        out = [self._row(r, c, s) for r, c, s in zip(rows, candidates, selections)]
        return out, self.selector.counters, self.finder.ann_search is not None

    def select(self, rows: list[dict], deadline: float | None = None) -> tuple[list, list[Selection]]:
        """(candidates, selection) per mention row: the one path of the bulk job and of per-request DME, so a
        served mention gets the description training read for it. `deadline` (time.monotonic()) bounds an
        LLM selector's calls; past it, the fallback answers."""
        vectors = None
        if self.encoder is not None and self.finder.ann_search is not None:
            _, vectors = self.encoder.encode_mentions(rows)
            vectors = np.asarray(
                vectors.detach().cpu() if hasattr(vectors, "detach") else vectors, np.float32
            )
        if self.dme.selector == "none":
            candidates = [[] for _ in rows]  # DME off: no need to look anything up
        else:
            candidates = self.finder.find([r["mention"] for r in rows], vectors)
        items = [(r["mention"], r.get("context") or "", c) for r, c in zip(rows, candidates)]
        if deadline is not None and self.dme.selector == "llm":
            return candidates, self.selector.select_many(items, deadline=deadline)
        return candidates, self.selector.select_many(items)

    def _row(self, row: dict, candidates, selection: Selection) -> dict:
        return {
            "mention_id": row["mention_id"],
            "kb_version": self.kb_version,
            "selector": self.dme.selector,
            "entity_id": selection.entity_id(candidates),
            "desc": selection.desc,
            "reason": selection.reason,
        }


def _model_and_processor(encoder, model_dir):
    """Reuse the encoder's model when it exposes one; else load the folder (same weights either way)."""
    model, processor = getattr(encoder, "model", None), getattr(encoder, "processor", None)
    if model is not None and processor is not None:
        return model, processor
    from mmoe.pretrained import load_pretrained

    return load_pretrained(model_dir)


def _open_ann(milvus_cfg, uri: str):
    """ANN search over the collection serving reads, or None (with a warning) before `mel index` has run."""
    from workers.milvus_store import MilvusStore

    store = MilvusStore(milvus_cfg, uri)
    collection = store.current_collection()
    if collection is None:
        log.warning(
            "DME: no Milvus collection behind alias %s: candidates from names only", milvus_cfg.collection
        )
        store.close()
        return None
    # A collection reopened from a Lite file (or released on a server) answers searches only once loaded.
    store.client.load_collection(collection)
    return milvus_ann(store, collection)
