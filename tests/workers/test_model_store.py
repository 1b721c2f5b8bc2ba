"""workers.model_store: a refused checkpoint conversion leaves nothing behind under models/ (issue 17 item 9)."""

from __future__ import annotations

import json

import pytest

from kb_builder.config import KBConfig, StorageConfig
from mmoe.config import MMoEConfig
from workers.config import EncoderConfig
from workers.model_store import resolve_model_dir


def test_a_refused_checkpoint_conversion_leaves_no_init_folder(tmp_path):
    clip = tmp_path / "clip"  # a CLIP folder (no "mmoe" section) holding only pickle weights: refused
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (clip / "pytorch_model.bin").write_bytes(b"not unpickled")
    storage = StorageConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="never unpickles"):
        resolve_model_dir(storage, KBConfig(), EncoderConfig(checkpoint=str(clip)), MMoEConfig())
    models = tmp_path / "data" / "models"
    assert models.is_dir() and list(models.iterdir()) == []
