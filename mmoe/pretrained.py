"""Checkpoint folders: build, save and load MMoE models (HF-style ``save_pretrained`` / ``from_pretrained``).

A folder holds ``config.json`` ({"mmoe": MMoEConfig, "clip": CLIP config dict}), ``model.safetensors``
(safetensors only: weights are never unpickled), the tokenizer files, ``preprocessor_config.json`` and
``mmoe_processor.json``. Everything reads local paths only; callers stage ``s3://`` folders themselves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

from mmoe.config import MMoEConfig, TinyCLIPConfig
from mmoe.features import tiny_clip_config
from mmoe.model import MMoEModel
from mmoe.processor import MMoEProcessor, check_text_length

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
PICKLE_FILES = ("pytorch_model.bin", "model.pt", "model.ckpt", "pytorch_model.bin.index.json")


def _require_safetensors(path: Path, weights: str = WEIGHTS_FILE) -> None:
    if (path / weights).exists() or any(path.glob("model-*.safetensors")):
        return
    pickles = [name for name in PICKLE_FILES if (path / name).exists()]
    if pickles:
        raise ValueError(
            f"{path} holds only pickle weights ({', '.join(pickles)}); this project never unpickles weights. "
            "Convert them to model.safetensors first (safetensors.torch.save_file on a trusted machine)."
        )
    raise FileNotFoundError(f"{path} has no {weights}")


def mmoe_config_from_dict(values: dict) -> MMoEConfig:
    """MMoEConfig from a dict, ignoring keys this version does not know (forward compatibility)."""
    known = {f.name for f in dataclasses.fields(MMoEConfig)}
    return MMoEConfig(**{k: v for k, v in values.items() if k in known})


def save_pretrained(path: str | Path, model: MMoEModel, processor: MMoEProcessor) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "mmoe": dataclasses.asdict(model.config),
        "clip": model.clip_config.to_dict(),
    }
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
    # contiguous CPU copies; CLIP has no tied weights, so every tensor is stored once
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    processor.save_pretrained(path)


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> tuple[MMoEModel, MMoEProcessor]:
    """(model in eval mode on ``device``, processor) from a folder written by ``save_pretrained``."""
    path = Path(path)
    _require_safetensors(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    mmoe_cfg = mmoe_config_from_dict(config["mmoe"])
    clip_cfg = CLIPConfig.from_dict(config["clip"])
    model = MMoEModel(mmoe_cfg, clip_cfg)
    missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    processor = MMoEProcessor.from_pretrained(path, text_max_tokens=mmoe_cfg.text_max_tokens)
    return model.to(device).eval(), processor


def build_tiny_model(
    tiny: TinyCLIPConfig, mmoe_cfg: MMoEConfig, corpus: list[str], seed: int = 0
) -> tuple[MMoEModel, MMoEProcessor]:
    """A random-weight tiny CLIP + MMoE with a word-level tokenizer from ``corpus``; same seed, same weights."""
    check_text_length(mmoe_cfg.text_max_tokens, tiny.image_size, tiny.patch_size)
    processor = MMoEProcessor.build_tiny(tiny, mmoe_cfg.text_max_tokens, corpus)
    clip_cfg = tiny_clip_config(tiny, mmoe_cfg.text_max_tokens, vocab_size=len(processor.tokenizer))
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # deterministic without touching the caller's RNG
        torch.manual_seed(seed)
        model = MMoEModel(mmoe_cfg, clip_cfg)
    return model.eval(), processor


def build_from_clip(
    clip_dir: str | Path, mmoe_cfg: MMoEConfig, seed: int = 0
) -> tuple[MMoEModel, MMoEProcessor]:
    """MMoE on a local pretrained CLIP folder (e.g. clip-vit-base-patch32); the MoE heads start random."""
    clip_dir = Path(clip_dir)
    _require_safetensors(clip_dir)
    clip = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True, use_safetensors=True)
    processor = MMoEProcessor.from_pretrained(clip_dir, text_max_tokens=mmoe_cfg.text_max_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MMoEModel(mmoe_cfg, clip.config)
    model.features.clip.load_state_dict(clip.state_dict())
    return model.eval(), processor


def vit_b32_clip_config(**text_overrides) -> CLIPConfig:
    """The architecture of openai/clip-vit-base-patch32 (dims only, no weights): real-size benchmarks offline."""
    text = dict(
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        vocab_size=49408,
        max_position_embeddings=77,
        **text_overrides,
    )
    vision = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
