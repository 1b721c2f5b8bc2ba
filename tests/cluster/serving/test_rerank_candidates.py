"""The reranker's candidate tensors: one feature-cache load per collection gives what per-mention loads give,
with padding masked and u_e from the hits when an index's cache lacks them."""

from __future__ import annotations

import numpy as np
import torch

from cluster.serve.pipeline import Reranker, Retrieved

DIM = 4


def _features(eid: str) -> dict[str, torch.Tensor]:
    seed = int(eid[1:])
    return {
        "vector": torch.full((DIM,), float(seed)),
        "text_query": torch.arange(6, dtype=torch.float16).reshape(2, 3) + seed,  # fp16, as the cache stores
        "text_mask": torch.tensor([True, seed % 2 == 0]),
    }


def _reranker(with_vector: dict[str, bool]) -> Reranker:
    """A Reranker whose feature cache is a function of the id (no model, no files)."""
    reranker = Reranker.__new__(Reranker)
    reranker.device = "cpu"

    def load(collection: str, ids: list[str]) -> dict[str, torch.Tensor]:
        rows = [_features(e) for e in ids]
        keys = [k for k in rows[0] if k != "vector" or with_vector[collection]]
        return {k: torch.stack([r[k] for r in rows]) for k in keys}

    reranker._load = load
    return reranker


def _retrieved(collection: str, ids: list[str]) -> Retrieved:
    vectors = np.stack([_features(e)["vector"].numpy() for e in ids])
    return Retrieved(collection, ids, ids, [""] * len(ids), vectors, 0.0)


def test_one_load_per_collection_equals_per_mention_features_padded_and_masked():
    rets = [
        _retrieved("old", ["e1", "e2", "e3"]),
        _retrieved("new", ["e4"]),
        _retrieved("old", ["e5", "e6"]),
    ]
    vectors, cache, mask = _reranker({"old": True, "new": False})._candidates(rets)
    assert vectors.shape == (3, 3, DIM) and mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    for b, r in enumerate(rets):
        padded = r.ids + r.ids[:1] * (3 - len(r.ids))  # padding repeats the first candidate
        for k, eid in enumerate(padded):
            want = _features(eid)
            assert torch.equal(vectors[b, k], want["vector"])
            assert cache["text_query"].dtype == torch.float32
            assert torch.equal(cache["text_query"][b, k], want["text_query"].float())
            assert torch.equal(cache["text_mask"][b, k], want["text_mask"])
