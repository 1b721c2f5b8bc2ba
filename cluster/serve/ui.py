"""The playground at `/ui` (static HTML/CSS/JS shipped in `cluster/serve/ui/`) and the API it needs beyond
linking: `GET /entities?q=` (the KB browser) and `GET /entities/{id}/images/{n}` (an entity's image as a small
JPEG, loaded through the ingress's `ImageLoader`, so the page never sees a storage path).

Served by the same FastAPI app as the API (`cluster.serve.http.create_app` calls `mount_ui`): no second
server, nothing fetched from the network by the page.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Protocol

from fastapi import FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from cluster.serve.schemas import EntityPage

UI_DIR = Path(__file__).with_name("ui")
THUMBNAIL_PX = 256  # longest side of a served entity image: enough for a card, small on the wire
MAX_PAGE = 100  # entities per KB-browser page, like top_k's limit


class BrowseBackend(Protocol):
    """What these routes call besides `LinkBackend.entity`: `LinkIngress` and `pipeline.Linker` both have it."""

    async def search_entities(self, query: str, offset: int, limit: int) -> dict: ...


def _thumbnail_jpeg(loader, uri: str) -> bytes | None:
    image, _error = loader.load(uri)
    if image is None:
        return None
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def mount_ui(app: FastAPI, backend: BrowseBackend, serve_cfg, image_loader=None) -> None:
    """Add `/ui/`, the KB search and the entity image routes to `app` (errors use the API's error body)."""
    from cluster.serve.http import ApiError

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse(url="/ui/")

    @app.get("/entities", response_model=EntityPage)
    async def search_entities(
        q: str = Query("", description="part of a name or alias; empty lists every entity"),
        offset: int = Query(0, ge=0),
        limit: int = Query(20, ge=1, le=MAX_PAGE),
    ) -> dict:
        if len(q) > serve_cfg.max_text_chars:
            raise ApiError(413, f"q: longer than max_text_chars ({serve_cfg.max_text_chars})", "q")
        return await backend.search_entities(q, offset, limit)

    @app.get("/entities/{entity_id}/images/{index}", include_in_schema=False)
    async def entity_image(entity_id: str, index: int, request: Request) -> Response:
        row = await backend.entity(entity_id)
        if row is None:
            raise ApiError(404, f"entity_id: unknown entity {entity_id!r}", "entity_id")
        uris = row.get("image_uris") or []
        if image_loader is None or not 0 <= index < len(uris):
            raise ApiError(404, f"index: entity {entity_id!r} has no image {index}", "index")
        jpeg = await asyncio.to_thread(_thumbnail_jpeg, image_loader, uris[index])
        if jpeg is None:
            raise ApiError(404, f"index: image {index} of {entity_id!r} cannot be loaded", "index")
        return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "max-age=300"})

    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
