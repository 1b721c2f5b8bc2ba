"""The build (kb_builder.image_paths) and the image loader refuse exactly the same local paths: one rule."""

from __future__ import annotations

from kb_builder.config import KBConfig, StorageConfig
from kb_builder.image_paths import allowed_roots, check_local_image, kb_image_roots
from workers.config import EncoderConfig
from workers.images import ImageLoader


def _verdict(check, uri: str) -> bool:
    try:
        check(uri)
    except PermissionError:
        return False
    return True


def test_build_and_index_agree_on_every_path(tmp_path):
    kb_dir, outside, extra = tmp_path / "kb", tmp_path / "outside", tmp_path / "extra"
    for folder in (kb_dir / "images", outside, extra):
        folder.mkdir(parents=True)
    (outside / "s.png").write_bytes(b"x")
    (kb_dir / "images" / "link.png").symlink_to(outside / "s.png")
    (kb_dir / "images" / "dirlink").symlink_to(outside)
    (kb_dir / "images" / "inner.png").symlink_to(kb_dir / "images" / "ok.png")
    storage = StorageConfig(root=str(tmp_path / "root"))
    kb = KBConfig(sample=False, entity_inputs=[str(kb_dir / "*.jsonl")])
    encoder = EncoderConfig(allowed_image_roots=[str(extra)])
    loader = ImageLoader.for_kb(encoder, storage, kb)
    roots = allowed_roots(storage, [*kb_image_roots(kb), *encoder.allowed_image_roots])
    assert roots == loader.allowed_roots
    uris = [
        str(kb_dir / "images" / "ok.png"),
        str(kb_dir / "images" / "inner.png"),
        str(kb_dir / "images" / "link.png"),
        str(kb_dir / "images" / "dirlink" / "s.png"),
        str(kb_dir / "images" / ".." / ".." / "outside" / "s.png"),
        str(outside / "s.png"),
        str(extra / "e.png"),
        str(tmp_path / "root" / "sample_src" / "a.png"),
        f"file://{kb_dir}/images/ok.png",
        "/etc/passwd",
    ]
    build = [_verdict(lambda u: check_local_image(u, roots), u) for u in uris]
    index = [_verdict(loader.check_local, u) for u in uris]
    assert build == index == [True, True, False, False, False, False, True, True, True, False]
