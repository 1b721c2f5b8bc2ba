"""Optimiser, learning-rate schedule and seeding, as the reference describes (section 1, training).

AdamW with eps 1e-4 and weight decay 1e-4 not applied to biases or LayerNorm weights; an optional warmup then
constant / cosine / linear decay (the official code uses a constant lr and no warmup).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

SCHEDULES = ("constant", "cosine", "linear")


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators from one seed (train.seed; the official code uses 43)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and biases + norm weights (1-D parameters) without decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm_or_bias = param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()
        (no_decay if is_norm_or_bias else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, train_cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, train_cfg.weight_decay), lr=train_cfg.lr, eps=train_cfg.adam_eps
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at `step`: linear warmup, then the chosen decay to 0 at `total_steps`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer, train_cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, train_cfg.warmup_steps, train_cfg.lr_schedule),
    )
