"""`optimizer_step`, the one step code that `Trainer` runs under DDP and the training benchmarks run bare:
on the sample KB's train mentions and the untrained tiny model it learns, clips and advances the schedule."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture
def step_parts(sample_kb):
    from cluster.inputs import BatchBuilder, linked_mentions
    from cluster.train.optim import build_optimizer, seed_everything
    from mmoe.pretrained import load_pretrained
    from workers.images import ImageLoader

    cfg, storage, model_dir = sample_kb
    rows = linked_mentions(storage, cfg.kb.name, "train")[0].to_dicts()[:8]
    torch.set_num_threads(1)
    seed_everything(cfg.train.seed)
    model, processor = load_pretrained(model_dir)
    model.train()
    builder = BatchBuilder(processor, ImageLoader(cfg.encoder, cfg.storage, []))
    return cfg, model, builder, build_optimizer(model, cfg.train), rows


def _grad_norm(model) -> float:
    return float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))


def test_repeated_steps_on_one_batch_lower_its_loss(step_parts):
    from cluster.train.loop import optimizer_step

    cfg, model, builder, optimizer, rows = step_parts
    losses = [optimizer_step(model, builder, optimizer, cfg, rows) for _ in range(12)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_gradients_are_clipped_to_the_configured_norm(step_parts):
    from cluster.train.loop import optimizer_step

    cfg, model, builder, optimizer, rows = step_parts
    cfg.train.grad_clip_norm = None
    optimizer_step(model, builder, optimizer, cfg, rows)
    unclipped = _grad_norm(model)
    cfg.train.grad_clip_norm = unclipped / 100
    optimizer_step(model, builder, optimizer, cfg, rows)
    assert unclipped > 0 and _grad_norm(model) <= unclipped / 100 * (1 + 1e-4)


def test_the_scheduler_advances_once_per_step(step_parts):
    from cluster.train.loop import optimizer_step
    from cluster.train.optim import build_scheduler, lr_factor

    cfg, model, builder, optimizer, rows = step_parts
    cfg.train.warmup_steps = 4
    scheduler = build_scheduler(optimizer, cfg.train, 10)
    for _ in range(3):
        optimizer_step(model, builder, optimizer, cfg, rows, scheduler=scheduler)
    assert scheduler.last_epoch == 3
    expected = cfg.train.lr * lr_factor(3, 10, 4, cfg.train.lr_schedule)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
