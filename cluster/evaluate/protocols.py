"""The two evaluation protocols: (a) exhaustive (paper) and (b) system (ANN top-K + exact rerank).

(a) ranks each mention's gold entity among every KB entity with the full matcher (`score_shared`), chunk by
chunk, so memory stays at [batch, entity_chunk] scores. (b) retrieves top-K by inner product from Milvus,
then rescores the K candidates exactly (`score_candidates`, with features from the FeatureCache). Both use
rank = 1 + #(entities scoring strictly above the gold), so (a) and (b) agree when K covers the KB
(reference section 2: the rerank scores equal the exhaustive ones for the same pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cluster.evaluate.features import EntityFeatures, as_float, bare, encode_mention_batches, with_top_k
from cluster.inputs import BatchBuilder
from mmoe.metrics import hits_and_mrr, rank_all


@dataclass
class RankResult:
    """Per-mention outcome of one protocol, row-aligned with the mention rows."""

    ranks: torch.Tensor  # [M] long, 1 = gold ranked first; K+1 when (b) did not retrieve the gold
    gold_scores: torch.Tensor  # [M] the gold entity's matcher score (NaN when not retrieved)
    top_ids: list[str] = field(default_factory=list)  # [M] the best-scoring entity
    retrieved: torch.Tensor | None = None  # [M] bool, (b) only: gold among the K retrieved
    top_scores: torch.Tensor | None = None  # [M] the best matcher score


def exhaustive_ranks(
    model,
    builder: BatchBuilder,
    rows: list[dict],
    entities: EntityFeatures,
    batch_size: int,
    entity_chunk: int,
    use_dme: bool = True,
    label: str = "",
) -> RankResult:
    """Protocol (a): every mention against every entity, never more than [B, entity_chunk] scores at once.

    NIL rows (no gold in the KB) get rank 0 and NaN gold score but still a top entity and top score, which
    the NIL threshold calibration needs.
    """
    net = bare(model)
    position = entities.index_of()
    gold = torch.tensor(
        [position.get(r.get("gold_entity_id") or "", -1) for r in rows], dtype=torch.long
    )  # [M]
    n = len(entities.ids)
    ranks, gold_scores, top_ids, top_scores = [], [], [], []

    def score(feats, index: torch.Tensor) -> torch.Tensor:
        vectors, cache = entities.rows(index)
        return net.score_shared(feats, vectors, cache).scores.float()  # [B, len(index)]

    with torch.no_grad():
        for start, feats, _ in encode_mention_batches(model, builder, rows, batch_size, use_dme, label):
            g = gold[start : start + batch_size]  # [B]
            ranked = rank_all(lambda index, feats=feats: score(feats, index), n, g, entity_chunk)
            ranks.append(ranked.ranks)
            gold_scores.append(ranked.gold_scores)
            top_scores.append(ranked.top_scores)
            top_ids += [entities.ids[i] for i in ranked.top_index.tolist()]
    if not rows:
        return RankResult(torch.zeros(0, dtype=torch.long), torch.zeros(0), [], top_scores=torch.zeros(0))
    return RankResult(torch.cat(ranks), torch.cat(gold_scores), top_ids, top_scores=torch.cat(top_scores))


def top_k_scores(
    model,
    builder: BatchBuilder,
    rows: list[dict],
    entities: EntityFeatures,
    k: int,
    batch_size: int,
    entity_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every mention against every entity, keeping the K best: (scores [M,K] best first, gold position [M]).

    The gold position is -1 for NIL rows and for golds outside the K (confidence calibration's input).
    """
    net = bare(model)
    position = entities.index_of()
    n = len(entities.ids)
    k = min(k, n)
    all_scores, all_gold = [], []
    with torch.no_grad():
        for start, feats, _ in encode_mention_batches(model, builder, rows, batch_size):
            gold = torch.tensor(
                [position.get(r.get("gold_entity_id") or "", -1) for r in rows[start : start + batch_size]]
            )  # [B]
            best_s = torch.full((gold.shape[0], 0), float("-inf"))
            best_i = torch.zeros((gold.shape[0], 0), dtype=torch.long)
            for lo in range(0, n, entity_chunk):
                index = torch.arange(lo, min(lo + entity_chunk, n))
                vectors, cache = entities.rows(index)
                s = net.score_shared(feats, vectors, cache).scores.float().cpu()  # [B,C]
                best_s, pick = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
                best_i = torch.cat([best_i, index.expand(gold.shape[0], -1)], 1).gather(1, pick)
            hit = best_i == gold[:, None]  # [B,K]
            all_gold.append(torch.where(hit.any(1) & (gold >= 0), hit.float().argmax(1), -1))
            all_scores.append(best_s)
    if not all_scores:
        return torch.zeros(0, k), torch.zeros(0, dtype=torch.long)
    return torch.cat(all_scores), torch.cat(all_gold)


