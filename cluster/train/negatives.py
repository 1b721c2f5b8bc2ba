"""Hard negatives for training, mined from a Milvus index of the KB (reference section 2: training adds
optional hard negatives from the index to the paper's in-batch negatives).

For each train mention: the top `hard_negative_pool` entities by <u_m, u_e> under the starting model, the
gold excluded; `hard_negatives` of them, drawn with the run's seed, become extra entity columns of its batch.
Mined once on the driver before training (the index is built for the starting model by `ensure_eval_index`);
with `train.negatives_refresh_epochs: N` the workers re-mine them every N epochs from the current model's
entity vectors (`refresh_negatives`, an exact inner product in memory, the entity encoding shared by ranks).
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

HARD_NEGATIVE_COLUMN = "hard_negative_ids"


def pick_negatives(hit_ids: list[str], gold_id: str, pool: int, count: int, rng: random.Random) -> list[str]:
    """`count` ids drawn from the first `pool` non-gold hits (fewer when the index returns fewer)."""
    candidates = [eid for eid in hit_ids if eid != gold_id][:pool]
    return rng.sample(candidates, min(count, len(candidates)))


def mine_hard_negatives(
    cfg, storage, model_dir: Path, train: pl.DataFrame, entity_rows: list[dict]
) -> pl.DataFrame:
    """`train` with a `hard_negative_ids` list column."""
    from cluster.evaluate.features import encode_entities, encode_mention_batches
    from cluster.evaluate.index import ensure_eval_index
    from cluster.inputs import BatchBuilder
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    tc, batch_size = cfg.train, cfg.eval.batch_size
    model, processor = load_pretrained(model_dir)
    builder = BatchBuilder(processor, ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb))
    entities = encode_entities(model, builder, entity_rows, batch_size, "[train] negatives: entities")
    store, collection, _ = ensure_eval_index(cfg, storage, model_dir, entities)
    rows = train.to_dicts()
    rng = random.Random(tc.seed)
    picked: list[list[str]] = []
    try:
        mining = encode_mention_batches(model, builder, rows, batch_size, label="[train] negatives: mining")
        for start, _feats, vectors in mining:
            hits = store.search(vectors.numpy(), top_k=tc.hard_negative_pool + 1, collection=collection)
            for row, found in zip(rows[start : start + batch_size], hits):
                ids = [h.entity_id for h in found]
                picked.append(
                    pick_negatives(ids, row["gold_entity_id"], tc.hard_negative_pool, tc.hard_negatives, rng)
                )
    finally:
        store.close(release_file=True)
    print(f"[train] mined {sum(map(len, picked))} hard negatives for {len(rows)} mentions from {collection}")
    return train.with_columns(pl.Series(HARD_NEGATIVE_COLUMN, picked, dtype=pl.List(pl.String)))


def refresh_negatives(
    model, builder, rows: list[dict], entities, tc, batch_size: int, epoch: int, label: str = ""
):
    """{mention_id: hard negative ids} for `rows`, mined from `entities` (EntityFeatures of the current model)."""
    from cluster.evaluate.features import encode_mention_batches, with_top_k

    rng = random.Random(tc.seed * 1000 + epoch)
    k = min(tc.hard_negative_pool + 1, len(entities.ids))
    picked: dict[str, list[str]] = {}
    encoded = encode_mention_batches(model, builder, rows, batch_size, label=label)
    for start, _feats, top in with_top_k(encoded, entities, k):  # top [B, pool+1]
        for row, hits in zip(rows[start : start + batch_size], top.tolist()):
            ids = [entities.ids[i] for i in hits]
            picked[row["mention_id"]] = pick_negatives(
                ids, row["gold_entity_id"], tc.hard_negative_pool, tc.hard_negatives, rng
            )
    return picked
