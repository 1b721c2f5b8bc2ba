"""Fixtures of the cluster tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def sample_kb(mel_config):
    """The sample KB built under `mel_config`, its storage and its untrained tiny model:
    (cfg, storage, model_dir)."""
    from kb_builder.build import build_kb
    from kb_builder.storage import Storage
    from workers.model_store import resolve_model_dir

    cfg = mel_config
    build_kb(cfg.kb, cfg.storage, progress=False)
    return cfg, Storage(cfg.storage), resolve_model_dir(cfg.storage, cfg.kb, cfg.encoder, cfg.mmoe)
