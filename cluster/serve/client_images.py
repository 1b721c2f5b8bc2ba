"""A client's `image` value -> a PIL image, or an `ApiError` naming the field that tells a client nothing more.

Decoding is `workers.images.decode_image` (one owner: the same pixel limit, `encoder.max_image_pixels`, and
the same decoder-failure handling as indexing). What a client may name:
- base64 or a `data:` URL: decoded; any decoder failure is a 400 naming the field, too many pixels a 413;
- a local path / `file://`: only under the loader's allowed roots; a path outside them, a missing file and a
  file that is not an image all get the SAME message, so a client cannot learn which files exist;
- `http(s)://` and `s3://`: refused unless `serve.fetch_remote_images` is on; then only hosts in
  `serve.fetch_allowed_hosts` (no private/loopback addresses, every redirect checked) and s3 URIs under
  `serve.fetch_allowed_s3_prefixes`, with a total deadline and the byte cap (`workers.fetch`); every fetch
  failure gets one generic message. Fetches run on a small thread pool of their own, at most
  `serve.max_concurrent_fetches` at once per replica; more is a 503 at once, so slow URLs cannot hold the
  event loop or the default pool that local work uses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from concurrent.futures import ThreadPoolExecutor

from workers.config import EncoderConfig
from workers.fetch import FetchPolicy, fetch
from workers.images import ImageLoader, ImageTooLarge, decode_image

REMOTE = re.compile(r"^(s3|https?)://", re.IGNORECASE)
LOCAL = re.compile(r"^file://", re.IGNORECASE)
CANNOT_LOAD = "cannot load an image from this URI or path"
CANNOT_FETCH = "cannot fetch an image from this URL"


class ClientImages:
    """Per-app: the serve limits, the loader (decoder + allowed roots), and the bounded fetch pool."""

    def __init__(self, serve_cfg, loader: ImageLoader | None, api_error):
        self.cfg, self.loader, self.api_error = serve_cfg, loader, api_error
        self.max_pixels = loader.cfg.max_image_pixels if loader else EncoderConfig().max_image_pixels
        self.policy = FetchPolicy(
            total_s=serve_cfg.fetch_timeout_s,
            max_bytes=serve_cfg.max_image_bytes,
            max_redirects=serve_cfg.fetch_max_redirects,
            allowed_hosts=tuple(serve_cfg.fetch_allowed_hosts),
            allow_private=serve_cfg.fetch_allow_private,
        )
        self.slots = serve_cfg.max_concurrent_fetches
        self.pool = ThreadPoolExecutor(max(1, self.slots), thread_name_prefix="mel-fetch")

    async def decode(self, value: str, field: str):
        if REMOTE.match(value):
            return await self._remote(value, field)
        if LOCAL.match(value) or (value.startswith(("/", "./", "~")) and "." in value.rsplit("/", 1)[-1]):
            return await asyncio.to_thread(self._local, value, field)
        return await asyncio.to_thread(self._inline, value, field)

    def _inline(self, value: str, field: str):
        if value[:5].lower() == "data:":
            _, comma, value = value.partition(",")
            if not comma:
                raise self.api_error(400, f"{field}: data URL without a comma", field)
        if len(value) * 3 // 4 > self.cfg.max_image_bytes:
            raise self._too_big(field)
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise self.api_error(
                400, f"{field}: not valid base64 (nor an s3://, http(s)://, file:// URI)", field
            ) from None
        if len(raw) > self.cfg.max_image_bytes:
            raise self._too_big(field)
        return self._decode(raw, field, f"{field}: not a decodable image")

    def _local(self, value: str, field: str):
        if self.loader is None:
            raise self.api_error(400, f"{field}: image URIs are not enabled on this server", field)
        try:
            raw = self.loader.read(value[len("file://") :] if LOCAL.match(value) else value)
        except Exception:
            raise self.api_error(400, f"{field}: {CANNOT_LOAD}", field) from None
        return self._decode(raw, field, f"{field}: {CANNOT_LOAD}")

    async def _remote(self, value: str, field: str):
        if not self.cfg.fetch_remote_images or self.loader is None:
            raise self.api_error(400, f"{field}: remote image URLs are not fetched by this server", field)
        if self.slots <= 0:
            raise self.api_error(503, f"{field}: too many remote image fetches in flight, retry later", field)
        self.slots -= 1  # one event loop per replica: no lock needed between the check and the decrement
        try:
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(self.pool, self._fetch, value)
        finally:
            self.slots += 1
        if raw is None:
            raise self.api_error(400, f"{field}: {CANNOT_FETCH}", field)
        return await asyncio.to_thread(self._decode, raw, field, f"{field}: {CANNOT_FETCH}")

    def _fetch(self, uri: str) -> bytes | None:
        """The bytes, or None for every failure alike (refused, closed port, 401, timeout, too big)."""
        try:
            if uri[:5].lower() == "s3://":
                prefixes = [p.rstrip("/") + "/" for p in self.cfg.fetch_allowed_s3_prefixes]
                if not any(uri.startswith(p) for p in prefixes):
                    return None
                data = self.loader.storage.read_bytes(uri)
                return data if len(data) <= self.cfg.max_image_bytes else None
            return fetch(uri, self.policy)
        except Exception:
            return None

    def _decode(self, raw: bytes, field: str, message: str):
        try:
            return decode_image(raw, self.max_pixels)
        except ImageTooLarge:
            raise self.api_error(
                413, f"{field}: image has more pixels than max_image_pixels", field
            ) from None
        except Exception:
            raise self.api_error(400, message, field) from None

    def _too_big(self, field: str):
        return self.api_error(
            413, f"{field}: image larger than max_image_bytes ({self.cfg.max_image_bytes})", field
        )
