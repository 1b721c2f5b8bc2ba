"""A Ray Train worker process dies (issue 9, 1d): SIGKILLed from outside once the first checkpoint is registered, not an
exception raised by the loop (that path, through cluster/train.py's MEL_FAULT_TRAIN_FAIL_AT_STEP hook, is
tests/cluster/test_train_resume.py). The worker group restarts from the last checkpoint and the run reaches the
planned step count, every step counted once."""

from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path

import pytest

from cluster.config import load_config
from tests.faults.helpers import require_free_cpus
from tests.fixtures import wait_until


def train_worker_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return sorted(pids)


def checkpoint_registered(folder: Path) -> bool:
    """Ray Train has recorded a checkpoint in its manager snapshot (a checkpoint folder alone may still be in
    flight: killing then would rightly restart from scratch)."""
    snapshot = folder / "checkpoint_manager_snapshot.json"
    try:
        return "checkpoint_" in snapshot.read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_sigkilled_train_worker_resumes_from_checkpoint_to_the_planned_steps(tmp_path, ray_session):
    from cluster.train.run import run_training

    cfg = load_config(
        overrides=[
            f"storage.root={tmp_path / 'data'}",
            f"storage.cache_dir={tmp_path / 'cache'}",
            "kb.sample_entities=120",
            "kb.sample_mentions=400",
            "train.epochs=3",
            "train.checkpoint_every_steps=2",
            "train.max_failures=1",
            "train.eval_every_epochs=3",
        ]
    )
    require_free_cpus(cfg.train.num_workers * cfg.train.cpus_per_worker)
    checkpoints = tmp_path / "data" / "runs" / cfg.train.run_name / "checkpoints"
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_training(cfg)), daemon=True)
    runner.start()

    def cue():  # the first checkpoint is the cue, not a clock; a finished run ends the wait too
        if not runner.is_alive():
            return "ended"
        pids = checkpoint_registered(checkpoints) and train_worker_pids()
        return pids[-1] if pids else None

    found = wait_until(cue, timeout_s=900, interval_s=0.05, what="the first checkpoint of the run")
    killed = None if found == "ended" else found
    if killed is not None:
        os.kill(killed, signal.SIGKILL)
    runner.join()
    assert killed is not None, "the run ended before a worker could be killed"
    result = outcome["result"]
    steps_per_epoch = math.ceil(result.train_mentions // cfg.train.num_workers / cfg.train.batch_size)
    assert result.history.restored_from_step is not None and result.history.restored_from_step >= 2
    assert result.steps == 3 * steps_per_epoch  # the planned step count
    assert [s for s, _ in result.history.losses] == list(
        range(1, result.steps + 1)
    )  # no step lost or doubled
