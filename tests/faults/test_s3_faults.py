"""S3 faults (issue 9, 1f): an endpoint that errors or goes away mid-run. kb_builder.storage retries with
backoff (boto3 standard mode, `storage.max_retries` retries after the first attempt), then fails with a clear
error; a build that failed midway leaves no half-published KB and succeeds on re-run with the exact counts.

Faults are placed by request count (tests/faults/s3_endpoint.py), never by timing.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from kb_builder.build import build_kb
from kb_builder.config import KBConfig, StorageConfig
from kb_builder.shards import read_entities, read_manifest
from kb_builder.storage import Storage
from tests.faults.s3_endpoint import DOWN, ERROR_503, FORWARD


def s3_config(endpoint, bucket: str, tmp_path, max_retries: int = 2) -> StorageConfig:
    return StorageConfig(
        root=f"s3://{bucket}/mel",
        s3_endpoint_url=endpoint.url,
        s3_region="us-east-1",
        max_retries=max_retries,
        connect_timeout_s=0.5,
        read_timeout_s=10.0,
        cache_dir=str(tmp_path / "cache"),
    )


def test_transient_errors_are_retried_then_the_write_lands(breakable_s3, tmp_path):
    endpoint, bucket = breakable_s3
    key = f"/{bucket}/mel/a.bin"
    endpoint.rule = lambda m, k, n: ERROR_503 if (m, k) == ("PUT", key) and n <= 2 else FORWARD
    storage = Storage(s3_config(endpoint, bucket, tmp_path, max_retries=2))
    storage.write_bytes(f"s3://{bucket}/mel/a.bin", b"payload")
    assert endpoint.count("PUT", ERROR_503, key) == 2 and endpoint.count("PUT", FORWARD, key) == 1
    assert storage.read_bytes(f"s3://{bucket}/mel/a.bin") == b"payload"


@pytest.mark.parametrize("max_retries", [1, 3])
def test_persistent_errors_stop_after_exactly_max_retries(breakable_s3, tmp_path, max_retries):
    endpoint, bucket = breakable_s3
    endpoint.rule = lambda m, k, n: ERROR_503 if m == "PUT" else FORWARD
    storage = Storage(s3_config(endpoint, bucket, tmp_path, max_retries=max_retries))
    with pytest.raises(ClientError) as err:
        storage.write_bytes(f"s3://{bucket}/mel/b.bin", b"x")
    assert endpoint.count("PUT") == max_retries + 1  # the first attempt plus max_retries retries
    assert f"reached max retries: {max_retries}" in str(err.value) and "PutObject" in str(err.value)


def test_a_failed_s3_call_names_the_uri(breakable_s3, tmp_path):
    endpoint, bucket = breakable_s3
    endpoint.rule = lambda m, k, n: ERROR_503 if m == "PUT" else FORWARD
    storage = Storage(s3_config(endpoint, bucket, tmp_path, max_retries=1))
    with pytest.raises(Exception, match="c.bin"):
        storage.write_bytes(f"s3://{bucket}/mel/c.bin", b"x")


def test_endpoint_outage_mid_build_then_rerun_gives_the_exact_kb(breakable_s3, tmp_path):
    """The endpoint goes down on the 20th request (while the sample sources upload) and stays down: the build
    fails naming the endpoint, publishes nothing; once S3 is back, the re-run builds the exact KB."""
    endpoint, bucket = breakable_s3
    endpoint.rule = lambda m, k, n: DOWN if n == 20 else FORWARD
    cfg = s3_config(endpoint, bucket, tmp_path)
    kb = KBConfig(sample=True, sample_entities=40, sample_mentions=60, rows_per_shard=10)
    with pytest.raises(EndpointConnectionError, match=endpoint.url):
        build_kb(kb, cfg, progress=False)
    endpoint.start()  # S3 is back (moto kept what was written before the outage)
    endpoint.rule = lambda m, k, n: FORWARD
    storage = Storage(cfg)
    with pytest.raises(FileNotFoundError, match="mel kb build"):
        read_manifest(storage, "sample")  # the failed build published nothing
    report = build_kb(kb, cfg, progress=False)
    assert (report.entities, report.mentions, report.rejected) == (40, 60, 0)
    manifest = read_manifest(storage, "sample")
    assert [s["rows"] for s in manifest["entities"]["shards"]] == [10, 10, 10, 10]
    ids = read_entities(storage, "sample")["entity_id"].to_list()
    assert len(ids) == len(set(ids)) == 40


def _entities_file(path, n: int, tag: str):
    path.write_text(
        "".join(
            json.dumps({"id": f"Q{i:03d}", "name": f"Name{i}", "description": f"{tag} {i}"}) + "\n"
            for i in range(n)
        )
    )
    return path


def test_outage_before_the_manifest_leaves_the_previous_kb_intact(breakable_s3, tmp_path):
    endpoint, bucket = breakable_s3
    cfg = s3_config(endpoint, bucket, tmp_path)
    storage = Storage(cfg)
    v1 = KBConfig(
        name="t",
        sample=False,
        rows_per_shard=10,
        entity_inputs=[str(_entities_file(tmp_path / "v1.jsonl", 30, "first"))],
    )
    build_kb(v1, cfg, progress=False)
    before_manifest = read_manifest(storage, "t")
    before = read_entities(storage, "t").sort("entity_id")

    v2 = KBConfig(
        name="t",
        sample=False,
        rows_per_shard=10,
        entity_inputs=[str(_entities_file(tmp_path / "v2.jsonl", 35, "second"))],
    )
    endpoint.rule = lambda m, k, n: DOWN if (m == "PUT" and k.endswith("/kb/t/manifest.json")) else FORWARD
    with pytest.raises(EndpointConnectionError):
        build_kb(v2, cfg, progress=False)
    endpoint.start()
    endpoint.rule = lambda m, k, n: FORWARD
    fresh = Storage(cfg)
    assert read_manifest(fresh, "t") == before_manifest  # the manifest was never replaced ...
    after = read_entities(fresh, "t").sort("entity_id")
    assert after.height == sum(s["rows"] for s in before_manifest["entities"]["shards"])
    assert after.equals(before), "the previous KB's shards changed under its manifest"
    report = build_kb(v2, cfg, progress=False)  # ... and the re-run publishes v2 exactly
    assert report.entities == 35
    assert read_entities(fresh, "t").filter(pl.col("description").str.starts_with("second")).height == 35
