"""`ray_config.yaml` -> typed config objects, validated on load.

Each package owns the dataclasses of its own section; this module composes them into `MELConfig`, checks every
key and type (an error names the key and the file), and applies `--set section.key=value` overrides.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kb_builder.config import KBConfig, StorageConfig
from mmoe.config import MMoEConfig
from workers.config import EncoderConfig, MilvusConfig

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "ray_config.yaml"


@dataclass
class RayConfig:
    address: str = "local"  # "local" starts Ray in-process; "auto" or "ray://host:10001" joins a cluster
    num_cpus: int | None = 2  # local Ray only
    object_store_memory_mb: int = 1024  # local Ray only
    namespace: str = "mel"


@dataclass
class TrainConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(
        default_factory=dict
    )  # custom Ray resources, e.g. {accelerator: 1}
    epochs: int = 4
    lr: float = 5e-4  # the tiny random model; the paper fine-tunes CLIP at 5e-6 (WikiMEL) or 1e-5 (configs/)
    weight_decay: float = 1e-4
    adam_eps: float = 1e-4
    batch_size: int = 32
    grad_clip_norm: float | None = 1.0  # None = no clipping, as the official code
    lr_schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    seed: int = 43
    mixed_precision: bool = True  # bf16 autocast on GPU; fp32 on CPU
    checkpoint_every_steps: int = 50
    eval_every_epochs: int = 1
    dev_protocol: str = "system"  # system (inner-product top-K + exact rerank) | exhaustive (the paper's)
    dev_top_k: int = 20  # K of the system dev protocol (golds beyond it are misses; 0 = eval.retrieve_k)
    early_stop_patience: int = 3  # in evaluations without a better dev MRR
    hard_negatives: int = 0  # extra negatives per mention mined from the index (0 = in-batch only)
    hard_negative_pool: int = 20  # mine among the top-N of the index
    negatives_refresh_epochs: int = (
        0  # re-mine hard negatives from the current model every N epochs (0 = once)
    )
    train_fraction: float = 1.0  # low-resource runs: 0.1 or 0.2 (seeded subset)
    max_failures: int = 2  # worker failures Ray Train recovers from, resuming at the last checkpoint
    run_name: str = "mmoe"


@dataclass
class EvalConfig:
    retrieve_k: int = 100  # ANN candidates per mention for the system protocol
    batch_size: int = 64
    # records per forward pass when evaluation only encodes entities (vectors, caches): 256 ran 1.27x faster
    # than 64 on the tiny model (per-op overhead); scoring stays at batch_size, where larger batches were slower
    entity_batch_size: int = 256
    entity_chunk: int = 4096  # entities scored at once in the exhaustive protocol
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 20])
    dme_ablation: bool = True  # also report metrics with DME off


@dataclass
class DMELLMConfig:
    url: str = ""  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 20.0
    max_retries: int = 3
    backoff_s: float = 0.5
    concurrency: int = 8


@dataclass
class DMEConfig:
    selector: str = "embedding"  # embedding (offline default) | llm | none
    candidates_top_n: int = 5  # ANN candidates added to the name/alias matches
    max_candidates: int = 10
    latency_budget_ms: float = 200.0  # serving: past this, fall back
    fallback: str = "embedding"  # embedding | none
    llm: DMELLMConfig = field(default_factory=DMELLMConfig)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # how HTTP reaches the ingress replica (cluster/serve/ingress.py): haproxy = Ray Serve's HAProxy ingress,
    # straight to the replica's own HTTP server; proxy = Serve's Python proxy actor (two actor calls more)
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    # haproxy: how long a stopping ingress replica still answers (Serve's default is 30 s)
    drain_s: float = 2.0
    num_replicas: int = 1
    max_replicas: int = 1  # > num_replicas enables autoscaling
    max_ongoing_requests: int = 32
    num_gpus_per_replica: float = 0.0
    num_cpus_per_replica: float = 0.25  # CPUs each replica reserves; 4 deployments fit a 2-CPU local Ray
    # single: one deployment runs ingress + encoder + search + rerank (one machine; fewest hops, measured in
    # bench/bench_serve.py); split: a deployment per stage, each scaled on its own (GPU scale-out)
    layout: Literal["single", "split"] = "single"
    torch_threads: int = 0  # intra-op threads per model replica; 0 = int(num_cpus_per_replica), at least 1
    batch_max_size: int = 16
    batch_wait_timeout_s: float = 0.0  # extra wait for a fuller batch; 0: a batch is what queued meanwhile
    top_k: int = 10  # candidates returned
    retrieve_k: int = 50  # candidates reranked
    # a single mention runs a checked TorchScript trace of the mention encoder (mmoe/traced.py): the same
    # features without per-op Python overhead; false: eager PyTorch for every request
    traced_encoder: bool = True
    # of serving's searches (/link, link-batch); Strong on a Milvus server waits for its next time tick
    # (~200 ms a search on 2.3.5, 19 ms p50 at Bounded: bench_serve). Jobs keep milvus.consistency_level
    consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = "Bounded"
    nil_threshold: float | None = None  # on confidence [0,1]; None: the calibrated one, else never NIL
    max_text_chars: int = 2000
    max_image_bytes: int = 5_000_000
    max_batch_mentions: int = 64
    max_body_bytes: int = 8_000_000
    checkpoint: str = ""  # model folder to serve; "" = the training run's best
    access_log: bool = True  # one log line per deployment call (the quickstart turns it off)
    fetch_remote_images: bool = (
        False  # GET a client's http(s)/s3 image URIs at all (off: 400, nothing fetched)
    )
    fetch_allowed_hosts: list[str] = field(default_factory=list)  # exact host names a client's URL may name
    fetch_allowed_s3_prefixes: list[str] = field(
        default_factory=list
    )  # s3://bucket/prefix/ a client may name
    fetch_allow_private: bool = False  # allow hosts resolving to private/loopback/link-local (tests only)
    fetch_timeout_s: float = 5.0  # TOTAL per fetch, redirects and every read included
    fetch_max_redirects: int = 3
    max_concurrent_fetches: int = 8  # per ingress replica; more in flight: 503 at once, nothing queued


@dataclass
class BatchConfig:
    """`mel link-batch`: the Ray Data actor pool that links mention files offline (cluster/batch)."""

    actors: int = 1  # LinkActor replicas, each holding the model (size to the GPUs or CPUs you have)
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0  # > 0: actors encode and rerank on a GPU share
    batch_size: int = 64  # mentions per map_batches call (one encode, one ANN search, one rerank)
    rows_per_part: int = 10_000  # rows per output Parquet part, the unit a re-run skips when done
    top_k: int = 10  # candidates written per mention (serve.retrieve_k are reranked, as /link)
    calls_per_actor: int = 2  # batches in one actor at once, on threads: compute overlaps Milvus searches


@dataclass
class MELConfig:
    ray: RayConfig = field(default_factory=RayConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    kb: KBConfig = field(default_factory=KBConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    mmoe: MMoEConfig = field(default_factory=MMoEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dme: DMEConfig = field(default_factory=DMEConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key and the file."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, recursing into dataclasses, lists and dicts."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, source)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{source}: '{key}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        k_tp, v_tp = typing.get_args(tp)
        return {
            _coerce(k, k_tp, key, source): _coerce(v, v_tp, f"{key}.{k}", source) for k, v in value.items()
        }
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be {tp.__name__}, got bool {value!r}")
    if tp in (str, int, float, bool):
        if not isinstance(value, tp):
            raise ConfigError(
                f"{source}: '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    return value


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"{source}: unknown key '{where}' (allowed under '{prefix or 'top level'}': {sorted(names)})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, source)
    return cls(**kwargs)


def _apply_override(data: dict, assignment: str) -> None:
    """`train.epochs=3` -> data["train"]["epochs"] = 3 (the value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    path, raw = assignment.split("=", 1)
    parts = [p for p in path.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def _deep_merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    overlays: list[str | Path] | None = None,
) -> MELConfig:
    """Read `path` (default: the repository's ray_config.yaml), merge preset overlays, apply `--set` overrides."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    data = _read_yaml(path)
    source = str(path)
    for overlay in overlays or []:
        data = _deep_merge(data, _read_yaml(Path(overlay)))
        source += f" + {overlay}"
    for assignment in overrides or []:
        _apply_override(data, assignment)
    if overrides:
        source += " (with --set overrides)"
    return _build(MELConfig, data, "", source)


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def milvus_uri(config: MELConfig) -> str:
    """The Milvus URI in force: the configured one, or a Milvus Lite file under a local storage root."""
    if config.milvus.uri:
        return config.milvus.uri
    root = config.storage.root
    if root.startswith("s3://"):
        return str(Path(config.storage.cache_dir).expanduser() / "milvus.db")
    return str(Path(root).expanduser().resolve() / "milvus.db")
