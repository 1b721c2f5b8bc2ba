"""`mel dme`: choose a description for every mention of the KB, on Ray, and cache the choices.

Steps: read the manifest's kb_version and the mention table; keep cached rows that are still fresh; split the
rest into batches; Ray actors (one model each) find candidates (names + ANN) and select; the driver prints
mentions/s and ETA, writes `<root>/dme/<kb.name>/selections.parquet` and returns a `DMEReport`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import polars as pl

from cluster.dme.cache import read_cache, split_stale, write_cache
from cluster.dme.factory import check_dme_config
from cluster.dme.selectors import DMECounters

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 60.0  # a killed run loses at most this much work
MAX_BATCHES_IN_FLIGHT_PER_ACTOR = (
    2  # default: one running, one queued, so actors never idle and memory is bounded
)


@dataclass
class DMEReport:
    kb_name: str
    kb_version: str
    selector: str
    mentions: int  # rows in the mention table (= rows in the cache)
    recomputed: int  # mentions selected in this run
    reused: int  # fresh cached rows kept
    cache_uri: str
    elapsed_s: float
    ann: bool  # whether ANN candidates were used (False: no index yet, names only)
    counters: DMECounters = field(default_factory=DMECounters)  # this run's selections only

    @property
    def mentions_per_s(self) -> float:
        return self.recomputed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def _candidates_line(self) -> str:
        if self.selector == "none" or not self.recomputed:
            return "not looked up"
        return (
            "name/alias matches + ANN top-N"
            if self.ann
            else "name/alias matches only (no Milvus index found)"
        )

    def summary(self) -> str:
        c = self.counters.as_dict()
        fell_back = ", ".join(f"{k} {v}" for k, v in c["fell_back"].items()) or "none"
        lines = [
            f"DME ({self.selector}) for KB '{self.kb_name}' version {self.kb_version}: {self.mentions} mentions, "
            f"{self.recomputed} recomputed, {self.reused} reused from the cache",
            f"  selected {c['selected']}, no match {c['no_match']}, no candidates {c['no_candidates']}, "
            f"disabled {c['disabled']}, fell back: {fell_back}",
            f"  candidates: {self._candidates_line()}",
            f"  {self.elapsed_s:.1f}s ({self.mentions_per_s:.1f} mentions/s) -> {self.cache_uri}",
        ]
        return "\n".join(lines)


def run_dme(cfg, progress: bool = True) -> DMEReport:
    """Select descriptions for all mentions whose cached row is missing or stale; rewrite the cache."""
    from kb_builder.shards import read_manifest, read_mentions
    from kb_builder.storage import Storage

    check_dme_config(cfg.dme)  # fail here, not inside every actor
    start = time.perf_counter()
    storage = Storage(cfg.storage)
    kb_version = str(read_manifest(storage, cfg.kb.name)["kb_version"])
    mentions = read_mentions(storage, cfg.kb.name)
    fresh, todo_ids = split_stale(
        read_cache(storage, cfg.kb.name), mentions["mention_id"].to_list(), kb_version, cfg.dme.selector
    )
    todo = mentions.filter(pl.col("mention_id").is_in(todo_ids))

    def save(rows: list[dict]) -> str:
        new = pl.DataFrame(rows, schema=fresh.schema) if rows else fresh.clear()
        return write_cache(storage, cfg.kb.name, pl.concat([fresh, new]))

    counters, ann, rows = DMECounters(), False, []
    if todo.height:
        rows, counters, ann = _select_on_ray(cfg, todo, kb_version, save, progress)
    uri = save(rows)
    return DMEReport(
        kb_name=cfg.kb.name,
        kb_version=kb_version,
        selector=cfg.dme.selector,
        mentions=mentions.height,
        recomputed=todo.height,
        reused=fresh.height,
        cache_uri=uri,
        elapsed_s=time.perf_counter() - start,
        ann=ann,
        counters=counters,
    )


def _select_on_ray(cfg, todo: pl.DataFrame, kb_version: str, save, progress: bool):
    """Fan batches of mention rows out to DME actors; gather rows, counters and whether ANN was used.

    `save(rows)` checkpoints the cache every CHECKPOINT_EVERY_S and when the run is interrupted, so a re-run
    resumes: the rows already written are fresh and skipped.
    """
    import ray

    from cluster.dme.worker import DMEWorker
    from cluster.runtime import init_ray
    from kb_builder.progress import Progress

    init_ray(cfg.ray)
    if cfg.dme.selector != "none":  # build models/init once here, not in racing actors
        _resolve_model_dir(cfg)
    n_actors = max(1, cfg.encoder.num_actors)
    restarts = getattr(cfg.encoder, "max_actor_restarts", 0)
    actor_cls = ray.remote(DMEWorker).options(
        num_cpus=cfg.encoder.num_cpus_per_actor,
        num_gpus=cfg.encoder.num_gpus_per_actor,
        # `process` is a pure function of its batch, so a crashed actor's batches are safely retried.
        max_restarts=restarts,
        max_task_retries=restarts,
        **_api_key_env(cfg.dme),
    )
    batch_size = max(1, cfg.encoder.batch_size)
    in_flight = max(1, getattr(cfg.encoder, "batches_in_flight", MAX_BATCHES_IN_FLIGHT_PER_ACTOR))
    records = todo.to_dicts()
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    meter = Progress("dme", len(records), "mentions", enabled=progress, every_s=5.0)
    rows, counters, ann = [], DMECounters(), False
    pending: dict = {}
    uri, release = _shared_milvus_uri(cfg) if cfg.dme.selector != "none" else ("", _nothing)
    actors, last_save = [], time.monotonic()
    try:
        actors = [actor_cls.remote(cfg, kb_version, uri) for _ in range(n_actors)]
        next_batch = 0
        while next_batch < len(batches) or pending:
            while next_batch < len(batches) and len(pending) < n_actors * in_flight:
                actor = actors[next_batch % n_actors]
                pending[actor.process.remote(batches[next_batch])] = len(batches[next_batch])
                next_batch += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            batch_rows, batch_counters, batch_ann = ray.get(done[0])
            rows.extend(batch_rows)
            counters.merge(batch_counters)
            ann = ann or batch_ann
            if time.monotonic() - last_save >= CHECKPOINT_EVERY_S:
                save(rows)
                last_save = time.monotonic()
            meter.update(pending.pop(done[0]))
    except BaseException:
        if rows:  # an interrupted or failed run keeps what it finished
            save(rows)
        raise
    finally:
        for actor in actors:
            ray.kill(actor)
        release()
    meter.close()
    return rows, counters, ann


def _api_key_env(dme_cfg) -> dict:
    """Hand the LLM API key to the actors as an environment variable (never as an argument, which Ray would
    record): actors on other nodes do not inherit this process's environment."""
    name = dme_cfg.llm.api_key_env
    if dme_cfg.selector != "llm" or not name or name not in os.environ:
        return {}
    return {"runtime_env": {"env_vars": {name: os.environ[name]}}}


def _resolve_model_dir(cfg):
    from workers.model_store import resolve_model_dir

    return resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe, checkpoint="")


def _shared_milvus_uri(cfg):
    """(URI the actors can open, release callback). A Milvus Lite file has one owner process, so this process
    serves it over local gRPC (as `mel serve` does) and every actor connects to that server."""
    from pathlib import Path

    from cluster.config import milvus_uri
    from workers.milvus_store import indexed_uri, is_lite

    uri = indexed_uri(milvus_uri(cfg))
    if not uri or not is_lite(uri):
        return uri, _nothing
    path = str(Path(uri).expanduser().resolve())
    from milvus_lite.server_manager import server_manager_instance

    started_here = path not in getattr(server_manager_instance, "_servers", {})
    local = server_manager_instance.start_and_get_uri(path)
    return local, (lambda: server_manager_instance.release_server(path)) if started_here else _nothing


def _nothing() -> None:
    return None
