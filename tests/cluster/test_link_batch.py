"""`mel link-batch` on the sample KB: the same answers as the in-process Linker (serving's classes), rejects
with reasons, and a driver SIGKILLed mid-run whose re-run writes every input row exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.fixtures import REPO, wait_until

SETS = ["kb.sample_entities=120", "kb.sample_mentions=400", "batch.batch_size=8", "batch.rows_per_part=16"]


@pytest.fixture(scope="module")
def linked_kb(tmp_path_factory, ray_session):
    """Sample KB -> models/init -> one indexed collection behind the alias, on a Lite server of this process."""
    from milvus_lite.server_manager import server_manager_instance

    from cluster.artifacts import serving_model_dir
    from cluster.config import load_config
    from kb_builder.build import build_kb
    from kb_builder.shards import read_entities, read_mentions
    from kb_builder.storage import Storage
    from tests.cluster.serving.helpers import index_collection, swap_alias

    tmp = tmp_path_factory.mktemp("batch")
    sets = [f"storage.root={tmp / 'data'}", f"storage.cache_dir={tmp / 'cache'}", *SETS]
    cfg = load_config(overrides=sets)
    build_kb(cfg.kb, cfg.storage, progress=False)
    lite_file = str(tmp / "data" / "milvus.db")
    cfg.milvus.uri = server_manager_instance.start_and_get_uri(lite_file)
    sets.append(f"milvus.uri={cfg.milvus.uri}")
    model_dir = serving_model_dir(cfg)
    storage = Storage(cfg.storage)
    entities = read_entities(storage, cfg.kb.name, columns=["entity_id", "name", "description", "image_uris"])
    swap_alias(cfg, index_collection(cfg, model_dir, f"{cfg.milvus.collection}_v1", entities.to_dicts()))
    test = read_mentions(storage, cfg.kb.name, split="test")
    rows = test.select("mention_id", "mention", "context", "image_uri", "gold_entity_id").to_dicts()
    bad = [
        {"mention_id": "bad-empty", "mention": ""},
        {"mention_id": "bad-image", "mention": "Paris", "image_uri": str(tmp / "data" / "missing.jpg")},
    ]
    src = tmp / "mentions.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:20] + bad + rows[20:]))
    yield cfg, sets, src, rows
    server_manager_instance.release_server(lite_file)


def test_link_batch_equals_linker_and_rejects_bad_rows(linked_kb, tmp_path):
    from cluster.batch.run import run_link_batch
    from cluster.serve.pipeline import Linker, MentionQuery
    from workers.images import ImageLoader

    cfg, _, src, rows = linked_kb
    report = run_link_batch(cfg, [str(src)], str(tmp_path / "out"), progress=False)
    assert (report.rows, report.rejected, report.skipped_parts) == (len(rows), 2, 0)
    assert report.linked + report.nil == len(rows) and report.gold_rows == sum(
        1 for r in rows if r["gold_entity_id"]
    )
    assert 0.0 < report.mrr <= 1.0 and set(report.hits) >= {"hits@1", "hits@10"}
    reasons = [
        json.loads(x)["reason"]
        for f in sorted((tmp_path / "out" / "rejects").glob("*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    assert any("missing mention" in r for r in reasons) and any("unreadable image" in r for r in reasons)

    out = pl.read_parquet(tmp_path / "out" / "parts" / "*.parquet")
    assert sorted(out["mention_id"].to_list()) == sorted(r["mention_id"] for r in rows)
    linker, images = (
        Linker.from_config(cfg, device="cpu"),
        ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb),
    )
    by_id = {r["mention_id"]: r for r in out.to_dicts()}
    for row in rows[:24]:
        query = MentionQuery(
            row["mention"], row["context"] or "", images.load(row["image_uri"])[0], cfg.batch.top_k
        )
        answer = linker.link([query])[0]
        got = by_id[row["mention_id"]]
        assert got["entity_ids"] == [c["entity_id"] for c in answer["candidates"]]
        assert got["scores"] == pytest.approx([c["score"] for c in answer["candidates"]], abs=1e-4)
        assert got["nil"] == answer["nil"]
        top = answer["candidates"][0]["confidence"] if answer["candidates"] else None
        assert got["confidence"] == pytest.approx(top, abs=1e-4)
    assert report.stages.batches >= -(-len(rows) // cfg.batch.batch_size)  # every row's batch was timed
    assert report.stages.encode_s > 0 and report.stages.search_s > 0 and report.stages.rerank_s > 0


def _done_parts(out: Path) -> list[Path]:
    return sorted((out / "parts").glob("part-*.parquet"))


@pytest.mark.slow
def test_driver_kill_9_then_rerun_writes_every_row_once(linked_kb, tmp_path):
    from cluster.batch.run import run_link_batch

    cfg, sets, src, rows = linked_kb
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "cluster.cli",
        *[a for s in sets for a in ("--set", s)],
        "--set",
        "ray.num_cpus=1",
    ]
    log = open(tmp_path / "child.log", "wb")  # noqa: SIM115 - closed once the child is gone
    child = subprocess.Popen(
        [*argv, "link-batch", "--input", str(src), "--output", str(out)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,  # kept: if the child ends on its own, the assertion shows why
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_until(  # kill as soon as one part is written
            lambda: child.poll() is not None or _done_parts(out),
            timeout_s=600,
            interval_s=0.02,
            what="the first written output part",
        )
        os.killpg(child.pid, signal.SIGKILL)  # the driver and its local Ray
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=120)
        log.close()
    assert child.returncode == -signal.SIGKILL, (
        f"the driver ended (exit {child.returncode}) before it could be killed:\n"
        + (tmp_path / "child.log").read_text(errors="replace")[-3000:]
    )
    done = len(_done_parts(out))
    parts = -(-len(rows) // cfg.batch.rows_per_part)
    assert 1 <= done < parts

    report = run_link_batch(cfg, [str(src)], str(out), progress=False)
    assert (report.parts, report.skipped_parts) == (parts, done)
    ids = pl.read_parquet(out / "parts" / "*.parquet")["mention_id"].to_list()
    assert len(ids) == len(rows) and sorted(ids) == sorted(r["mention_id"] for r in rows)


def test_link_batch_reads_an_s3_prefix_and_writes_s3_parts(linked_kb, s3_bucket, tmp_path):
    """Input from an s3:// prefix and output to one (moto's real S3 server): the same rows and answers as a
    local run, rejects beside the parts, and a re-run finds every part done on S3 and links nothing again."""
    import copy
    import io

    import boto3

    from cluster.batch.run import run_link_batch

    endpoint, bucket = s3_bucket
    cfg, _, src, rows = linked_kb
    s3_cfg = copy.deepcopy(cfg)
    s3_cfg.storage.s3_endpoint_url, s3_cfg.storage.s3_region = endpoint, "us-east-1"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key="in/mentions.jsonl", Body=src.read_bytes())
    s3.put_object(Bucket=bucket, Key="in/notes.txt", Body=b"not a mention file")  # skipped: unknown suffix

    report = run_link_batch(s3_cfg, [f"s3://{bucket}/in/"], f"s3://{bucket}/linked", progress=False)
    local = run_link_batch(cfg, [str(src)], str(tmp_path / "out"), progress=False)
    assert (report.rows, report.rejected, report.parts) == (local.rows, local.rejected, local.parts)
    assert report.rows == len(rows) and report.rejected == 2

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="linked/")["Contents"]]
    parts = sorted(k for k in keys if k.startswith("linked/parts/") and k.endswith(".parquet"))
    assert len(parts) == report.parts and "linked/summary.json" in keys
    assert any(k.startswith("linked/rejects/") for k in keys)
    remote = pl.concat(
        [pl.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in parts]
    )
    here = pl.read_parquet(tmp_path / "out" / "parts" / "*.parquet")
    assert sorted(remote["mention_id"].to_list()) == sorted(r["mention_id"] for r in rows)
    by_id = {r["mention_id"]: r for r in here.to_dicts()}
    for row in remote.to_dicts():
        assert row["entity_ids"] == by_id[row["mention_id"]]["entity_ids"]
        assert row["scores"] == pytest.approx(by_id[row["mention_id"]]["scores"], abs=1e-5)

    again = run_link_batch(s3_cfg, [f"s3://{bucket}/in/"], f"s3://{bucket}/linked", progress=False)
    assert (again.skipped_parts, again.linked_this_run, again.rows) == (report.parts, 0, len(rows))
