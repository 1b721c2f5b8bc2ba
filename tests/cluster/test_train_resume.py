"""Fault tolerance: a worker that dies mid-run is replaced and the run resumes from the last checkpoint with the
same total step count; `--resume` continues a finished run for more epochs, and a re-run without it starts over.
Hard negatives on, so mining from Milvus and the extra entity columns are exercised too."""

from __future__ import annotations

import math

from tests.cluster.test_train import small_config

FAIL_AT_STEP = 3  # after the step-2 checkpoint (checkpoint_every_steps=2)


def test_worker_failure_resumes_then_resume_continues(tmp_path, ray_session, monkeypatch):
    from cluster.train.run import FAIL_AT_STEP_ENV, FAIL_MARKER_ENV, run_training

    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAIL_AT_STEP_ENV, str(FAIL_AT_STEP))
    monkeypatch.setenv(FAIL_MARKER_ENV, str(marker))
    cfg = small_config(
        tmp_path,
        [
            "train.epochs=2",
            "train.checkpoint_every_steps=2",
            "train.max_failures=1",
            "train.hard_negatives=2",
            "train.hard_negative_pool=5",
            "train.eval_every_epochs=2",
        ],
    )
    result = run_training(cfg)
    steps_per_epoch = math.ceil(result.train_mentions // cfg.train.num_workers / cfg.train.batch_size)
    assert marker.exists()  # the injected failure did fire
    assert result.history.restored_from_step == FAIL_AT_STEP - 1  # restarted from the step-2 checkpoint
    assert result.steps == 2 * steps_per_epoch  # no step lost, none counted twice
    assert [s for s, _ in result.history.losses] == list(range(1, result.steps + 1))

    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    cfg.train.epochs = 3
    resumed = run_training(cfg, resume=True)
    assert resumed.history.restored_from_step == 2 * steps_per_epoch
    assert resumed.steps == 3 * steps_per_epoch
    assert [d["epoch"] for d in resumed.history.dev] == [2]  # eval every 2 epochs: epoch 3 has none

    cfg.train.epochs = 1  # the same run name without --resume starts over: a new run, not the finished one
    fresh = run_training(cfg)
    assert fresh.history.restored_from_step is None
    assert fresh.steps == steps_per_epoch and [s for s, _ in fresh.history.losses] == list(
        range(1, fresh.steps + 1)
    )
