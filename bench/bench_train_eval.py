"""One epoch's training time against its dev evaluation under each protocol, at the size of a real KB.

A synthetic names-only KB (no descriptions or images, like the MELBench KB of issue 22: 17,805 entities,
12,473 train and 2,637 dev mentions, so train = 0.70 N and dev = 0.148 N) and the untrained tiny model.
Each of `--workers` spawned gloo ranks (one thread each, as `train.cpus_per_worker: 1`) does what a `mel train`
worker does: `--steps` timed steps of the real step code (`cluster.train.loop.optimizer_step`) on its share of
the train rows under DDP, side by side, then the system dev evaluation (`cluster.evaluate.dev.dev_metrics`),
twice (the first epoch's, then a later one's, texts already tokenized). Training time = the slowest rank's
s/step x the epoch's steps per worker; the same steps in one process with the other core idle are printed
beside it. System dev eval = wall time of the slowest rank, split by phase. The exhaustive protocol is timed on
`--exhaustive-dev` dev mentions on one process and extrapolated linearly to the dev set (its cost is linear in
mentions); its entity encoding is timed whole; both are divided by the worker count (a perfect split).
Goals: system <= 10% of the epoch at 100k; >= 20x cheaper than exhaustive at 18k.

    python3 bench/bench_train_eval.py [--entities 17805 100000 --steps 30 --exhaustive-dev 8]
"""

from __future__ import annotations

import argparse
import os
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


def step_seconds(cfg, model, builder, rows: list[dict], steps: int) -> tuple[float, float]:
    """Wall and CPU seconds per optimiser step of the training loop's step code (1 thread = 1 worker CPU),
    after 1 warmup."""
    from cluster.train.loop import optimizer_step
    from cluster.train.optim import build_optimizer, build_scheduler

    model.train()
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps + 1)
    bs = cfg.train.batch_size

    def step(batch):
        optimizer_step(model, builder, optimizer, cfg, batch, scheduler=scheduler)

    step(rows[:bs])
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(rows[(i + 1) * bs : (i + 2) * bs])
    model.eval()
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def _worker_rank(rank: int, world: int, port: int, args: tuple, out_dir: Path) -> None:
    """One spawned worker, as in `mel train`: `steps` timed training steps on its share of the train rows under
    DDP (gradients all-reduced over gloo, the workers stepping side by side), then the system dev evaluation,
    twice; writes its step times, metrics and phase timings."""
    import json

    import torch

    from cluster.evaluate.dev import dev_metrics
    from cluster.inputs import BatchBuilder
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    cfg, model_dir, dev, entities, train, steps = args
    torch.set_num_threads(1)  # one worker CPU, as train.cpus_per_worker
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model, processor = load_pretrained(model_dir)
        builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []))
        # what the Trainer's ray.train prepare_model does on CPU (unrouted experts get no grad)
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        per_step, cpu_per_step = step_seconds(cfg, ddp, builder, train[rank::world], steps)
        runs = []
        for _ in ("first epoch", "later epochs"):  # the later ones find the texts tokenized (BatchBuilder)
            torch.distributed.barrier()
            timings: dict[str, float] = {}
            start, cpu = time.perf_counter(), time.process_time()
            metrics = dev_metrics(
                ddp, builder, dev, entities, cfg.eval, "system", rank, world, cfg.train.dev_top_k, timings
            )
            timings["total"], timings["cpu"] = time.perf_counter() - start, time.process_time() - cpu
            runs.append(timings)
        out = {
            "metrics": metrics,
            "timings": runs[0],
            "later": runs[1],
            "step_s": per_step,
            "step_cpu_s": cpu_per_step,
        }
        (out_dir / f"rank{rank}.json").write_text(json.dumps(out))
        torch.distributed.barrier()  # no rank tears its gloo pairs down while the other still reads from them
    finally:
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # no interpreter finalization: gloo's threads may still hold tensors (it aborted a rank once)


