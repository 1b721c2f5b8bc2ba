"""The Ray Data actor of `mel link-batch`: one batch of mention rows -> serving's answers for each row.

It composes serving's plain classes (cluster.serve.pipeline) and `assemble`, so a row's answer is the one
`/link` gives. The whole batch is searched in one ANN call (no per-query filters in batch mode).
"""

from __future__ import annotations

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
        ("nil", pa.bool_()),
        ("collection", pa.string()),
        ("encode_ms", pa.float64()),  # per batch, as /link's timings_ms
        ("retrieve_ms", pa.float64()),
        ("rerank_ms", pa.float64()),
        ("reject_reason", pa.string()),
        (
            "_part",
            pa.int64(),
        ),  # the output part the row belongs to (passed through for the driver)  # set: the row is a reject (unreadable image), not an answer
    ]
)


class LinkActor:
    """Loads the serving model once per actor; `__call__` links a pyarrow batch of LINK_COLUMNS rows."""

    def __init__(self, cfg, model_dir: str, device: str, threshold: float | None, tag: str):
        from cluster.serve.pipeline import MentionEncoder, Reranker, Retriever, mention_texts
        from workers.images import ImageLoader

        self.encoder = MentionEncoder(model_dir, device, cfg.encoder.dtype, mention_texts(cfg, model_dir))
        self.retriever = Retriever(cfg)
        self.reranker = Reranker(cfg, model_dir, device)
        self.images = ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb)
        self.top_k, self.retrieve_k = cfg.batch.top_k, max(cfg.serve.retrieve_k, cfg.batch.top_k)
        self.threshold, self.tag = threshold, tag

    def __call__(self, batch: pa.Table) -> pa.Table:
        from cluster.serve.guard import ensure_indexed_by
        from cluster.serve.pipeline import MentionQuery, assemble

        rows = batch.to_pylist()
        out, queries, live = [], [], []
        for row in rows:
            image, error = self.images.load(row.get("image_uri"))
            base = {k: row.get(k) for k in ("mention_id", "_location", "gold_entity_id", "_part")}
            out.append(
                {**base, "entity_ids": [], "names": [], "scores": [], "nil": True, "reject_reason": error}
            )
            if error is None:
                queries.append(MentionQuery(row["mention"], row.get("context") or "", image, self.top_k))
                live.append(len(out) - 1)
        if queries:
            encoded = self.encoder.encode(queries)
            retrieved = self.retriever.retrieve(np.stack([e.vector for e in encoded]), self.retrieve_k)
            for collection in {r.collection for r in retrieved}:
                ensure_indexed_by(collection, self.tag)
            ranked = self.reranker.rerank(list(zip(encoded, retrieved)))
            for i, q, e, r, rr in zip(live, queries, encoded, retrieved, ranked):
                answer = assemble(q, e, r, rr, self.threshold)
                cands = answer["candidates"]
                out[i].update(
                    entity_ids=[c["entity_id"] for c in cands],
                    names=[c["name"] for c in cands],
                    scores=[c["score"] for c in cands],
                    nil=answer["nil"],
                    collection=answer["collection"],
                    **{f"{k}_ms": v for k, v in answer["timings_ms"].items()},
                )
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)
