"""Ray Train end to end on the small sample KB: 2 CPU workers (DDP over gloo), 2 epochs, then both evaluation
protocols on the untrained and the trained model. Trained once per module; the tests assert outcomes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

EPOCHS = 2


def small_config(root: Path, extra: list[str]):
    from cluster.config import load_config

    return load_config(
        overrides=[
            f"storage.root={root / 'data'}",
            f"storage.cache_dir={root / 'cache'}",
            "kb.sample_entities=120",
            "kb.sample_mentions=400",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_session):
    from cluster.evaluate.run import run_eval
    from cluster.train.run import run_training

    # retrieve_k above the KB size: the system protocol must then reproduce the exhaustive one exactly
    cfg = small_config(tmp_path_factory.mktemp("train"), [f"train.epochs={EPOCHS}", "eval.retrieve_k=500"])
    untrained = run_eval(cfg, split="test")  # no run yet: the untrained models/init
    result = run_training(cfg)
    after = run_eval(cfg, split="test")  # the run's best model
    return cfg, untrained, result, after


def test_training_beats_the_untrained_model(trained):
    _, untrained, _, after = trained
    before_h1 = untrained.tables["exhaustive"]["hits@1"]
    after_h1 = after.tables["exhaustive"]["hits@1"]
    assert after.checkpoint.endswith("best") and untrained.checkpoint.endswith("init")
    assert after_h1 >= before_h1 + 0.2, (before_h1, after_h1)
    assert after.tables["exhaustive"]["mrr"] > untrained.tables["exhaustive"]["mrr"]


def test_step_count_and_history(trained):
    cfg, _, result, _ = trained
    per_worker = result.train_mentions // cfg.train.num_workers
    steps_per_epoch = math.ceil(per_worker / cfg.train.batch_size)
    assert result.steps == EPOCHS * steps_per_epoch
    assert [s for s, _ in result.history.losses] == list(range(1, result.steps + 1))
    assert [d["epoch"] for d in result.history.dev] == list(range(1, EPOCHS + 1))
    assert result.skipped_nil > 0  # the sample KB has ~1% NIL mentions: skipped, counted
    assert "best dev" in result.summary()


def test_best_model_is_a_loadable_mmoe_folder_with_calibration(trained):
    from mmoe.pretrained import load_pretrained

    _, _, result, after = trained
    model, processor = load_pretrained(result.best_dir)
    assert model.retrieval_dim > 0 and processor.text_max_tokens == model.config.text_max_tokens
    calibration = json.loads((Path(result.best_dir) / "calibration.json").read_text())
    assert calibration["nil_threshold"] == pytest.approx(after.calibration["nil_threshold"])
    recipe = json.loads((Path(result.best_dir) / "mention_text.json").read_text())
    assert recipe["dme"] is False and recipe["selector"] == "embedding" and recipe["kb_version"]
    assert after.mention_text == recipe  # mel eval built the mention text the way training did


def test_protocols_agree_when_k_covers_the_kb(trained):
    _, untrained, _, after = trained
    for report in (untrained, after):
        assert report.retrieve_k >= report.entities
        assert report.tables["system"] == report.tables["exhaustive"]
        assert report.recall_at_k["system"] == 1.0


def test_run_reports_exist(trained):
    cfg, _, result, after = trained
    reports = Path(result.run_dir) / "reports"
    for name in ("loss.png", "dev.png", "train_history.json", "metrics.json", "metrics.md"):
        assert (reports / name).stat().st_size > 0, name
    assert (reports / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["tables"]["exhaustive"]["hits@1"] == pytest.approx(after.tables["exhaustive"]["hits@1"])
    md = (reports / "metrics.md").read_text()
    assert f"| exhaustive | {100 * after.tables['exhaustive']['hits@1']:.2f} |" in md
    history = json.loads((reports / "train_history.json").read_text())
    assert history["step"] == result.steps


@pytest.mark.slow
def test_same_seed_gives_identical_losses_across_two_workers(trained):
    """Data order (every worker slices one seeded order by rank), init and sampling depend on train.seed only:
    a second run of the same config on CPU repeats every loss exactly."""
    import dataclasses

    from cluster.train.run import run_training

    cfg, _, first, _ = trained
    again = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, run_name=cfg.train.run_name + "-again")
    )
    assert cfg.train.num_workers == 2
    second = run_training(again)
    assert second.history.losses == first.history.losses
