"""Checkpoint folders: save -> load gives identical scores; safetensors only; a local CLIP folder as backbone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mmoe.config import MMoEConfig
from mmoe.pretrained import build_from_clip, load_pretrained, save_pretrained
from tests.mmoe.helpers import make_pairs, tiny_mmoe


def test_save_load_gives_identical_scores(tiny_model, tmp_path):
    model, processor = tiny_model
    save_pretrained(tmp_path, model, processor)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["mmoe"]["dim"] == 16 and config["clip"]["projection_dim"] == 32

    loaded, loaded_processor = load_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    mentions, entities, images = make_pairs(5, seed=7)
    with torch.no_grad():
        before = model(processor(mentions, images), processor(entities, images)).scores
        after = loaded(loaded_processor(mentions, images), loaded_processor(entities, images)).scores
    assert torch.equal(before, after)


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"mmoe": {}, "clip": {}}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="pickle"):
        load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pickle"):
        build_from_clip(tmp_path, MMoEConfig(text_max_tokens=17))


def test_unknown_config_keys_are_ignored(tiny_model, tmp_path):
    model, processor = tiny_model
    save_pretrained(tmp_path, model, processor)
    config = json.loads((tmp_path / "config.json").read_text())
    config["mmoe"]["some_future_field"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, _ = load_pretrained(tmp_path)
    assert loaded.config == model.config


def test_build_from_local_clip_folder(tiny_model, tmp_path):
    """A CLIP checkpoint folder (weights + tokenizer + preprocessor) becomes the backbone, weights intact."""
    model, processor = tiny_model
    clip = model.features.clip
    clip.save_pretrained(tmp_path)  # safetensors by default
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    built, built_processor = build_from_clip(tmp_path, tiny_mmoe())
    for name, tensor in clip.state_dict().items():
        assert torch.equal(built.features.clip.state_dict()[name], tensor), name
    batch = built_processor(["paris [SEP] city"], [None])
    assert batch["input_ids"].shape == (1, 17)
    with torch.no_grad():
        assert torch.isfinite(built(batch, batch).scores).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_on_gpu_matches_cpu(tiny_model, tmp_path):
    model, processor = tiny_model
    save_pretrained(tmp_path, model, processor)
    gpu_model, _ = load_pretrained(tmp_path, device="cuda")
    mentions, entities, images = make_pairs(4, seed=2)
    m, e = processor(mentions, images), processor(entities, images)
    with torch.no_grad():
        cpu = model(m, e).scores
        gpu = gpu_model({k: v.cuda() for k, v in m.items()}, {k: v.cuda() for k, v in e.items()}).scores
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_safetensors_file_with_wrong_keys_is_refused(tiny_model, tmp_path):
    model, processor = tiny_model
    save_pretrained(tmp_path, model, processor)
    save_file({"bogus": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="do not match"):
        load_pretrained(tmp_path)
