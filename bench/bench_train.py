"""Training step time: Ray Train (TorchTrainer, 1 worker) vs a plain PyTorch loop on the same model, data and
step code (goal: ratio plain/Ray >= 0.95), then 2 workers vs 1 in samples/s. Prints ratios from one run.

    python3 bench/bench_train.py [--entities 120 --mentions 400 --steps 8 --batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WARMUP_STEPS = 2


def timed_steps(step_fn, batches: list, steps: int) -> float:
    """Seconds per step over `steps` batches after a warmup (batches cycle when there are fewer)."""
    for i in range(WARMUP_STEPS):
        step_fn(batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(steps):
        step_fn(batches[(WARMUP_STEPS + i) % len(batches)])
    return (time.perf_counter() - start) / steps


def plain_loop(cfg, model_dir: Path, rows: list[dict], steps: int) -> float:
    """The training loop's step (`optimizer_step`, as `Trainer.step`), with no Ray and no DDP, on 1 thread
    (= 1 worker CPU)."""
    import torch

    from cluster.inputs import BatchBuilder
    from cluster.train.loop import optimizer_step
    from cluster.train.optim import build_optimizer, build_scheduler, seed_everything
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    torch.set_num_threads(int(cfg.train.cpus_per_worker))
    seed_everything(cfg.train.seed)
    model, processor = load_pretrained(model_dir)
    model.train()
    builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []))
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps + WARMUP_STEPS)

    def step(batch):
        optimizer_step(model, builder, optimizer, cfg, batch, scheduler=scheduler)

    bs = cfg.train.batch_size
    return timed_steps(step, [rows[i : i + bs] for i in range(0, len(rows) - bs + 1, bs)], steps)


def bench_worker_loop(config: dict) -> dict:
    """Runs inside Ray Train: the real Trainer (DDP when 2 workers), timing only its optimiser steps."""
    import torch

    from cluster.train.loop import Trainer, epoch_batches

    torch.set_num_threads(int(config["cfg"].train.cpus_per_worker))
    trainer = Trainer(config)
    tc = trainer.cfg.train
    import ray.train

    context = ray.train.get_context()
    batches = epoch_batches(
        trainer.shard,
        config["rows_per_worker"],
        tc.batch_size,
        tc.seed,
        0,
        context.get_world_rank(),
        context.get_world_size(),
    )
    batches = [b for b in batches if len(b) == tc.batch_size]  # full batches only, as the plain loop
    return {"step_s": timed_steps(trainer.step, batches, config["bench_steps"])}


def ray_train(cfg, model_dir: Path, data: dict, workers: int, steps: int, root: Path) -> float:
    from cluster.train.run import build_trainer

    cfg.train.num_workers = workers
    trainer = build_trainer(
        cfg, model_dir, data, str(root / f"ray-{workers}"), None, bench_worker_loop, {"bench_steps": steps}
    )
    return trainer.fit().return_value["step_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=120)
    parser.add_argument("--mentions", type=int, default=400)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from cluster.artifacts import ensure_kb
    from cluster.config import load_config
    from cluster.runtime import init_ray
    from cluster.train.run import prepare_data
    from kb_builder.storage import Storage
    from workers.model_store import resolve_model_dir

    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = load_config(
        overrides=[
            f"storage.root={root / 'data'}",
            f"storage.cache_dir={root / 'cache'}",
            f"train.batch_size={args.batch_size}",
            f"kb.sample_entities={args.entities}",
            f"kb.sample_mentions={args.mentions}",
            "ray.object_store_memory_mb=300",
        ]
    )
    storage = Storage(cfg.storage)
    ensure_kb(cfg, storage)
    model_dir = resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe)
    data = prepare_data(cfg, storage, model_dir)
    rows = data["train"].to_dicts()
    bs = cfg.train.batch_size
    print(
        f"bench_train: {len(rows)} train mentions, batch {bs}, {args.steps} timed steps after {WARMUP_STEPS}"
    )

    plain_s = plain_loop(cfg, model_dir, rows, args.steps)
    init_ray(cfg.ray)
    ray1_s = ray_train(cfg, model_dir, data, 1, args.steps, root)
    ray2_s = ray_train(cfg, model_dir, data, 2, args.steps, root)
    print(f"plain PyTorch loop : {plain_s * 1000:8.1f} ms/step  {bs / plain_s:7.1f} samples/s")
    print(f"Ray Train 1 worker : {ray1_s * 1000:8.1f} ms/step  {bs / ray1_s:7.1f} samples/s")
    print(f"Ray Train 2 workers: {ray2_s * 1000:8.1f} ms/step  {2 * bs / ray2_s:7.1f} samples/s")
    print(f"ratio plain/Ray(1) step time: {plain_s / ray1_s:.3f}  (goal >= 0.95)")
    print(f"scaling 2 vs 1 workers (samples/s): {(2 * bs / ray2_s) / (bs / ray1_s):.3f}x  (ideal 2.0)")


if __name__ == "__main__":
    main()
