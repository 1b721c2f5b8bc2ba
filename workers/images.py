"""Fetch and decode one image per record (the reader stage), safely, without ever failing the batch.

Sources: local paths (only under allowed roots, so a KB row cannot read `/etc/passwd` or escape with `..`),
`s3://` through `kb_builder.storage.Storage`, and `http(s)://` with a timeout and a size cap. Decoding runs
under a decompression-bomb guard (pixel count checked against `max_image_pixels` before the pixels are
decoded). Every per-item problem comes back as `(None, "message naming the uri")`: the record is then encoded
text-only (a zero image, as the official code does for missing images; reference section 1) and counted.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

from kb_builder.config import KBConfig, StorageConfig
from kb_builder.image_paths import OUTSIDE_ROOTS, check_local_image, kb_image_roots
from kb_builder.image_paths import allowed_roots as local_image_roots
from kb_builder.storage import Storage, is_s3, s3_bucket
from workers.config import EncoderConfig
from workers.fetch import FetchPolicy, fetch

REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class ImageTooLarge(ValueError):
    """More pixels than `max_image_pixels` (checked before the pixels are decoded)."""


class UndecodableImage(ValueError):
    """No decoder could read the bytes as an image."""


class ImageLoader:
    """`load(uri) -> (PIL.Image RGB | None, error | None)`; plain class, picklable into Ray tasks."""

    def __init__(self, encoder_cfg: EncoderConfig, storage_cfg: StorageConfig, allowed_roots: list[str]):
        self.cfg = encoder_cfg
        self.storage = Storage(storage_cfg)
        roots = [*allowed_roots, *encoder_cfg.allowed_image_roots]
        # the build's rule (kb_builder.image_paths): these roots plus the local storage root, resolved
        self.allowed_roots = local_image_roots(storage_cfg, roots)
        s3_roots = [*roots, s3_bucket(storage_cfg.root) if is_s3(storage_cfg.root) else ""]
        self.allowed_s3_prefixes = sorted({r.rstrip("/") + "/" for r in s3_roots if r and is_s3(r)})
        self.http_policy = FetchPolicy(
            total_s=encoder_cfg.image_timeout_s, max_bytes=encoder_cfg.max_image_bytes
        )
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
            if not any(uri.startswith(p) for p in self.allowed_s3_prefixes):
                raise PermissionError(
                    "s3 URI outside the configured buckets/prefixes (encoder.allowed_image_roots)"
                )
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
        """The resolved path if it lies under an allowed root, else raise: `mel kb build`'s own rule, applied
        again at read time (a symlink may have changed since the build); nothing cached across calls."""
        try:
            return check_local_image(uri, self.allowed_roots)
        except PermissionError as err:
            if str(err) == OUTSIDE_ROOTS:
                raise PermissionError(
                    f"{OUTSIDE_ROOTS}; add its folder to encoder.allowed_image_roots"
                ) from None
            raise

    def _read_local(self, uri: str) -> bytes:
        path = self.check_local(uri)
        if not path.is_file():
            raise FileNotFoundError("no such image file")
        size = path.stat().st_size
        if size > self.cfg.max_image_bytes:
            raise ValueError(f"image is {size} bytes, over max_image_bytes={self.cfg.max_image_bytes}")
        return path.read_bytes()

    def _read_http(self, uri: str) -> bytes:
        """KB-side fetch: any host the operator's KB names, under a total deadline and the byte cap."""
        import httpx

        if self._http is None:
            self._http = httpx.Client(follow_redirects=False)
        return fetch(uri, self.http_policy, self._http)

    # -- decoding -------------------------------------------------------------------------------------------
    def decode(self, data: bytes, uri: str = "") -> Image.Image:
        """`decode_image` under this loader's `max_image_pixels`."""
        return decode_image(data, self.cfg.max_image_pixels)


def decode_image(data: bytes, max_image_pixels: int) -> Image.Image:
    """Verify, check the pixel count before decoding (bomb guard), then decode and convert to RGB.

    The one image decoder (indexing and serving). Raises `ImageTooLarge` over the pixel limit and
    `UndecodableImage` for anything else a decoder throws (PIL raises SyntaxError, struct.error, EOFError, ...
    on corrupt chunks, not only OSError).
    """
    if not data:
        raise UndecodableImage("empty image file")
    try:
        return _decode(data, max_image_pixels)
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"image is over max_image_pixels={max_image_pixels}") from None
    except Exception as exc:
        reason = REPR.sub("", str(exc)).strip()  # PIL names `<_io.BytesIO object at 0x…>`: no addresses
        raise UndecodableImage(f"not a decodable image: {reason or type(exc).__name__}") from None


def _decode(data: bytes, max_image_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # catches truncated/corrupt files without decoding all pixels
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_image_pixels:
            raise ImageTooLarge(f"image is {width}x{height} pixels, over max_image_pixels={max_image_pixels}")
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
