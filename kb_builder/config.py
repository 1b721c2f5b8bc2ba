"""Typed configuration of storage and KB building. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StorageConfig:
    """Where every artifact lives: a local folder or `s3://bucket/prefix`."""

    root: str = "./mel_data"
    s3_endpoint_url: str | None = None  # e.g. http://127.0.0.1:5000 for moto or MinIO; None = AWS
    s3_region: str | None = None  # None: the standard AWS environment / config decides
    max_retries: int = 5  # boto3 retry attempts (standard mode, exponential backoff)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    cache_dir: str = "~/.cache/mel"  # local staging for s3:// checkpoints and images


@dataclass
class KBConfig:
    """What to ingest and how to validate it."""

    name: str = "sample"
    sample: bool = True  # True: generate and use the bundled synthetic sample KB
    sample_entities: int = 300
    sample_mentions: int = 1200
    entity_inputs: list[str] = field(default_factory=list)  # files, globs, folders; local or s3://
    mention_inputs: list[str] = field(default_factory=list)
    format: str = "auto"  # auto | jsonl | parquet | csv | mimic | melbench
    column_map: dict[str, str] = field(default_factory=dict)  # source column -> canonical column
    duplicate_policy: str = "keep_first"  # keep_first | fail
    rows_per_shard: int = 100_000
    max_field_chars: int = 20_000
    max_name_chars: int = 512
    max_delete_fraction: float = 0.2  # a build deleting more of the live KB stops unless --allow-mass-delete
