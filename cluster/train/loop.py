"""The per-worker training loop that Ray Train's TorchTrainer runs on every worker (DDP over gloo or nccl).

Each worker reads its shard of the train mentions (Ray Data), scores each mention against the batch's gold
entities (+ optional index-mined hard negatives) and minimises the MMoE loss (reference section 1: losses,
training). At epoch ends every worker takes a share of the dev evaluation (`train.dev_protocol`, see
`cluster.evaluate.dev`) and, when `train.negatives_refresh_epochs` is set, re-mines its hard negatives. Rank 0
writes checkpoints and prints progress; every worker takes part in `ray.train.report`, so a restarted worker
group resumes at the same step from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from pathlib import Path

import torch

from cluster.inputs import BatchBuilder, gold_entity_row
from cluster.train.checkpoint import restore_checkpoint, save_checkpoint


def epoch_batches(
    shard, rows_per_worker: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[dict]]:
    """This worker's rows for one epoch, cut into batches (every worker: the same count).

    Every worker reads the whole (unsplit) dataset, sorts it by mention_id, shuffles it with the seed and the
    epoch and takes its own slice by rank: the data order depends on train.seed only, never on how Ray Data
    happened to hand out blocks, so two runs with one seed see the same batches.
    """
    rows = []
    for block in shard.iter_batches(batch_size=4096, batch_format="pyarrow"):
        rows += block.to_pylist()
    if len(rows) < rows_per_worker * world_size:
        raise RuntimeError(
            f"the dataset has {len(rows)} rows, fewer than the {rows_per_worker} x {world_size} planned"
        )
    rows = sorted(rows, key=lambda r: r["mention_id"])
    random.Random(seed * 1000 + epoch).shuffle(rows)
    rows = rows[rank * rows_per_worker : (rank + 1) * rows_per_worker]
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def entity_side(
    batch: list[dict], entity_lookup: dict | None, hard_negatives: int
) -> tuple[list[dict], list[str]]:
    """The batch's gold entities (row i = mention i's gold) followed by its hard negatives."""
    rows = [gold_entity_row(r) for r in batch]
    if hard_negatives > 0 and entity_lookup:
        for r in batch:
            rows += [entity_lookup[eid] for eid in (r.get("hard_negative_ids") or [])[:hard_negatives]]
    return rows, [r["entity_id"] for r in rows]


def same_entity_mask(gold_ids: list[str], entity_ids: list[str]) -> torch.Tensor:
    """[B,N] True where entity j is mention i's gold entity but not its label column (a false negative)."""
    mask = torch.tensor([[g == e for e in entity_ids] for g in gold_ids], dtype=torch.bool)
    mask[torch.arange(len(gold_ids)), torch.arange(len(gold_ids))] = False
    return mask


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def optimizer_step(
    model,
    builder: BatchBuilder,
    optimizer,
    cfg,
    batch: list[dict],
    *,
    scheduler=None,
    entity_lookup: dict | None = None,
    device=None,
    autocast=contextlib.nullcontext,
) -> float:
    """One optimiser step on one batch; returns the loss. The one step code: `Trainer` runs it under DDP, the
    training benchmarks run it bare, so what they time is what training does."""
    from mmoe.losses import mmoe_loss

    device = device or torch.device("cpu")
    entity_rows, entity_ids = entity_side(batch, entity_lookup, cfg.train.hard_negatives)
    gold_ids = [r["gold_entity_id"] for r in batch]
    mentions = to_device(builder.mentions(batch), device)
    entities = to_device(builder.entities(entity_rows), device)
    labels = torch.arange(len(batch), device=device)  # mention i's gold is entity column i
    mask = same_entity_mask(gold_ids, entity_ids).to(device)
    with autocast():
        output = model(mentions, entities)
        loss, _parts = mmoe_loss(output, labels, cfg.mmoe, same_entity_mask=mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


def maybe_inject_failure(config: dict, rank: int, world: int, step: int) -> None:
    """Test hook (fault-tolerance test): the last rank raises once at `fail_at_step`, marked by a file."""
    at, marker = config.get("fail_at_step"), config.get("fail_marker")
    if at is None or not marker or rank != world - 1 or step != at or Path(marker).exists():
        return
    Path(marker).write_text(f"failed at step {step}\n")
    raise RuntimeError(f"injected worker failure at step {step} (rank {rank})")


class Trainer:
    """One worker's model, optimiser and loop state; `run()` trains to the end or to early stopping."""

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch

        from cluster.train.optim import build_optimizer, build_scheduler, seed_everything
        from mmoe.pretrained import load_pretrained
        from workers.images import ImageLoader

        self.config, self.cfg = config, config["cfg"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        seed_everything(self.cfg.train.seed)  # same seed everywhere: DDP replicas start identical
        self.device = ray.train.torch.get_device()
        model, self.processor = load_pretrained(config["model_dir"])
        model.train()  # load_pretrained returns eval mode
        self.model = ray.train.torch.prepare_model(
            model,
            parallel_strategy_kwargs={"find_unused_parameters": True},  # unrouted experts get no grad
        )
        self.builder = BatchBuilder(
            self.processor, ImageLoader.for_kb(self.cfg.encoder, self.cfg.storage, self.cfg.kb)
        )
        self.optimizer = build_optimizer(self.model, self.cfg.train)
        self.steps_per_epoch = math.ceil(config["rows_per_worker"] / self.cfg.train.batch_size)
        self.total_steps = self.steps_per_epoch * self.cfg.train.epochs
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train, self.total_steps)
        self.state = restore_checkpoint(
            ray.train.get_checkpoint(), self.model, self.optimizer, self.scheduler
        )
        self.shard = ray.train.get_dataset_shard("train")
        self.entity_lookup = config["entity_lookup"] if self.cfg.train.hard_negatives > 0 else None
        self.refreshed: dict[str, list[str]] = {}  # mention_id -> negatives re-mined during this run
        use_bf16 = self.device.type == "cuda" and self.cfg.train.mixed_precision
        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
        )

    def step(self, batch: list[dict]) -> float:
        """One optimiser step on one batch; returns the loss."""
        return optimizer_step(
            self.model,
            self.builder,
            self.optimizer,
            self.cfg,
            batch,
            scheduler=self.scheduler,
            entity_lookup=self.entity_lookup,
            device=self.device,
            autocast=self.autocast,
        )

    def report(self, metrics: dict, with_checkpoint: bool) -> None:
        """Every worker reports; rank 0 attaches the checkpoint (Ray Train keeps best dev MRR + latest)."""
        import ray.train

        metrics = {"step": self.state.step, "epoch": self.state.epoch, "dev_mrr": -1.0, **metrics}
        if not (with_checkpoint and self.rank == 0):
            ray.train.report(metrics, checkpoint=None)
            return
        from kb_builder.progress import Progress

        meter = Progress("[train] checkpoint", 1, "checkpoints", every_s=5.0)
        tmp = save_checkpoint(self.model, self.processor, self.optimizer, self.scheduler, self.state)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp.name))
        finally:
            tmp.cleanup()
        meter.update(1)
        meter.done(f"step {self.state.step}")

    def evaluate_dev(self, epoch: int) -> float:
        """Dev metrics by `train.dev_protocol`, shared by every worker (each scores a slice, all get the MRR)."""
        from cluster.evaluate.dev import dev_metrics

        if not self.config["dev_rows"]:
            return -1.0
        start = time.monotonic()
        protocol = self.cfg.train.dev_protocol
        metrics = dev_metrics(
            self.model,
            self.builder,
            self.config["dev_rows"],
            self.config["entity_rows"],
            self.cfg.eval,
            protocol,
            self.rank,
            self.world,
            self.cfg.train.dev_top_k,
        )
        if self.rank == 0:
            self.state.dev.append(
                {"epoch": epoch + 1, "step": self.state.step, "protocol": protocol, **metrics}
            )
            recall = "".join(f" {k} {v:.3f}" for k, v in metrics.items() if k.startswith("recall@"))
            print(
                f"[train] dev epoch {epoch + 1} ({protocol}, {self.world} workers, "
                f"{time.monotonic() - start:.1f} s): hits@1 {metrics.get('hits@1', 0):.3f} "
                f"mrr {metrics['mrr']:.3f}{recall}",
                flush=True,
            )
        return float(metrics["mrr"])

    def refresh_negatives(self, epoch: int, batches: list[list[dict]]) -> None:
        """Every `negatives_refresh_epochs` epochs: re-mine this worker's hard negatives from the current model."""
        from cluster.evaluate.dev import shared_vectors
        from cluster.train.negatives import refresh_negatives

        tc = self.cfg.train
        due = tc.hard_negatives > 0 and tc.negatives_refresh_epochs > 0 and epoch > 0
        if not due or epoch % tc.negatives_refresh_epochs:
            return
        entities, _ = shared_vectors(  # mining reads the retrieval vectors only
            self.model,
            self.builder,
            self.config["entity_rows"],
            self.cfg.eval.entity_batch_size,
            self.rank,
            self.world,
            f"[train] negatives refresh epoch {epoch + 1}: entity vectors",
            keep_backbones=False,
        )
        rows = [r for batch in batches for r in batch]
        label = f"[train] negatives refresh epoch {epoch + 1}" if self.rank == 0 else ""
        self.refreshed = refresh_negatives(
            self.model, self.builder, rows, entities, tc, self.cfg.eval.batch_size, epoch, label
        )

    def early_stop(self, mrr: float) -> bool:
        if mrr > self.state.best_mrr:
            self.state.best_mrr, self.state.best_step, self.state.bad_evals = mrr, self.state.step, 0
            return False
        self.state.bad_evals += 1
        return self.state.bad_evals >= self.cfg.train.early_stop_patience

    def run(self) -> dict:
        import ray.train

        tc = self.cfg.train
        from kb_builder.progress import Progress

        start = time.monotonic()
        meter = Progress(
            "[train] steps", self.total_steps - self.state.step, "steps", enabled=self.rank == 0, every_s=10.0
        )
        for epoch in range(self.state.epoch, tc.epochs):
            context = ray.train.get_context()
            batches = epoch_batches(
                self.shard,
                self.config["rows_per_worker"],
                tc.batch_size,
                tc.seed,
                epoch,
                context.get_world_rank(),
                context.get_world_size(),
            )
            skip = self.state.step - epoch * self.steps_per_epoch  # resumed mid-epoch: batches already done
            self.refresh_negatives(epoch, batches)
            for row in (r for batch in batches for r in batch if r["mention_id"] in self.refreshed):
                row["hard_negative_ids"] = self.refreshed[row["mention_id"]]
            for batch in batches[skip:]:
                loss = self.step(batch)
                self.state.step += 1
                self.state.losses.append([self.state.step, loss])
                maybe_inject_failure(self.config, self.rank, self.world, self.state.step)
                lr = self.scheduler.get_last_lr()[0]
                meter.update(1, note=f"epoch {epoch + 1}/{tc.epochs} loss {loss:.4f} lr {lr:.2e}")
                mid_epoch = self.state.step % self.steps_per_epoch != 0
                if (
                    mid_epoch
                    and tc.checkpoint_every_steps
                    and self.state.step % tc.checkpoint_every_steps == 0
                ):
                    self.report({"loss": loss}, with_checkpoint=True)
            self.state.epoch = epoch + 1
            metrics = {"loss": self.state.losses[-1][1] if self.state.losses else float("nan")}
            if tc.eval_every_epochs and (epoch + 1) % tc.eval_every_epochs == 0:
                metrics["dev_mrr"] = self.evaluate_dev(epoch)
                self.state.stopped_early = self.early_stop(metrics["dev_mrr"])
            self.report(metrics, with_checkpoint=True)
            if self.state.stopped_early:
                break
        meter.done(
            f"{self.state.step} of {self.total_steps} steps, {tc.batch_size * self.world} samples/step"
        )
        return {"state": self.state.__dict__, "wall_s": time.monotonic() - start, "pid": os.getpid()}


def train_loop_per_worker(config: dict) -> dict:
    """Entry point Ray Train calls on each worker."""
    torch.set_num_threads(max(1, int(config["cfg"].train.cpus_per_worker)))
    return Trainer(config).run()
