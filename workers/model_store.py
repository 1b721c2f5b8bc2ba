"""Which model folder encodes the KB: a named checkpoint, else `<root>/models/init`, built once on first need.

Everything downstream (`load_pretrained`) reads local folders only, so `s3://` checkpoints are staged into
`storage.cache_dir` here. The init model is built from `encoder.checkpoint`: "tiny" (random tiny CLIP whose
word-level tokenizer learns the KB's own text), or a local/s3 CLIP folder (pretrained backbone, random MoE
heads), or an MMoE folder used as it is. It is written with `save_pretrained` and uploaded to s3 roots.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from kb_builder.config import KBConfig, StorageConfig
from kb_builder.storage import Storage, is_s3
from mmoe.config import MMoEConfig
from workers.config import EncoderConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # present in every MMoE folder (mmoe.pretrained) and every HF CLIP folder
INIT_SEED = 0  # weights of the untrained model; fixed so `models/init` is reproducible


def is_mmoe_dir(path: Path) -> bool:
    """An MMoE folder's config.json has an "mmoe" section; a plain CLIP folder's does not."""
    import json

    cfg = path / CONFIG_FILE
    return cfg.exists() and "mmoe" in json.loads(cfg.read_text())


def stage_dir(storage: Storage, uri: str) -> Path:
    """A local copy of a folder: local paths unchanged, s3:// downloaded once into cache_dir/models/<hash>."""
    if not is_s3(uri):
        path = Path(uri).expanduser()
        if not (path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"model folder {uri} has no {CONFIG_FILE}")
        return path
    if not storage.exists(f"{uri.rstrip('/')}/{CONFIG_FILE}"):
        raise FileNotFoundError(f"model folder {uri} has no {CONFIG_FILE}")
    tag = hashlib.sha256(uri.encode()).hexdigest()[:16]
    local = storage.cache_dir / "models" / tag
    if not (local / CONFIG_FILE).exists():
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=local.parent if local.parent.exists() else None))
        storage.download_dir(uri, tmp)
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(local, ignore_errors=True)
        os.replace(tmp, local)
    return local


def kb_corpus(storage: Storage, kb_name: str) -> list[str]:
    """The KB's own text (entity names, descriptions, aliases; mention texts) for the tiny tokenizer."""
    from kb_builder.shards import read_entities, read_mentions

    ents = read_entities(storage, kb_name, columns=["name", "description", "aliases"])
    corpus = [t for t in ents["name"].to_list() + ents["description"].to_list() if t]
    corpus += [a for aliases in ents["aliases"].to_list() for a in (aliases or [])]
    mentions = read_mentions(storage, kb_name)
    corpus += [t for t in mentions["mention"].to_list() + mentions["context"].to_list() if t]
    return corpus


def build_init(
    storage: Storage, kb_cfg: KBConfig, encoder_cfg: EncoderConfig, mmoe_cfg: MMoEConfig, out: Path
):
    """Write the untrained model to `out` (local)."""
    from mmoe.pretrained import build_from_clip, build_tiny_model, save_pretrained

    source = encoder_cfg.checkpoint
    if source == "tiny":
        model, processor = build_tiny_model(
            encoder_cfg.tiny, mmoe_cfg, kb_corpus(storage, kb_cfg.name), INIT_SEED
        )
    else:
        src = stage_dir(storage, source)
        if is_mmoe_dir(src):
            shutil.copytree(src, out, dirs_exist_ok=True)
            return
        model, processor = build_from_clip(src, mmoe_cfg, seed=INIT_SEED)
    save_pretrained(out, model, processor)


def resolve_model_dir(
    storage_cfg: StorageConfig,
    kb_cfg: KBConfig,
    encoder_cfg: EncoderConfig,
    mmoe_cfg: MMoEConfig,
    checkpoint: str = "",
) -> Path:
    """A local MMoE folder: `checkpoint` (staged from s3://), else `<root>/models/init` (built once)."""
    storage = Storage(storage_cfg)
    if checkpoint:
        return stage_dir(storage, checkpoint)
    init_uri = storage.join("models", "init")
    if storage.exists(f"{init_uri.rstrip('/')}/{CONFIG_FILE}"):
        return stage_dir(storage, init_uri)
    log.info("building the untrained model (%s) into %s", encoder_cfg.checkpoint, init_uri)
    if is_s3(init_uri):
        with tempfile.TemporaryDirectory() as tmp:
            build_init(storage, kb_cfg, encoder_cfg, mmoe_cfg, Path(tmp))
            _upload_config_last(storage, Path(tmp), init_uri)
        return stage_dir(storage, init_uri)
    final = Path(init_uri)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".init-", dir=final.parent))
    try:
        build_init(storage, kb_cfg, encoder_cfg, mmoe_cfg, tmp)
    except BaseException:  # a refused conversion (pickle weights, bad folder) leaves no half-built folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if (final / CONFIG_FILE).exists():  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def _upload_config_last(storage: Storage, local: Path, uri: str) -> None:
    """config.json goes last: a folder without it is an interrupted upload, rebuilt on the next call."""
    for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name != CONFIG_FILE):
        storage.write_bytes(f"{uri.rstrip('/')}/{path.relative_to(local).as_posix()}", path.read_bytes())
    storage.write_bytes(f"{uri.rstrip('/')}/{CONFIG_FILE}", (local / CONFIG_FILE).read_bytes())
