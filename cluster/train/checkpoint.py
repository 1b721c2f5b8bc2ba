"""What a training checkpoint holds, and how a worker restores from one.

A checkpoint folder is self-describing: `model/` is a complete MMoE save (mmoe.pretrained: safetensors, never
pickle), `train_state.pt` holds optimiser and scheduler tensors (loaded with weights_only=True), and
`history.json` the loop's counters and curves, so a restarted worker group (worker failure) or `mel train
--resume` continues at the same step with the same optimiser moments and lr.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

MODEL_SUBDIR = "model"
STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"


@dataclass
class LoopState:
    """Counters and curves of one run; travels in every checkpoint."""

    step: int = 0  # optimiser steps done (all workers step together)
    epoch: int = 0  # epochs fully done
    best_mrr: float = -1.0  # best dev MRR so far
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    stopped_early: bool = False
    losses: list[list[float]] = field(default_factory=list)  # [[step, loss], ...]
    dev: list[dict] = field(default_factory=list)  # one dict per dev evaluation (epoch, step, metrics)
    restored_from_step: int | None = None  # set when this attempt started from a checkpoint


def save_checkpoint(model, processor, optimizer, scheduler, state: LoopState) -> tempfile.TemporaryDirectory:
    """Write a checkpoint folder (rank 0 only); the caller reports it, then cleans the temp folder up."""
    from mmoe.pretrained import save_pretrained

    tmp = tempfile.TemporaryDirectory(prefix="mel-ckpt-")
    root = Path(tmp.name)
    save_pretrained(root / MODEL_SUBDIR, getattr(model, "module", model), processor)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, root / STATE_FILE)
    (root / HISTORY_FILE).write_text(json.dumps(asdict(state)))
    return tmp


def restore_checkpoint(checkpoint, model, optimizer, scheduler) -> LoopState:
    """Load model, optimiser, scheduler and counters from a Ray Train checkpoint (None: a fresh state)."""
    if checkpoint is None:
        return LoopState()
    from mmoe.pretrained import load_pretrained

    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        saved, _ = load_pretrained(folder / MODEL_SUBDIR)
        getattr(model, "module", model).load_state_dict(saved.state_dict())
        tensors = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
        state = LoopState(**json.loads((folder / HISTORY_FILE).read_text()))
    state.restored_from_step = state.step
    return state


def read_history(folder: str | Path) -> LoopState:
    return LoopState(**json.loads((Path(folder) / HISTORY_FILE).read_text()))
