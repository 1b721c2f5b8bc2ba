"""The HTTP surface of the linker: a FastAPI app over any `LinkBackend` (Serve handles or the in-process Linker).

Input is checked here, before any model work: unknown fields and wrong JSON types are 422 naming the field
(pydantic, `extra="forbid"`), oversized text, images, batches and bodies are 413, bad base64 and undecodable
images are 400 (`cluster.serve.client_images`: allowed roots only, remote fetches off by default). Anything else that fails
is a 500 with a generic message and the request id; the traceback goes to the replica log, never to the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.serve.client_images import ClientImages
from cluster.serve.guard import IndexModelMismatch
from cluster.serve.ingress import running_ingress
from cluster.serve.schemas import (
    BatchLinkRequest,
    BatchLinkResponse,
    Entity,
    LinkRequest,
    LinkResponse,
    MentionIn,
)

log = logging.getLogger("mel.api")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
RECEIVED_AT = "mel.received_at"  # ASGI scope key: perf_counter() when the ingress got the request


class ApiError(Exception):
    """A client error with its HTTP status and the request field it concerns."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class LinkBackend(Protocol):
    """What the routes call: `cluster.serve.app.LinkIngress` (deployment handles) or `cluster.serve.pipeline.Linker`."""

    async def link_queries(self, queries: list[Any]) -> list[dict]: ...

    async def entity(self, entity_id: str) -> dict | None: ...

    async def readiness(self) -> tuple[bool, dict]: ...


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def _error(status: int, message: str, request: Request, field: str | None = None) -> JSONResponse:
    rid = getattr(request.state, "request_id", "-")
    body = {"error": message, "field": field, "request_id": rid}
    return JSONResponse(body, status_code=status, headers={"x-request-id": rid})


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_body_bytes`, by Content-Length or by counting a chunked body.

    The body is read here, before the app parses it, and replayed to the app: an error raised inside the app's
    own `receive()` would be caught by FastAPI's body parsing and turned into its generic 400.
    """

    def __init__(self, app, max_body_bytes: int, metrics=None):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[RECEIVED_AT] = time.perf_counter()  # the start of the `parse` stage and of `total`
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._refuse(headers, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                return await self._refuse(headers, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # later calls wait for the disconnect, as ASGI expects
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, headers: dict, send) -> None:
        if self.metrics is not None:
            self.metrics.request("body_limit", 413)
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.fullmatch(given) else new_request_id()
        body = {
            "error": f"body: request body is larger than max_body_bytes ({self.max_body_bytes})",
            "field": "body",
            "request_id": rid,
        }
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-request-id", rid.encode("latin-1")),
                    (b"connection", b"close"),  # the unread rest of the body must not be taken for a request
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class RequestIds:
    """ASGI middleware: every answer carries `x-request-id` (the client's when well-formed, else a new one; a
    malformed one is a 400), an unhandled exception is a 500 with the id and no trace, and each answer is counted
    in `metrics` by route template and status. Plain ASGI rather than `@app.middleware("http")`: Starlette's
    BaseHTTPMiddleware runs every request through an extra task and memory streams."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = request.headers.get("x-request-id")
        rid = given if given and REQUEST_ID.fullmatch(given) else new_request_id()
        request.state.request_id = rid
        status, started = 500, False

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        try:
            if given and rid != given:
                message = "x-request-id: 1-128 ASCII letters, digits or ._:- only"
                await _error(400, message, request, "x-request-id")(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s failed", rid)
            if started:
                raise
            await _error(500, "internal error", request)(scope, receive, send_with_id)
        route = scope.get("route")  # the matched route's template, not the raw path (bounded tags)
        self.metrics.request(getattr(route, "path", "unmatched"), status)


def _field_name(loc: tuple) -> str:
    """pydantic's error location -> `mentions.0.image` (dropping the leading `body`)."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def to_queries(
    items: list[MentionIn], prefix: str, serve_cfg, images: ClientImages, partitioned: bool = False
) -> list[Any]:
    """Validated request items -> `MentionQuery` records. Text limits first (cheap); then every item's image is
    decoded concurrently, off the event loop, so a batch of slow URLs costs one fetch deadline, not the sum;
    the first failing item (by index) is the error. `partitioned`: the KB is indexed with milvus.partition_key
    (else a partition filter is the client's 400, not a Milvus error about a missing field)."""
    from cluster.serve.pipeline import MentionQuery, filter_expression

    wheres = [f"{prefix}{i}." if prefix else "" for i in range(len(items))]
    for item, where in zip(items, wheres):
        if not partitioned and item.filters is not None and item.filters.partition is not None:
            raise ApiError(
                400,
                f"{where}filters.partition: this KB is indexed without partitions (milvus.partition_key unset)",
                f"{where}filters.partition",
            )
        for name in ("mention", "context"):
            if len(getattr(item, name)) > serve_cfg.max_text_chars:
                raise ApiError(
                    413,
                    f"{where}{name}: longer than max_text_chars ({serve_cfg.max_text_chars})",
                    f"{where}{name}",
                )
    decoded = await asyncio.gather(
        *(_image(images, item.image, f"{where}image") for item, where in zip(items, wheres)),
        return_exceptions=True,
    )
    for image in decoded:
        if isinstance(image, BaseException):
            raise image
    return [
        MentionQuery(
            mention=item.mention,
            context=item.context,
            image=image,
            top_k=item.top_k or serve_cfg.top_k,
            filter_expr=filter_expression(item.filters),
            explain=item.explain,
        )
        for item, image in zip(items, decoded)
    ]


async def _image(images: ClientImages, value: str | None, field: str):
    return await images.decode(value, field) if value else None


def _since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def create_app(
    backend: LinkBackend, serve_cfg, image_loader=None, metrics=None, partitioned: bool = False
) -> FastAPI:
    """The FastAPI app (OpenAPI at /docs). `image_loader`: a `workers.images.ImageLoader` or None;
    `metrics`: a `cluster.serve.metrics.ServeMetrics` inside a Serve replica (None: nothing recorded);
    `partitioned`: the collection has milvus.partition_key's field, so `filters.partition` can be served."""
    from cluster.serve.metrics import NoMetrics

    metrics = metrics or NoMetrics()
    app = FastAPI(title="MEL linker", version="1", description="Multimodal entity linking with MMoE.")
    images = ClientImages(serve_cfg, image_loader, ApiError)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, request, exc.field)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")  # a typo explains a
        first = errors[0]  # "missing" error on the field it was meant to be, so name the typo first
        field = _field_name(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return _error(422, "body: not valid JSON", request, "body")
        if first.get("type") == "extra_forbidden":
            return _error(422, f"{field}: unknown field", request, field)
        return _error(422, f"{field}: {first.get('msg', 'invalid')}", request, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """FastAPI's own 4xx (unreadable body, unknown route, wrong method) in the same error body as ours."""
        if exc.status_code == 400:  # raised by FastAPI's body parsing, e.g. a body that is not UTF-8
            return _error(400, "body: cannot be read as UTF-8 JSON", request, "body")
        response = _error(exc.status_code, str(exc.detail), request)
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(IndexModelMismatch)
    async def index_mismatch(request: Request, exc: IndexModelMismatch):
        """Not the client's fault and not a crash: the deployment is misconfigured until re-indexed."""
        log.error("request %s refused: %s", getattr(request.state, "request_id", "-"), exc)
        return _error(503, str(exc), request)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("request %s failed: %r", getattr(request.state, "request_id", "-"), exc, exc_info=exc)
        return _error(500, "internal error", request)

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request):
        """Readiness: 503 until the model is loaded and the alias points at a non-empty collection; `ingress`
        is how HTTP reaches this replica (`serve.ingress`, as Serve really started)."""
        ready, detail = await backend.readiness()
        body = {"ready": ready, "ingress": running_ingress(), **detail}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.post("/link", response_model=LinkResponse, response_model_exclude_none=True)
    async def link(body: LinkRequest, request: Request) -> dict:
        start = request.scope.get(RECEIVED_AT) or time.perf_counter()
        queries = await to_queries([body], "", serve_cfg, images, partitioned)
        parse_ms = _since(start)  # body read, JSON + pydantic, image decode
        (result,) = await backend.link_queries(queries)
        result["timings_ms"] = {"parse": parse_ms, **result["timings_ms"], "total": _since(start)}
        metrics.answered(result)
        return result

    @app.post("/link/batch", response_model=BatchLinkResponse, response_model_exclude_none=True)
    async def link_batch(body: BatchLinkRequest, request: Request) -> dict:
        start = request.scope.get(RECEIVED_AT) or time.perf_counter()
        if len(body.mentions) > serve_cfg.max_batch_mentions:
            raise ApiError(
                413, f"mentions: more than max_batch_mentions ({serve_cfg.max_batch_mentions})", "mentions"
            )
        queries = await to_queries(body.mentions, "mentions.", serve_cfg, images, partitioned)
        parse_ms = _since(start)
        results = await backend.link_queries(queries)
        for result in results:
            result["timings_ms"] = {"parse": parse_ms, **result["timings_ms"]}
            metrics.answered(result)
        return {"results": results, "timings_ms": {"parse": parse_ms, "total": _since(start)}}

    @app.get("/entities/{entity_id}", response_model=Entity)
    async def entity(entity_id: str, request: Request):
        row = await backend.entity(entity_id)
        if row is None:
            return _error(404, "entity_id: unknown entity", request, "entity_id")
        # local paths and s3 URIs are the server's storage, not something a client can fetch: only web URLs
        uris = [u for u in row.get("image_uris") or [] if str(u).lower().startswith(("http://", "https://"))]
        return {**row, "image_uris": uris}

    from cluster.serve.ui import mount_ui

    mount_ui(app, backend, serve_cfg, image_loader)  # the playground at /ui and the KB browser's API
    app.add_middleware(RequestIds, metrics=metrics)
    app.add_middleware(BodyLimit, max_body_bytes=serve_cfg.max_body_bytes, metrics=metrics)  # outermost
    return app
