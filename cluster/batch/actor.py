"""The Ray Data actor of `mel link-batch`: one batch of mention rows -> serving's answers for each row.

It composes serving's plain classes (cluster.serve.pipeline) and `assemble` with the model's calibration, so a
row's answer (ids, scores, confidence, NIL) is the one `/link` gives. The whole batch goes through one encode,
one ANN search (no per-query filters in batch mode) and one rerank; the rows stay columns (no per-row dicts).
With `batch.calls_per_actor` > 1, Ray Data runs that many calls at once in one actor, on threads: one call
computes (torch and image decoding release the GIL) while another waits on its Milvus search.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

OUTPUT_SCHEMA = pa.schema(
    [
        ("mention_id", pa.string()),
        ("_location", pa.string()),
        ("gold_entity_id", pa.string()),
        ("entity_ids", pa.list_(pa.string())),  # [top_k] best first
        ("names", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float64())),  # exact MMoE scores, as /link rounds them
        (
            "confidence",
            pa.float64(),
        ),  # the top candidate's calibrated confidence (/link's); null: no candidate
        ("nil", pa.bool_()),
        ("collection", pa.string()),
        ("image_ms", pa.float64()),  # per batch: image reads and decodes
        ("encode_ms", pa.float64()),  # per batch, as /link's timings_ms
        ("retrieve_ms", pa.float64()),
        ("rerank_ms", pa.float64()),
        ("batch_ms", pa.float64()),  # per batch: the whole actor call (the rest is assembling the answers)
        ("batch_rows", pa.int32()),  # rows in that batch (a stage's time per row = its ms / batch_rows)
        ("reject_reason", pa.string()),  # set: the row is a reject (unreadable image), not an answer
        ("_part", pa.int64()),  # the output part the row belongs to (passed through for the driver)
    ]
)
PASS_THROUGH = ("mention_id", "_location", "gold_entity_id", "_part")


class LinkActor:
    """Loads the serving model once per actor; `__call__` links a pyarrow batch of LINK_COLUMNS rows."""

    def __init__(self, cfg, model_dir: str, threshold: float | None, tag: str):
        from cluster.artifacts import read_calibration
        from cluster.serve.pipeline import MentionEncoder, Reranker, Retriever, mention_texts
        from workers.device import pick_device
        from workers.images import ImageLoader

        device = str(
            pick_device(None, cfg.batch.num_gpus_per_actor)
        )  # here: the process holding the GPU share

        self.encoder = MentionEncoder(model_dir, device, cfg.encoder.dtype, mention_texts(cfg, model_dir))
        self.retriever = Retriever(cfg)
        self.reranker = Reranker(cfg, model_dir, device)
        self.images = ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb)
        self.top_k, self.retrieve_k = cfg.batch.top_k, max(cfg.serve.retrieve_k, cfg.batch.top_k)
        self.threshold, self.tag = threshold, tag
        self.calibration = read_calibration(model_dir)  # as Linker.from_config: confidences equal /link's

    def __call__(self, batch: pa.Table) -> pa.Table:
        from cluster.serve.guard import ensure_indexed_by
        from cluster.serve.pipeline import MentionQuery, assemble

        start, n = time.perf_counter(), batch.num_rows
        mentions, contexts = batch["mention"].to_pylist(), batch["context"].to_pylist()
        loaded = [self.images.load(uri) for uri in batch["image_uri"].to_pylist()]
        image_ms = (time.perf_counter() - start) * 1000
        live = [i for i, (_, error) in enumerate(loaded) if error is None]
        cols = {
            "entity_ids": [[] for _ in range(n)],
            "names": [[] for _ in range(n)],
            "scores": [[] for _ in range(n)],
            "confidence": [None] * n,
            "nil": [True] * n,
            "collection": [None] * n,
        }
        ms = {"encode": None, "retrieve": None, "rerank": None}
        if live:
            queries = [MentionQuery(mentions[i], contexts[i] or "", loaded[i][0], self.top_k) for i in live]
            encoded = self.encoder.encode(queries)
            retrieved = self.retriever.retrieve(np.stack([e.vector for e in encoded]), self.retrieve_k)
            for collection in {r.collection for r in retrieved}:
                ensure_indexed_by(collection, self.tag)
            ranked = self.reranker.rerank(list(zip(encoded, retrieved)))
            for i, q, e, r, rr in zip(live, queries, encoded, retrieved, ranked):
                answer = assemble(q, e, r, rr, self.threshold, self.calibration)
                cands = answer["candidates"]
                cols["entity_ids"][i] = [c["entity_id"] for c in cands]
                cols["names"][i] = [c["name"] for c in cands]
                cols["scores"][i] = [c["score"] for c in cands]
                cols["confidence"][i] = cands[0]["confidence"] if cands else None
                cols["nil"][i], cols["collection"][i] = answer["nil"], answer["collection"]
            ms = answer["timings_ms"]  # encode, retrieve and rerank ran once for the whole batch
        timings = {"image_ms": image_ms, **{f"{k}_ms": v for k, v in ms.items()}}
        timings["batch_ms"] = (time.perf_counter() - start) * 1000
        arrays = {name: batch[name].cast(OUTPUT_SCHEMA.field(name).type) for name in PASS_THROUGH}
        arrays["reject_reason"] = pa.array([error for _, error in loaded], pa.string())
        arrays.update({k: pa.array(v, OUTPUT_SCHEMA.field(k).type) for k, v in cols.items()})
        arrays.update({k: pa.array([v] * n, pa.float64()) for k, v in timings.items()})
        arrays["batch_rows"] = pa.array([n] * n, pa.int32())
        return pa.table({f.name: arrays[f.name] for f in OUTPUT_SCHEMA}, schema=OUTPUT_SCHEMA)
