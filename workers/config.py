"""Typed configuration of entity encoding and the Milvus store. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmoe.config import TinyCLIPConfig


@dataclass
class EncoderConfig:
    """The model that encodes entities and mentions, and how Ray places it."""

    checkpoint: str = "tiny"  # "tiny" (random tiny CLIP), a local MMoE/CLIP folder, or s3://...
    tiny: TinyCLIPConfig = field(default_factory=TinyCLIPConfig)
    batch_size: int = 64
    num_actors: int = 1
    num_gpus_per_actor: float = 0.0  # 0 = CPU; 0.25 puts four actors on one GPU
    num_cpus_per_actor: float = 1.0
    resources_per_actor: dict[str, float] = field(
        default_factory=dict
    )  # custom Ray resources, e.g. {accelerator: 1}
    actor_start_timeout_s: float = (
        600.0  # fail clearly when no node can hold an encoder actor (autoscaling waits)
    )
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    image_timeout_s: float = 10.0  # TOTAL per http(s) image fetch (every read and redirect), not per read
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000  # decompression-bomb guard
    allowed_image_roots: list[str] = field(
        default_factory=list
    )  # local roots images may come from; [] = KB dir
    cache_dtype: str = "fp16"  # rerank feature cache on disk: fp16 (about 19 KB/entity at ViT-B/32) | fp32
    max_actor_restarts: int = 3  # a crashed encoder actor is restarted and its batches retried this often
    batches_in_flight: int = 2  # per encoder actor: keeps it busy while the CPU stage loads the next batch


@dataclass
class MilvusConfig:
    """The vector store. Empty uri = a Milvus Lite file under the storage root."""

    uri: str = ""
    token: str = ""
    collection: str = "mel_entities"  # the alias serving reads; builds go to versioned collections
    index_type: str = "FLAT"  # FLAT | IVF_FLAT | HNSW | AUTOINDEX
    index_params: dict[str, int] = field(
        default_factory=dict
    )  # e.g. {nlist: 1024} or {M: 16, efConstruction: 200}
    search_params: dict[str, int] = field(default_factory=dict)  # e.g. {nprobe: 16} or {ef: 128}
    metric: str = "IP"  # the MMoE score is an inner product (reference section 2)
    # of the jobs' searches (evaluation, DME, negatives): Strong | Bounded | Session | Eventually; serving
    # has its own (serve.consistency_level, Bounded). On a server Strong waits for the next time tick.
    consistency_level: str = "Strong"
    insert_batch_size: int = 1000
    # upsert | bulk_import (full builds on a server: Parquet files + Import, then wait)
    ingest: str = "upsert"
    # bulk_import files: an absolute path on the server's disk, or s3://<its bucket>/prefix
    bulk_dir: str = ""
    # a KB column (e.g. "type"): its value is the partition key; "" = no partition key
    partition_key: str = ""
    # above this many entities in a Milvus Lite file, `mel index` and `mel serve` advise a Milvus server
    # (Lite searches in Python: /link 11.9 / 35.8 / 206 ms at 120 / 10k / 100k entities; a server 19-20 ms)
    lite_advice_entities: int = 10_000
