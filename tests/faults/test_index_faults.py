"""Indexing under faults (issue 9, 1a and 1b), on real local Ray and Milvus Lite:

(a) an encoder actor process dies mid-index: the pool replaces it and retries its batch; the collection ends
    with exactly one row per entity;
(b) the whole indexing driver (`mel index`, its own local Ray and Milvus Lite) is SIGKILLed mid-run: the re-run
    skips every shard progress.json records as done, encodes only the rest, and ends with the exact count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.config import load_config, milvus_uri
from kb_builder.build import build_kb
from kb_builder.shards import read_entities
from kb_builder.storage import Storage
from tests.faults.helpers import require_free_cpus
from tests.fixtures import wait_until
from workers.index_job import run_index
from workers.milvus_store import MilvusStore
from workers.model_store import resolve_model_dir

REPO = Path(__file__).resolve().parents[2]


def overrides(tmp: Path, extra: list[str]) -> list[str]:
    return [
        f"storage.root={tmp / 'data'}",
        f"storage.cache_dir={tmp / 'cache'}",
        "milvus.collection=ents",
        *extra,
    ]


def small_kb(tmp: Path, extra: list[str]):
    cfg = load_config(overrides=overrides(tmp, extra))
    build_kb(cfg.kb, cfg.storage, progress=False)
    return cfg, resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe)


def collection_ids(cfg, collection: str) -> tuple[int, list[str]]:
    store = MilvusStore(cfg.milvus, milvus_uri(cfg))
    try:
        count = store.count(collection)
        rows = store.client.query(
            collection, filter='entity_id != ""', output_fields=["entity_id"], limit=10_000
        )
        return count, [r["entity_id"] for r in rows]
    finally:
        store.close()


@pytest.mark.slow
def test_encoder_actor_death_without_restarts_is_replaced_exact_count(tmp_path, ray_session):
    """max_actor_restarts=0: Ray does not restart the dead actor, so the pool's own replacement path runs."""
    cfg, model_dir = small_kb(
        tmp_path,
        [
            "kb.sample_entities=40",
            "kb.sample_mentions=40",
            "kb.rows_per_shard=20",
            "encoder.batch_size=8",
            "encoder.max_actor_restarts=0",
        ],
    )
    marker = tmp_path / "actor-died"
    require_free_cpus(2.0)  # one 1-CPU encoder actor + 1-CPU prepare tasks
    report = run_index(
        cfg.storage,
        cfg.kb,
        cfg.encoder,
        cfg.milvus,
        milvus_uri(cfg),
        model_dir,
        progress=False,
        crash_marker=str(marker),
    )
    assert marker.exists(), "the fault was never injected"
    assert (report.encoded, report.failed, report.total, report.swapped) == (40, 0, 40, True)
    entity_ids = sorted(read_entities(Storage(cfg.storage), cfg.kb.name)["entity_id"].to_list())
    count, ids = collection_ids(cfg, report.collection)
    assert count == 40 and sorted(ids) == entity_ids  # every entity once, none duplicated


def done_shards(root: Path) -> tuple[dict, bool]:
    files = list((root / "index").glob("*/progress.json"))
    if not files:
        return {}, False
    state = json.loads(files[0].read_text())
    return {k: v for k, v in state["shards"].items() if v.get("done")}, bool(state.get("complete"))


@pytest.mark.slow
def test_driver_kill_9_mid_run_then_rerun_resumes_exactly(tmp_path, ray_session):
    sets = [
        "kb.sample_entities=120",
        "kb.sample_mentions=40",
        "kb.rows_per_shard=10",
        "encoder.batch_size=5",
        "ray.num_cpus=1",
    ]
    cfg, model_dir = small_kb(tmp_path, sets)  # the model exists first, so the child only indexes
    root = tmp_path / "data"
    argv = [sys.executable, "-m", "cluster.cli"] + [
        a for s in overrides(tmp_path, sets) for a in ("--set", s)
    ]
    log = open(tmp_path / "child.log", "wb")  # noqa: SIM115 - closed once the child is gone
    child = subprocess.Popen(
        argv + ["index"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,  # kept: if the child ends on its own, the assertion shows why
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_until(  # kill as soon as one shard is recorded
            lambda: child.poll() is not None or done_shards(root)[0],
            timeout_s=600,
            interval_s=0.02,
            what="the first recorded shard",
        )
        os.killpg(child.pid, signal.SIGKILL)  # the driver, its local Ray and its Milvus Lite server
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=120)
        log.close()
    assert child.returncode == -signal.SIGKILL, (
        f"the driver ended (exit {child.returncode}) before it could be killed:\n"
        + (tmp_path / "child.log").read_text(errors="replace")[-3000:]
    )
    time.sleep(1.0)  # let the killed Lite server's file lock go (the kernel drops it with the process)
    done, complete = done_shards(root)
    assert 1 <= len(done) < 12 and not complete

    require_free_cpus(2.0)
    rerun = run_index(
        cfg.storage, cfg.kb, cfg.encoder, cfg.milvus, milvus_uri(cfg), model_dir, progress=False
    )
    assert rerun.shards == 12 and rerun.skipped_shards == len(done)  # completed shards were not re-encoded
    assert rerun.encoded == 120 - sum(s["rows"] for s in done.values())
    assert (rerun.failed, rerun.total, rerun.swapped) == (0, 120, True)
    entity_ids = sorted(read_entities(Storage(cfg.storage), cfg.kb.name)["entity_id"].to_list())
    count, ids = collection_ids(cfg, rerun.collection)
    assert count == 120 and sorted(ids) == entity_ids
    assert done_shards(root)[1]  # progress.json now says complete


def test_prepare_tasks_fit_beside_other_ray_work(tmp_path, ray_session):
    """A Serve app (or any job) holding CPUs must not leave the prepare tasks unschedulable."""
    import ray

    from workers.ray_pool import EncodingPool

    cfg, model_dir = small_kb(tmp_path, ["kb.sample_entities=10", "kb.sample_mentions=10"])
    require_free_cpus(1.5)  # the stand-in work and the encoder actor must both be placed

    @ray.remote(num_cpus=0.5)
    class OtherWork:  # e.g. Serve replicas at serve.num_cpus_per_replica
        def ping(self) -> bool:
            return True

    other = OtherWork.remote()
    ray.get(other.ping.remote())
    pool = EncodingPool(model_dir, cfg.encoder, cfg.storage, [])  # returns once its actor is placed
    try:
        needed = pool.prepare._default_options.get("num_cpus", 1)
        free = ray.available_resources().get("CPU", 0.0)
        assert needed <= free, (
            f"prepare tasks need {needed} CPU, only {free} CPU free: they would never start"
        )
    finally:
        pool.close()
        ray.kill(other)
