"""FeatureCache: rows come back aligned to the ids asked for, across shards, deltas and S3 roots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kb_builder.config import StorageConfig
from kb_builder.storage import Storage
from workers.feature_cache import FeatureCache


def arrays(n, seed):
    rng = np.random.default_rng(seed)
    return {
        "cls": rng.normal(size=(n, 4)).astype(np.float16),
        "tok": rng.normal(size=(n, 3, 2)).astype(np.float32),
    }


def check_round_trip(cache: FeatureCache):
    a, b = arrays(5, 0), arrays(3, 1)
    cache.write_shard("part-00000", [f"a{i}" for i in range(5)], a)
    cache.write_shard(
        "part-00001", [f"b{i}" for i in range(3)], {k: torch.from_numpy(v) for k, v in b.items()}
    )
    got = cache.load(["b2", "a0", "a4", "b0"])
    assert got["cls"].dtype == torch.float16 and got["tok"].shape == (4, 3, 2)
    expect = np.stack([b["cls"][2], a["cls"][0], a["cls"][4], b["cls"][0]])
    assert np.array_equal(got["cls"].numpy(), expect)
    # An incremental delta replaces a row and deletes another; the base shards stay untouched.
    c = arrays(1, 2)
    cache.write_shard("delta-0001", ["a1"], c, deleted=["b1"])
    assert sorted(cache.ids()) == ["a0", "a1", "a2", "a3", "a4", "b0", "b2"]
    assert np.array_equal(cache.load(["a1"])["tok"].numpy(), c["tok"])
    with pytest.raises(KeyError, match="b1"):
        cache.load(["a0", "b1"])


def test_local_round_trip(tmp_path):
    storage = Storage(StorageConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "c")))
    cache = FeatureCache(storage, "col_v1")
    check_round_trip(cache)
    assert cache.shard_names() == ["part-00000", "part-00001", "delta-0001"]
    assert (tmp_path / "data" / "features" / "col_v1" / "part-00000.safetensors").exists()


def test_s3_round_trip(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    cfg = StorageConfig(root=f"s3://{bucket}/root", s3_endpoint_url=endpoint, cache_dir=str(tmp_path / "c"))
    check_round_trip(FeatureCache(Storage(cfg), "col_v1"))
    assert FeatureCache(Storage(cfg), "col_v1").has_shard("part-00001")


def test_row_count_mismatch_is_rejected(tmp_path):
    storage = Storage(StorageConfig(root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    with pytest.raises(ValueError, match="2 rows for 3 ids in shard 'part-x'"):
        FeatureCache(storage, "c").write_shard("part-x", ["a", "b", "c"], {"x": np.zeros((2, 1))})
