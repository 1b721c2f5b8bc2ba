"""Every stage reads KB images through ImageLoader.for_kb: images beside the KB inputs load, others do not."""

from __future__ import annotations

from PIL import Image

from kb_builder.config import KBConfig, StorageConfig
from workers.config import EncoderConfig
from workers.images import ImageLoader


def test_for_kb_allows_the_kb_input_folders_only(tmp_path):
    kb_dir, outside = tmp_path / "WikiMEL", tmp_path / "elsewhere"
    kb_dir.mkdir()
    outside.mkdir()
    for folder in (kb_dir, outside):
        Image.new("RGB", (8, 8), "red").save(folder / "img.png")
    kb = KBConfig(sample=False, entity_inputs=[str(kb_dir / "*.json")], mention_inputs=[str(kb_dir)])
    loader = ImageLoader.for_kb(EncoderConfig(), StorageConfig(root=str(tmp_path / "root")), kb)

    image, error = loader.load(str(kb_dir / "img.png"))
    assert error is None and image.size == (8, 8)

    image, error = loader.load(str(outside / "img.png"))
    assert image is None and "img.png" in error
