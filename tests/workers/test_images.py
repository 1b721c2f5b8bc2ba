"""ImageLoader: allowed roots, path escapes, S3 and HTTP sources, corrupt files and the decompression-bomb guard."""

from __future__ import annotations

import http.server
import io
import threading

import pytest
from PIL import Image

from kb_builder.config import StorageConfig
from kb_builder.storage import Storage
from workers.config import EncoderConfig
from workers.images import ImageLoader


def png_bytes(size=(8, 8), colour=(200, 10, 10), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 128).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def kb_dir(tmp_path):
    root = tmp_path / "kb"
    (root / "images").mkdir(parents=True)
    (root / "images" / "ok.png").write_bytes(png_bytes())
    (root / "images" / "gray.png").write_bytes(png_bytes(mode="L"))
    (root / "images" / "corrupt.png").write_bytes(png_bytes()[:40])
    (root / "images" / "text.png").write_bytes(b"not an image at all")
    (tmp_path / "secret.png").write_bytes(png_bytes())
    return root


def loader_for(tmp_path, kb_dir, **enc) -> ImageLoader:
    storage = StorageConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    return ImageLoader(EncoderConfig(**enc), storage, allowed_roots=[str(kb_dir)])


def test_local_images_decode_to_rgb(tmp_path, kb_dir):
    loader = loader_for(tmp_path, kb_dir)
    img, err = loader.load(str(kb_dir / "images" / "ok.png"))
    assert err is None and img.mode == "RGB" and img.size == (8, 8)
    img, err = loader.load(f"file://{kb_dir}/images/gray.png")
    assert err is None and img.mode == "RGB"
    assert loader.load(None) == (None, None)


@pytest.mark.parametrize("name", ["corrupt.png", "text.png", "missing.png"])
def test_bad_images_give_none_and_name_the_uri(tmp_path, kb_dir, name):
    uri = str(kb_dir / "images" / name)
    img, err = loader_for(tmp_path, kb_dir).load(uri)
    assert img is None and err.startswith(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "{kb}/images/../../secret.png",
        "file:///etc/passwd",
        "/etc/hostname",
        "{tmp}/secret.png",
        "ftp://host/x.png",
    ],
)
def test_escapes_and_other_roots_are_rejected(tmp_path, kb_dir, uri):
    uri = uri.format(kb=kb_dir, tmp=tmp_path)
    img, err = loader_for(tmp_path, kb_dir).load(uri)
    assert img is None and uri in err
    assert "not allowed" in err or "allowed image roots" in err or "unsupported" in err


def test_extra_allowed_roots_and_symlink_escape(tmp_path, kb_dir):
    (kb_dir / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    loader = loader_for(tmp_path, kb_dir)
    assert "allowed image roots" in loader.load(str(kb_dir / "images" / "link.png"))[1]
    loader = loader_for(tmp_path, kb_dir, allowed_image_roots=[str(tmp_path)])
    assert loader.load(str(tmp_path / "secret.png"))[1] is None


def test_size_and_pixel_caps(tmp_path, kb_dir):
    big = kb_dir / "images" / "big.png"
    big.write_bytes(png_bytes(size=(300, 300)))
    err = loader_for(tmp_path, kb_dir, max_image_pixels=10_000).load(str(big))[1]
    assert "300x300 pixels, over max_image_pixels=10000" in err
    err = loader_for(tmp_path, kb_dir, max_image_bytes=50).load(str(big))[1]
    assert "over max_image_bytes=50" in err


def test_s3_images(tmp_path, kb_dir, s3_bucket):
    endpoint, bucket = s3_bucket
    cfg = StorageConfig(root=f"s3://{bucket}/root", s3_endpoint_url=endpoint, cache_dir=str(tmp_path / "c"))
    Storage(cfg).write_bytes(f"s3://{bucket}/img/a.png", png_bytes())
    loader = ImageLoader(EncoderConfig(), cfg, allowed_roots=[])
    img, err = loader.load(f"s3://{bucket}/img/a.png")
    assert err is None and img.size == (8, 8)
    img, err = loader.load(f"s3://{bucket}/img/missing.png")
    assert img is None and f"s3://{bucket}/img/missing.png" in err


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        body = {"/ok.png": png_bytes(), "/big.png": png_bytes(size=(200, 200)) + b"\0" * 5000}.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


def test_http_images(tmp_path, kb_dir):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        loader = loader_for(tmp_path, kb_dir, max_image_bytes=4000)
        img, err = loader.load(f"{base}/ok.png")
        assert err is None and img.size == (8, 8)
        assert "HTTP 404" in loader.load(f"{base}/nope.png")[1]
        assert "over max_image_bytes=4000" in loader.load(f"{base}/big.png")[1]
    finally:
        server.shutdown()