def worker_runs(
    cfg, model_dir: Path, dev: list[dict], entities: list[dict], train: list[dict], workers: int, steps: int
) -> list[dict]:
    """`workers` spawned gloo ranks (spawn, never fork) training then evaluating: each rank's results."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free port for the gloo rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out_dir = Path(tempfile.mkdtemp(prefix="bench-dev-ranks-"))
    os.environ["OMP_NUM_THREADS"] = (
        "1"  # numpy's BLAS in the ranks on one thread too, as Ray sets for a 1-CPU worker
    )
    args = (workers, port, (cfg, model_dir, dev, entities, train, steps), out_dir)
    mp.spawn(_worker_rank, args=args, nprocs=workers)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(workers)]


def measure(cfg, model_dir: Path, n_entities: int, args) -> dict:
    import torch

    from cluster.evaluate.features import encode_entities
    from cluster.evaluate.protocols import exhaustive_ranks
    from cluster.inputs import BatchBuilder
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    entities, train, dev = synthetic(n_entities)
    model, processor = load_pretrained(model_dir)
    builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []))
    alone_s, _ = step_seconds(cfg, model, builder, train, args.steps)  # one process, the other core idle
    ranks = worker_runs(cfg, model_dir, dev, entities, train, args.workers, args.steps)
    # the workers step in lockstep (DDP): the slowest sets the pace
    per_step = max(r["step_s"] for r in ranks)
    cpu_per_step = max(r["step_cpu_s"] for r in ranks)
    steps = -(-len(train) // (cfg.train.batch_size * args.workers))
    train_s = per_step * steps  # the workers step in parallel, each on its share
    slowest = max(ranks, key=lambda r: r["timings"]["total"])
    ev = cfg.eval
    model, processor = load_pretrained(model_dir)  # untrained: costs do not depend on the weights
    with torch.no_grad():
        t0 = time.perf_counter()
        feats = encode_entities(model, builder, entities, ev.entity_batch_size, "exhaustive: entity encoding")
        encode_s = time.perf_counter() - t0
        subset = dev[: args.exhaustive_dev]
        t0 = time.perf_counter()
        exhaustive_ranks(
            model, builder, subset, feats, ev.batch_size, ev.entity_chunk, label="exhaustive scoring"
        )
        exhaustive_score_s = (time.perf_counter() - t0) * len(dev) / max(1, len(subset))
    top_k = cfg.train.dev_top_k
    return {
        "entities": n_entities,
        "train": len(train),
        "dev": len(dev),
        "step_ms": per_step * 1000,
        "alone_ms": alone_s * 1000,
        "train_s": train_s,
        "system_s": slowest["timings"]["total"],
        "train_cpu_s": cpu_per_step * steps,
        "system_cpu_s": max(r["timings"]["cpu"] for r in ranks),
        "later_s": max(r["later"]["total"] for r in ranks),
        "later_cpu_s": max(r["later"]["cpu"] for r in ranks),
        "phases": slowest["timings"],
        "exhaustive_s": (encode_s + exhaustive_score_s) / args.workers,
        "recall": ranks[0]["metrics"][f"recall@{top_k}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[17805, 100000])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--exhaustive-dev", type=int, default=8, help="dev mentions timed exhaustively")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
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
        + ["kb.sample_entities=120", "kb.sample_mentions=400", *args.set]
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
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in r["phases"].items() if k not in ("total", "cpu"))
        print(
            f"  {r['entities']}: {r['step_ms']:.0f} ms/step on the DDP workers ({r['alone_ms']:.0f} ms/step "
            f"alone in one process); system dev on the slowest rank: {phases}; "
            f"recall@{cfg.train.dev_top_k} {r['recall']:.3f}; CPU seconds (robust to a loaded machine): "
            f"epoch {r['train_cpu_s']:.1f}s per worker, system dev {r['system_cpu_s']:.1f}s on the busiest "
            f"rank = {r['system_cpu_s'] / r['train_cpu_s']:.1%}; a later epoch's dev evaluation (texts already "
            f"tokenized): {r['later_s']:.1f}s wall = {r['later_s'] / r['train_s']:.1%}, "
            f"{r['later_cpu_s']:.1f}s CPU = {r['later_cpu_s'] / r['train_cpu_s']:.1%}"
        )


if __name__ == "__main__":
    main()
