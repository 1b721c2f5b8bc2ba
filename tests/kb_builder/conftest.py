"""kb_builder fixtures: local and S3 storage configs rooted in temp folders, tiny KB configs."""

from __future__ import annotations

import pytest

from kb_builder.config import StorageConfig


@pytest.fixture
def local_storage(tmp_path) -> StorageConfig:
    return StorageConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))


@pytest.fixture
def s3_storage(s3_bucket, tmp_path) -> StorageConfig:
    endpoint, bucket = s3_bucket
    return StorageConfig(
        root=f"s3://{bucket}/mel",
        s3_endpoint_url=endpoint,
        s3_region="us-east-1",
        max_retries=2,
        cache_dir=str(tmp_path / "cache"),
    )
