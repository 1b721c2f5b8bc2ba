"""One epoch's training time against its dev evaluation under each protocol, at the size of a real KB.

A synthetic names-only KB (no descriptions or images, like the MELBench KB of issue 22: 17,805 entities,
12,473 train and 2,637 dev mentions, so train = 0.70 N and dev = 0.148 N) and the untrained tiny model.
Training time = measured ms/step of the real step code (`cluster.train.loop`) x the epoch's steps on
`--workers` workers (both ranks step in parallel). Dev eval = `cluster.evaluate.dev.dev_metrics` on one process
(the worker count divides it when the ranks share it). The exhaustive protocol is timed on `--exhaustive-dev`
dev mentions and extrapolated linearly to the whole dev set (its cost is linear in mentions); entity encoding is
timed apart and counted once. Goals: system <= 10% of the epoch at 100k; >= 20x cheaper than exhaustive at 18k.

    python3 bench/bench_train_eval.py [--entities 17805 100000 --steps 6 --exhaustive-dev 8]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TRAIN_PER_ENTITY, DEV_PER_ENTITY = 12473 / 17805, 2637 / 17805


def synthetic(n_entities: int, seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """Entity rows, train rows and dev rows (names only), names made of the sample KB's syllables."""
    from kb_builder.sample_kb import SYLLABLES

    rng = random.Random(seed)
    names = [
        " ".join(rng.choice(SYLLABLES) + rng.choice(SYLLABLES) for _ in range(2)) for _ in range(n_entities)
    ]
    entities = [
        {"entity_id": f"E{i}", "name": names[i], "description": "", "image_uris": []}
        for i in range(n_entities)
    ]

    def mentions(count: int, prefix: str) -> list[dict]:
        out = []
        for j in range(count):
            gold = rng.randrange(n_entities)
            out.append(
                {
                    "mention_id": f"{prefix}{j}",
                    "mention": names[gold],
                    "context": f"{names[gold]} {rng.choice(SYLLABLES)} {names[rng.randrange(n_entities)]}",
                    "image_uri": None,
                    "gold_entity_id": f"E{gold}",
                    "entity_name": names[gold],
                    "entity_description": "",
                    "entity_images": [],
                    "desc": "",
                }
            )
        return out

    return (
        entities,
        mentions(round(TRAIN_PER_ENTITY * n_entities), "t"),
        mentions(round(DEV_PER_ENTITY * n_entities), "d"),
    )


def step_seconds(cfg, model, builder, rows: list[dict], steps: int) -> float:
    """Seconds per optimiser step of the training loop's step code (1 thread = 1 worker CPU), after 1 warmup."""
    import torch

    from cluster.train.loop import entity_side, same_entity_mask
    from cluster.train.optim import build_optimizer
    from mmoe.losses import mmoe_loss

    model.train()
    optimizer = build_optimizer(model, cfg.train)
    bs = cfg.train.batch_size

    def step(batch):
        entity_rows, entity_ids = entity_side(batch, None, 0)
        out = model(builder.mentions(batch), builder.entities(entity_rows))
        mask = same_entity_mask([r["gold_entity_id"] for r in batch], entity_ids)
        loss, _ = mmoe_loss(out, torch.arange(len(batch)), cfg.mmoe, same_entity_mask=mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(rows[:bs])
    start = time.perf_counter()
    for i in range(steps):
        step(rows[(i + 1) * bs : (i + 2) * bs])
    model.eval()
    return (time.perf_counter() - start) / steps


def measure(cfg, model_dir: Path, n_entities: int, args) -> dict:
    import torch

    from cluster.evaluate.dev import dev_metrics, shared_entities
    from cluster.evaluate.protocols import candidate_ranks, exhaustive_ranks
    from cluster.inputs import BatchBuilder
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    entities, train, dev = synthetic(n_entities)
    model, processor = load_pretrained(model_dir)
    builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []))
    per_step = step_seconds(cfg, model, builder, train, args.steps)
    steps = -(-len(train) // (cfg.train.batch_size * args.workers))
    train_s = per_step * steps  # the workers step in parallel, each on its share
    ev = cfg.eval
    with torch.no_grad():
        t0 = time.perf_counter()
        feats = shared_entities(model, builder, entities, ev.batch_size, 0, 1)
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        top_k = cfg.train.dev_top_k
        system = candidate_ranks(model, builder, dev, feats, top_k, ev.batch_size, "system scoring")
        system_score_s = time.perf_counter() - t0
        subset = dev[: args.exhaustive_dev]
        t0 = time.perf_counter()
        exhaustive_ranks(
            model, builder, subset, feats, ev.batch_size, ev.entity_chunk, label="exhaustive scoring"
        )
        exhaustive_score_s = (time.perf_counter() - t0) * len(dev) / max(1, len(subset))
    del dev_metrics  # imported for the reader: dev_metrics = shared_entities + candidate/exhaustive ranks
    return {
        "entities": n_entities,
        "train": len(train),
        "dev": len(dev),
        "step_ms": per_step * 1000,
        "train_s": train_s,
        "encode_s": encode_s,
        "system_s": (encode_s + system_score_s) / args.workers,
        "exhaustive_s": (encode_s + exhaustive_score_s) / args.workers,
        "recall": float(system.retrieved.float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[17805, 100000])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--exhaustive-dev", type=int, default=8, help="dev mentions timed exhaustively")
    args = parser.parse_args()

    import torch

    from cluster.artifacts import ensure_kb
    from cluster.config import load_config
    from kb_builder.storage import Storage
    from workers.model_store import resolve_model_dir

    torch.set_num_threads(1)  # one worker CPU, as train.cpus_per_worker
    root = Path(tempfile.mkdtemp(prefix="bench-train-eval-"))
    cfg = load_config(
        overrides=[f"storage.root={root / 'data'}", f"storage.cache_dir={root / 'cache'}"]
        + ["kb.sample_entities=120", "kb.sample_mentions=400"]
    )
    ensure_kb(cfg, Storage(cfg.storage))
    model_dir = resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe)
    rows = [measure(cfg, model_dir, n, args) for n in args.entities]
    print(
        f"\nbench_train_eval: tiny model, batch {cfg.train.batch_size}, {args.workers} workers, "
        f"K=train.dev_top_k={cfg.train.dev_top_k}; exhaustive timed on {args.exhaustive_dev} dev mentions, extrapolated"
    )
    print("entities  train    dev  epoch train  dev system  dev exhaustive  system/epoch  exhaustive/system")
    for r in rows:
        print(
            f"{r['entities']:>8} {r['train']:>6} {r['dev']:>6} {r['train_s']:>10.0f}s {r['system_s']:>10.1f}s "
            f"{r['exhaustive_s']:>14.0f}s {r['system_s'] / r['train_s']:>12.1%} "
            f"{r['exhaustive_s'] / r['system_s']:>17.1f}x"
        )
    for r in rows:
        print(
            f"  {r['entities']}: {r['step_ms']:.0f} ms/step; entity encoding {r['encode_s']:.1f}s on one "
            f"process (shared by the workers); system recall@{cfg.train.dev_top_k} {r['recall']:.3f}"
        )


if __name__ == "__main__":
    main()
