"""`mel train`: fine-tune MMoE with Ray Train (TorchTrainer, DDP) and keep the best model by dev MRR.

Checkpoints go to `<root>/runs/<run_name>/checkpoints/` (local or s3://), the best model (MMoE save format) to
`runs/<run_name>/best/`, curves and history to `runs/<run_name>/reports/`. A failed worker restarts the worker
group from the last checkpoint (train.max_failures); `--resume` continues a stopped run from its last one.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster.artifacts import best_model, ensure_kb, run_dir, write_mention_recipe
from cluster.train.checkpoint import MODEL_SUBDIR, LoopState

FAIL_AT_STEP_ENV = "MEL_FAULT_TRAIN_FAIL_AT_STEP"  # test hook: the last rank raises once at this step
FAIL_MARKER_ENV = "MEL_FAULT_TRAIN_MARKER"  # ... and leaves this file so that it fires only once
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class TrainResult:
    run_dir: str  # <root>/runs/<run_name>
    best_dir: str  # <root>/runs/<run_name>/best (MMoE save format)
    metrics: dict  # best dev metrics, plus steps and throughput
    history: LoopState = field(default_factory=LoopState)
    train_mentions: int = 0
    skipped_nil: int = 0
    wall_s: float = 0.0

    @property
    def steps(self) -> int:
        return self.history.step

    def summary(self) -> str:
        dev = self.history.dev
        best = max(dev, key=lambda d: d["mrr"]) if dev else {}
        lines = [
            f"trained {self.train_mentions} mentions ({self.skipped_nil} NIL skipped): {self.history.step} steps, "
            f"{self.history.epoch} epochs in {self.wall_s:.1f}s"
            + (" (stopped early)" if self.history.stopped_early else ""),
            f"best dev (epoch {best.get('epoch', '-')}): hits@1 {best.get('hits@1', float('nan')):.4f} "
            f"mrr {best.get('mrr', float('nan')):.4f}",
            f"best model: {self.best_dir}",
            f"reports:    {self.run_dir}/reports",
        ]
        return "\n".join(lines)


def checkpoint_storage(storage_cfg, run_uri: str):
    """(storage_path, pyarrow filesystem or None) for RunConfig; s3:// uses the configured endpoint."""
    from kb_builder.storage import is_s3, split_s3

    if not is_s3(run_uri):
        return str(Path(run_uri).expanduser().resolve()), None
    import boto3
    import pyarrow.fs

    creds = boto3.Session().get_credentials()
    frozen = creds.get_frozen_credentials() if creds else None
    endpoint = storage_cfg.s3_endpoint_url
    fs = pyarrow.fs.S3FileSystem(
        access_key=frozen.access_key if frozen else None,
        secret_key=frozen.secret_key if frozen else None,
        session_token=frozen.token if frozen else None,
        region=storage_cfg.s3_region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
        scheme=endpoint.split("://", 1)[0] if endpoint else "https",
        # Small objects (Ray Train's marker files) go up in one PUT, not as a multipart upload that some
        # S3-compatible servers (moto) answer in a form pyarrow rejects.
        allow_delayed_open=True,
    )
    bucket, key = split_s3(run_uri)
    return f"{bucket}/{key}", fs


def clear_dir(storage, uri: str) -> None:
    """Remove a folder's files (local or s3://) so a fresh run does not inherit old checkpoints."""
    from kb_builder.storage import is_s3

    if is_s3(uri):
        for item in storage.list(uri.rstrip("/") + "/"):
            storage.delete(item)
    else:
        shutil.rmtree(Path(uri).expanduser(), ignore_errors=True)


def prepare_data(cfg, storage, model_dir: Path) -> dict:
    """Train mentions (joined with gold rows, DME desc, subset, hard negatives), dev rows and entity rows."""
    from cluster.dme.enhance import dme_selections
    from cluster.inputs import entity_rows, linked_mentions, train_subset

    dme, recipe = dme_selections(cfg, storage)
    train, nil = linked_mentions(storage, cfg.kb.name, "train", dme)
    train = train_subset(train, cfg.train.train_fraction, cfg.train.seed)
    dev, _ = linked_mentions(storage, cfg.kb.name, "dev", dme)
    entities = entity_rows(storage, cfg.kb.name)
    if cfg.train.hard_negatives > 0:
        from cluster.train.negatives import mine_hard_negatives

        train = mine_hard_negatives(cfg, storage, model_dir, train, entities)
    return {"train": train, "nil": nil, "dev_rows": dev.to_dicts(), "entity_rows": entities, "recipe": recipe}


