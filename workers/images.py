"""Fetch and decode one image per record (the reader stage), safely, without ever failing the batch.

Sources: local paths (only under allowed roots, so a KB row cannot read `/etc/passwd` or escape with `..`),
`s3://` through `kb_builder.storage.Storage`, and `http(s)://` with a timeout and a size cap. Decoding runs
under a decompression-bomb guard (pixel count checked against `max_image_pixels` before the pixels are
decoded). Every per-item problem comes back as `(None, "message naming the uri")`: the record is then encoded
text-only (a zero image, as the official code does for missing images; reference section 1) and counted.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from kb_builder.config import KBConfig, StorageConfig
from kb_builder.storage import Storage, is_s3
from workers.config import EncoderConfig


class ImageLoader:
    """`load(uri) -> (PIL.Image RGB | None, error | None)`; plain class, picklable into Ray tasks."""

    def __init__(self, encoder_cfg: EncoderConfig, storage_cfg: StorageConfig, allowed_roots: list[str]):
        self.cfg = encoder_cfg
        self.storage = Storage(storage_cfg)
        roots = [*allowed_roots, *encoder_cfg.allowed_image_roots]
        if not is_s3(storage_cfg.root):
            roots.append(storage_cfg.root)  # images of the sample KB live under <root>/sample_src/
        self.allowed_roots = sorted({Path(r).expanduser().resolve() for r in roots if r and not is_s3(r)})
        self._http = None

    @classmethod
    def for_kb(cls, encoder_cfg: EncoderConfig, storage_cfg: StorageConfig, kb_cfg: KBConfig) -> ImageLoader:
        """The loader every stage uses: the storage root, the KB's local input folders and the configured roots."""
        return cls(encoder_cfg, storage_cfg, kb_image_roots(kb_cfg))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_http"] = None  # httpx clients do not pickle; rebuilt on first use in the worker
        return state

    def load(self, uri: str | None) -> tuple[Image.Image | None, str | None]:
        """The decoded RGB image, or None and a message that names `uri`."""
        if not uri:
            return None, None  # no image given: not an error, the record is text-only by design
        try:
            data = self.read(uri)
            return self.decode(data, uri), None
        except Exception as exc:  # per-item problems never escape: the caller counts them
            return None, f"{uri}: {exc}"

    # -- reading --------------------------------------------------------------------------------------------
    def read(self, uri: str) -> bytes:
        scheme = urlparse(uri).scheme.lower()
        if is_s3(uri):
            data = self.storage.read_bytes(uri)
        elif scheme in ("http", "https"):
            data = self._read_http(uri)
        elif scheme in ("", "file") or len(scheme) == 1:  # a Windows drive letter parses as a scheme
            data = self._read_local(uri)
        else:
            raise ValueError(f"unsupported image URI scheme {scheme!r}")
        if len(data) > self.cfg.max_image_bytes:
            raise ValueError(f"image is {len(data)} bytes, over max_image_bytes={self.cfg.max_image_bytes}")
        return data

    def check_local(self, uri: str) -> Path:
        """The resolved path if it lies under an allowed root (symlinks and `..` resolved first), else raise."""
        raw = unquote(urlparse(uri).path) if uri.startswith("file://") else uri
        if ".." in Path(raw).parts:
            raise PermissionError("'..' in image path is not allowed")
        path = Path(raw).expanduser().resolve()
        if not any(path.is_relative_to(root) for root in self.allowed_roots):
            raise PermissionError(
                f"path is outside the allowed image roots {[str(r) for r in self.allowed_roots]} "
                f"(add its folder to encoder.allowed_image_roots)"
            )
        return path

    def _read_local(self, uri: str) -> bytes:
        path = self.check_local(uri)
        if not path.is_file():
            raise FileNotFoundError("no such image file")
        size = path.stat().st_size
        if size > self.cfg.max_image_bytes:
            raise ValueError(f"image is {size} bytes, over max_image_bytes={self.cfg.max_image_bytes}")
        return path.read_bytes()

    def _read_http(self, uri: str) -> bytes:
        import httpx

        if self._http is None:
            self._http = httpx.Client(timeout=self.cfg.image_timeout_s, follow_redirects=True)
        cap = self.cfg.max_image_bytes
        with self._http.stream("GET", uri) as resp:
            if resp.status_code != 200:
                raise OSError(f"HTTP {resp.status_code}")
            declared = int(resp.headers.get("content-length") or 0)
            if declared > cap:
                raise ValueError(f"image is {declared} bytes, over max_image_bytes={cap}")
            chunks, total = [], 0
            for chunk in resp.iter_bytes():
                total += len(chunk)
                if total > cap:  # a server may lie about content-length or send none
                    raise ValueError(f"image is over max_image_bytes={cap}")
                chunks.append(chunk)
        return b"".join(chunks)

    # -- decoding -------------------------------------------------------------------------------------------
    def decode(self, data: bytes, uri: str = "") -> Image.Image:
        """Verify, check the pixel count before decoding (bomb guard), then decode and convert to RGB."""
        if not data:
            raise ValueError("empty image file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()  # catches truncated/corrupt files without decoding all pixels
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > self.cfg.max_image_pixels:
                raise ValueError(
                    f"image is {width}x{height} pixels, over max_image_pixels={self.cfg.max_image_pixels}"
                )
            img.load()
        return img.convert("RGB")


def load_images(loader: ImageLoader, uris: list[str | None]) -> tuple[list[Image.Image | None], list[str]]:
    """Load many; returns row-aligned images and the error messages (one per failed uri)."""
    images, errors = [], []
    for uri in uris:
        img, err = loader.load(uri)
        images.append(img)
        if err:
            errors.append(err)
    return images, errors


def kb_image_roots(kb_cfg: KBConfig) -> list[str]:
    """Folders of the local KB inputs (relative image paths resolve against them); s3:// inputs need none."""
    roots = []
    for uri in [*kb_cfg.entity_inputs, *kb_cfg.mention_inputs]:
        if is_s3(uri):
            continue
        path = Path(uri).expanduser()
        while any(ch in str(path) for ch in "*?["):
            path = path.parent
        roots.append(str(path if path.is_dir() else path.parent))
    return roots