def system_ranks(
    model,
    builder: BatchBuilder,
    rows: list[dict],
    store,
    collection: str,
    feature_cache,
    retrieve_k: int,
    batch_size: int,
    use_dme: bool = True,
    label: str = "",
) -> RankResult:
    """Protocol (b): Milvus top-K by <u_m, u_e>, then the exact matcher on the K candidates."""
    net = bare(model)
    ranks, gold_scores, top_ids, retrieved, top_scores = [], [], [], [], []
    with torch.no_grad():
        for start, feats, vectors in encode_mention_batches(model, builder, rows, batch_size, use_dme, label):
            batch = rows[start : start + batch_size]
            hits = store.search(vectors.numpy(), top_k=retrieve_k, collection=collection)
            k = min(len(h) for h in hits)
            cand_ids = [[h.entity_id for h in q[:k]] for q in hits]  # [B][K]
            flat = feature_cache.load([eid for q in cand_ids for eid in q])
            cand_vectors = flat.pop("vector").float().reshape(len(batch), k, -1)  # [B,K,D]
            cand_cache = {n: as_float(t).reshape(len(batch), k, *t.shape[1:]) for n, t in flat.items()}
            scores = net.score_candidates(feats, cand_vectors, cand_cache).scores.float()  # [B,K]
            for i, row in enumerate(batch):
                top_ids.append(cand_ids[i][int(scores[i].argmax())])
                top_scores.append(float(scores[i].max()))
                if row["gold_entity_id"] in cand_ids[i]:
                    g_score = scores[i, cand_ids[i].index(row["gold_entity_id"])]
                    ranks.append(1 + int((scores[i] > g_score).sum()))
                    gold_scores.append(float(g_score))
                    retrieved.append(True)
                else:
                    ranks.append(k + 1)
                    gold_scores.append(float("nan"))
                    retrieved.append(False)
    return RankResult(
        torch.tensor(ranks, dtype=torch.long).reshape(-1),
        torch.tensor(gold_scores),
        top_ids,
        torch.tensor(retrieved),
        torch.tensor(top_scores),
    )


def candidate_ranks(
    model,
    builder: BatchBuilder,
    rows: list[dict],
    entities: EntityFeatures,
    top_k: int,
    batch_size: int,
    label: str = "",
) -> RankResult:
    """Protocol (b) on features in memory: exact inner-product top-K over `entities`, exact rerank of the K.

    A gold outside the K gets rank K+1 (`retrieved` False); NIL rows (gold not in the KB) get rank 0.
    """
    k = min(top_k, len(entities.ids))

    with torch.no_grad():
        batches = encode_mention_batches(model, builder, rows, batch_size, True, label)
        return rerank_candidates(model, rows, with_top_k(batches, entities, k), entities, k)


def rerank_candidates(model, rows: list[dict], batches, entities: EntityFeatures, k: int) -> RankResult:
    """The exact rerank of protocol (b): `batches` yields (start, mention features, top [B,K] entity indices)
    over `rows` in order; `entities` needs the rerank cache of those indices only."""
    net = bare(model)
    position = entities.index_of()
    gold = torch.tensor([position.get(r.get("gold_entity_id") or "", -1) for r in rows], dtype=torch.long)
    ranks, gold_scores, top_ids, retrieved, top_scores = [], [], [], [], []
    with torch.no_grad():
        for start, feats, top in batches:
            cand_vectors, cand_cache = entities.rows(top)
            scores = net.score_candidates(feats, cand_vectors, cand_cache).scores.float()  # [B,K]
            g = gold[start : start + len(top)]
            hit = top == g[:, None]  # [B,K]
            found = hit.any(dim=1)
            g_score = scores.gather(1, hit.float().argmax(dim=1, keepdim=True)).squeeze(1)
            rank = 1 + (scores > g_score[:, None]).sum(dim=1)
            ranks.append(torch.where(found, rank, torch.full_like(rank, k + 1)).masked_fill(g < 0, 0))
            gold_scores.append(torch.where(found, g_score, torch.full_like(g_score, float("nan"))))
            best = scores.argmax(dim=1)
            top_ids += [entities.ids[i] for i in top.gather(1, best[:, None]).squeeze(1).tolist()]
            top_scores.append(scores.max(dim=1).values)
            retrieved.append(found)
    if not rows:
        return RankResult(
            torch.zeros(0, dtype=torch.long), torch.zeros(0), [], torch.zeros(0, dtype=torch.bool)
        )
    return RankResult(
        torch.cat(ranks), torch.cat(gold_scores), top_ids, torch.cat(retrieved), torch.cat(top_scores)
    )


def exhaustive_metrics(
    model, builder: BatchBuilder, rows: list[dict], entity_rows: list[dict], eval_cfg
) -> dict:
    """Protocol (a) end to end on a model in memory (the training loop's dev evaluation)."""
    from cluster.evaluate.features import encode_entities

    if getattr(getattr(model, "module", model), "reference_gate", False):
        # The official gate's features depend on the batch: score the paper's tiles instead of cached features.
        from cluster.evaluate.reference import reference_exhaustive_metrics

        return reference_exhaustive_metrics(
            getattr(model, "module", model), builder, rows, entity_rows, eval_cfg
        )

    entities = encode_entities(model, builder, entity_rows, eval_cfg.entity_batch_size)
    result = exhaustive_ranks(model, builder, rows, entities, eval_cfg.batch_size, eval_cfg.entity_chunk)
    return hits_and_mrr(result.ranks[result.ranks > 0], eval_cfg.ks)