def build_trainer(
    cfg, model_dir: Path, data: dict, storage_path: str, filesystem, loop_fn=None, extra: dict | None = None
):
    """TorchTrainer: N workers x cpus_per_worker (the V2 controller itself reserves no CPU).

    `loop_fn` / `extra` swap in another per-worker function and config keys (bench/bench_train.py).
    """
    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    from cluster.train.loop import train_loop_per_worker

    tc = cfg.train
    ray.data.DataContext.get_current().enable_progress_bars = False
    fail_at = os.environ.get(FAIL_AT_STEP_ENV)
    resources = {"CPU": tc.cpus_per_worker, **({"GPU": 1} if tc.use_gpu else {}), **tc.resources_per_worker}
    entity_lookup = {r["entity_id"]: r for r in data["entity_rows"]} if tc.hard_negatives > 0 else None
    loop_config = {
        "cfg": cfg,
        "model_dir": str(model_dir),
        "rows_per_worker": data["train"].height // tc.num_workers,
        "dev_rows": data["dev_rows"],
        "entity_rows": data["entity_rows"],
        "entity_lookup": entity_lookup,
        "fail_at_step": int(fail_at) if fail_at else None,
        "fail_marker": os.environ.get(FAIL_MARKER_ENV),
        **(extra or {}),
    }
    return TorchTrainer(
        loop_fn or train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=CHECKPOINTS_DIR,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="dev_mrr", checkpoint_score_order="max"
            ),  # the best by dev MRR; Ray Train always keeps the latest too
            failure_config=FailureConfig(max_failures=tc.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # our own progress lines, not Ray's chatter
        ),
        datasets={"train": ray.data.from_arrow(data["train"].to_arrow())},
        dataset_config=DataConfig(datasets_to_split=[]),  # every worker slices it by rank: seeded order
    )


def export_best(result, storage, best_uri: str) -> LoopState:
    """Copy the best checkpoint's model to `best_uri`; return the latest checkpoint's history."""
    from cluster.train.checkpoint import read_history

    with result.checkpoint.as_directory() as latest:
        history = read_history(latest)
    best = result.get_best_checkpoint("dev_mrr", "max") if history.dev else None
    best = best or result.checkpoint
    clear_dir(storage, best_uri)
    with best.as_directory() as folder:
        storage.upload_dir(Path(folder) / MODEL_SUBDIR, best_uri)
    return history


def run_training(cfg, resume: bool = False) -> TrainResult:
    """Train, keep the best model by dev MRR, write curves; see the module docstring for the layout."""
    from cluster.evaluate.reports import write_training_reports
    from cluster.runtime import init_ray
    from kb_builder.storage import Storage
    from workers.model_store import resolve_model_dir

    start = time.monotonic()
    init_ray(cfg.ray)
    storage = Storage(cfg.storage)
    ensure_kb(cfg, storage)
    model_dir = resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe)
    data = prepare_data(cfg, storage, model_dir)
    run_uri = run_dir(storage, cfg.train.run_name)
    if not resume:
        clear_dir(storage, f"{run_uri.rstrip('/')}/{CHECKPOINTS_DIR}")  # run_uri is already under the root
    print(
        f"[train] {data['train'].height} train mentions, {len(data['dev_rows'])} dev, "
        f"{len(data['entity_rows'])} entities; {cfg.train.num_workers} workers; run {run_uri}"
        + (" (resuming)" if resume else "")
    )
    storage_path, filesystem = checkpoint_storage(cfg.storage, run_uri)
    result = build_trainer(cfg, model_dir, data, storage_path, filesystem).fit()
    best_uri = best_model(storage, cfg.train.run_name)
    history = export_best(result, storage, best_uri)
    write_mention_recipe(storage, best_uri, data["recipe"])  # how mention text was built (DME parity)
    train_result = TrainResult(
        run_dir=run_uri,
        best_dir=best_uri,
        metrics=best_dev_metrics(history),
        history=history,
        train_mentions=data["train"].height,
        skipped_nil=data["nil"],
        wall_s=time.monotonic() - start,
    )
    write_training_reports(storage, run_uri, history)
    return train_result


def best_dev_metrics(history: LoopState) -> dict:
    best = max(history.dev, key=lambda d: d["mrr"]) if history.dev else {}
    return {**{f"dev_{k}": v for k, v in best.items()}, "steps": history.step, "epochs": history.epoch}
