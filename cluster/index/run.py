"""`mel index`: start or join Ray, pick the model folder, and run the indexing job (workers.index_job)."""

from __future__ import annotations

import time


def run_index_job(cfg, mode: str = "full", checkpoint: str = ""):
    """Index `cfg.kb` into Milvus with the model `checkpoint`; -> IndexReport.

    Default: the model `mel serve` would serve (serve.checkpoint, else the training run's best, else
    `<root>/models/init`), so index -> train -> index -> serve ends with vectors of the served model.
    """
    from cluster.config import milvus_uri
    from cluster.runtime import init_ray
    from workers.index_job import run_index
    from workers.model_store import resolve_model_dir

    start = time.perf_counter()
    init_ray(cfg.ray)
    ray_s = time.perf_counter() - start
    if checkpoint:
        model_dir = resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe, checkpoint=checkpoint)
    else:
        from cluster.artifacts import serving_model_dir

        model_dir = serving_model_dir(cfg)
    model_s = time.perf_counter() - start - ray_s
    report = run_index(cfg.storage, cfg.kb, cfg.encoder, cfg.milvus, milvus_uri(cfg), model_dir, mode=mode)
    report.stages = {"ray start": ray_s, "model": model_s, **report.stages}  # before the job's own clock
    return report
