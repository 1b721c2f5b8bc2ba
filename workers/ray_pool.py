"""The distributor: CPU tasks prepare batches (images + tokens), encoder actors run the model, results stream back.

Reader -> mapper -> writer as in clip-retrieval: `prepare_batch_task` (reader, a Ray task per batch) feeds
`EncoderWorker` actors (mapper, each wraps one plain `EntityEncoder`), and the caller writes (the driver is the
single Milvus writer). At most `num_actors * batches_in_flight` batches are in flight, so memory stays bounded.

Fault tolerance: actors restart after a crash (`max_restarts`) and Ray retries the method call on the new
process (`max_task_retries`); should the actor stay dead, the pool replaces it and resubmits the batch itself.
A batch is only ever reported once, and rows are upserted by entity_id, so a retry never duplicates anything.

Why a hand-written pool and not Ray Data's `map_batches` actor pool (issue 20, measured with
`bench/bench_index_pipeline.py --entities 8192`, tiny model, 1 actor, 2 CPUs, same batches, each from nothing):
the pool 378.7 entities/s, Ray Data with separate prepare tasks 292.9/s, Ray Data letting prepare fuse into the
actor 339.5/s: at best 0.90 of the pool, outside the 5% the issue allows (Ray Data's planning and pool start
sit inside every run; fused, the actor prepares its own batches and nothing overlaps the model). And the pool
keeps `mel index`'s guarantees as written: a batch that keeps failing comes back as a `BatchResult` with its
ids and the reason, so the job counts those rows as failed and goes on; in Ray Data a UDF error fails the
whole dataset, and `max_errored_blocks` would drop blocks without saying which rows, which breaks exact counts.
`mel link-batch` does use Ray Data (cluster/batch): it reads and writes whole files and resumes by output part.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kb_builder.config import StorageConfig
from workers.config import EncoderConfig
from workers.encoder import EncodedEntities, EntityEncoder, PreparedBatch, prepare_entities
from workers.images import ImageLoader

MAX_SUBMITS = 4  # a batch is given to an actor at most this often before its rows count as failed
_CPU_STAGE: dict[str, tuple] = {}  # per worker process: model_dir -> (processor, loader), loaded once


def prepare_batch_task(
    rows: list[dict],
    model_dir: str,
    encoder_cfg: EncoderConfig,
    storage_cfg: StorageConfig,
    allowed_roots: list[str],
) -> PreparedBatch:
    """CPU stage, run as a Ray task: reuse the processor/loader of this worker process across batches."""
    from mmoe.processor import MMoEProcessor

    if model_dir not in _CPU_STAGE:
        _CPU_STAGE[model_dir] = (
            MMoEProcessor.from_pretrained(model_dir),
            ImageLoader(encoder_cfg, storage_cfg, allowed_roots),
        )
    processor, loader = _CPU_STAGE[model_dir]
    return prepare_entities(rows, processor, loader)


class EncoderWorker:
    """Actor body: one EntityEncoder per process. `crash_marker` is a fault-injection hook for tests: the
    second batch makes the process exit once (the marker file records that it happened)."""

    def __init__(self, model_dir: str, encoder_cfg: EncoderConfig, crash_marker: str = ""):
        self.encoder = EntityEncoder(model_dir, encoder_cfg)
        self.crash_marker = crash_marker
        self.batches = 0

    def device_name(self) -> str:
        return self.encoder.device_name

    def encode(self, prep: PreparedBatch) -> EncodedEntities:
        self.batches += 1
        if self.crash_marker and self.batches == 2 and not Path(self.crash_marker).exists():
            Path(self.crash_marker).write_text(str(os.getpid()))
            os._exit(1)  # a hard crash, as an OOM kill or a lost node would look
        return self.encoder.encode_prepared(prep)


@dataclass
class BatchResult:
    key: tuple  # (shard name, batch index) as given to `run`
    encoded: EncodedEntities | None  # None when the batch failed MAX_SUBMITS times
    error: str = ""
    ids: list[str] | None = None  # the batch's entity ids when it failed


class EncodingPool:
    """A fixed set of encoder actors fed by CPU prepare tasks; `run(batches)` yields results as they finish."""

    def __init__(
        self,
        model_dir: str | Path,
        encoder_cfg: EncoderConfig,
        storage_cfg: StorageConfig,
        allowed_roots: list[str],
        crash_marker: str = "",
    ):
        import ray

        self.ray = ray
        self.model_dir = str(model_dir)
        self.cfg = encoder_cfg
        self.storage_cfg = storage_cfg
        self.allowed_roots = allowed_roots
        self.crash_marker = crash_marker
        self.actor_cls = ray.remote(
            num_cpus=encoder_cfg.num_cpus_per_actor,
            num_gpus=encoder_cfg.num_gpus_per_actor,
            resources=dict(encoder_cfg.resources_per_actor)
            or None,  # e.g. {accelerator: 0.5} for a node type
            max_restarts=encoder_cfg.max_actor_restarts,
            max_task_retries=encoder_cfg.max_actor_restarts,
        )(EncoderWorker)
        # Sized from what is free now (a Serve app or another job may hold CPUs), not from the cluster total.
        free_cpus = (
            ray.available_resources().get("CPU", 0.0)
            - encoder_cfg.num_actors * encoder_cfg.num_cpus_per_actor
        )
        # With every CPU held by actors, a 1-CPU task could never start; run the CPU stage unreserved instead.
        self.prepare = ray.remote(num_cpus=1.0 if free_cpus >= 1 else 0, max_retries=3)(prepare_batch_task)
        self.actors = [self._new_actor() for _ in range(max(1, encoder_cfg.num_actors))]
        self.device = self._wait_placed(encoder_cfg)

    def _wait_placed(self, encoder_cfg) -> str:
        """The first actor's device; a clear error instead of an endless wait when no node can hold an actor."""
        import ray
        from ray.exceptions import GetTimeoutError

        try:
            return ray.get(self.actors[0].device_name.remote(), timeout=encoder_cfg.actor_start_timeout_s)
        except GetTimeoutError:
            need = {
                "CPU": encoder_cfg.num_cpus_per_actor,
                "GPU": encoder_cfg.num_gpus_per_actor,
                **encoder_cfg.resources_per_actor,
            }
            raise RuntimeError(
                f"no encoder actor started within {encoder_cfg.actor_start_timeout_s:.0f}s: each needs {need}, "
                f"the cluster has {ray.available_resources()} free of {ray.cluster_resources()}. Free resources "
                "(e.g. stop `mel serve`), lower encoder.num_cpus_per_actor / num_gpus_per_actor, or add nodes."
            ) from None

    def _new_actor(self):
        return self.actor_cls.remote(self.model_dir, self.cfg, self.crash_marker)

    def run(self, batches: Iterable[tuple[tuple, list[dict]]]) -> Iterator[BatchResult]:
        """`batches` yields (key, rows); results come back in completion order, each key exactly once."""
        ray = self.ray
        limit = len(self.actors) * max(1, self.cfg.batches_in_flight)
        source = iter(batches)
        pending: dict = {}  # ObjectRef -> (key, prep_ref, ids, actor index, submits)
        turn = 0

        def submit(key, prep_ref, ids, submits):
            nonlocal turn
            index = turn % len(self.actors)
            turn += 1
            pending[self.actors[index].encode.remote(prep_ref)] = (key, prep_ref, ids, index, submits + 1)

        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < limit:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                key, rows = item
                prep_ref = self.prepare.remote(
                    rows, self.model_dir, self.cfg, self.storage_cfg, self.allowed_roots
                )
                submit(key, prep_ref, [str(r["entity_id"]) for r in rows], 0)
            if not pending:
                break
            [done], _ = ray.wait(list(pending), num_returns=1)
            key, prep_ref, ids, index, submits = pending.pop(done)
            try:
                yield BatchResult(key, ray.get(done))
            except ray.exceptions.RayActorError as exc:
                self.actors[index] = self._new_actor()  # restarts exhausted: a fresh process takes over
                if submits < MAX_SUBMITS:
                    submit(key, prep_ref, ids, submits)
                else:
                    yield BatchResult(key, None, f"encoder actor died {submits} times: {exc}", ids)
            except ray.exceptions.RayTaskError as exc:
                if submits < MAX_SUBMITS:
                    submit(key, prep_ref, ids, submits)
                else:
                    yield BatchResult(key, None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}", ids)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []
