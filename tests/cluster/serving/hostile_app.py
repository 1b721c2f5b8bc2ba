"""An in-process linker over real HTTP (uvicorn in a thread), on a KB whose entity ids and names hold quotes,
backslashes and non-ASCII text, and an HTTP server on loopback that counts the GETs it receives.

No Ray: the hostile-input tests need the real HTTP surface and the real Milvus Lite, not Serve's replicas.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.fixtures import free_port, wait_until

QUIRKY = [
    ("O'Brien", "O'Brien"),
    ("back\\slash\\", "Back \\ Slash"),
    ('quo"te', 'He said "hi"'),
    ("Café Zürich", "Café Zürich"),
    ("emoji😀", "Smile 😀"),
    ("rtl\u200fmark", "שלום"),
    ("tab\tid", "Tab\tName"),
]


@dataclass
class HostileApp:
    cfg: object
    url: str
    entities: list[dict]
    server: object
    linker: object
    loader: object


def write_kb(folder: Path, n_plain: int = 12) -> Path:
    rows = [{"entity_id": eid, "name": name, "description": f"about {name}"} for eid, name in QUIRKY]
    rows += [
        {"entity_id": f"E{i}", "name": f"Plain {i}", "description": f"plain entity {i}"}
        for i in range(n_plain)
    ]
    path = folder / "entities.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def start_app(tmp: Path, serve_overrides: list[str]) -> HostileApp:
    """Build the quirky KB, index it in-process, serve it with uvicorn on a free port (returns once healthy)."""
    from cluster.artifacts import serving_model_dir
    from cluster.config import load_config
    from cluster.serve.http import create_app
    from cluster.serve.pipeline import Linker
    from kb_builder.build import build_kb
    from kb_builder.shards import read_entities
    from kb_builder.storage import Storage
    from tests.cluster.serving.helpers import index_collection, swap_alias
    from workers.images import ImageLoader

    src = tmp / "src"
    src.mkdir(parents=True)
    cfg = load_config(
        overrides=[
            f"storage.root={tmp / 'data'}",
            f"storage.cache_dir={tmp / 'cache'}",
            "kb.sample=false",
            "kb.name=hostile",
            f"milvus.uri={tmp / 'milvus.db'}",
            *serve_overrides,
        ]
    )
    cfg.kb.entity_inputs = [str(write_kb(src))]
    build_kb(cfg.kb, cfg.storage, progress=False)
    model_dir = serving_model_dir(cfg)
    storage = Storage(cfg.storage)
    entities = read_entities(storage, cfg.kb.name, columns=["entity_id", "name", "description", "image_uris"])
    entities = entities.to_dicts()
    swap_alias(cfg, index_collection(cfg, model_dir, f"{cfg.milvus.collection}_v1", entities))
    linker = Linker.from_config(cfg)
    loader = ImageLoader.for_kb(cfg.encoder, cfg.storage, cfg.kb)
    url, server = serve_http(
        create_app(linker, cfg.serve, loader, partitioned=bool(cfg.milvus.partition_key))
    )
    return HostileApp(cfg, url, entities, server, linker, loader)


def serve_http(app) -> tuple[str, object]:
    """Run a FastAPI app with uvicorn in a daemon thread on a free port; (url, server) once /healthz answers."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(httpx, url), timeout_s=60, what="uvicorn up")
    return url, server


def _healthy(httpx, url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class CountingServer:
    """Loopback HTTP server that counts every request (and the most at once); `slow_s` > 0 trickles one byte per
    `slow_s` seconds;
    `/redirect?to=URL` answers 302 to URL."""

    def __init__(self, body: bytes = b"not an image", slow_s: float = 0.0):
        self.hits = self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with lock:
                    outer.hits += 1
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    self._answer()
                finally:
                    with lock:
                        outer.in_flight -= 1

            def _answer(self):
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(len(body)):
                        if slow_s:
                            time.sleep(slow_s)
                        self.wfile.write(body[i : i + 1] if slow_s else body[i:])
                        self.wfile.flush()
                        if not slow_s:
                            break
                except OSError:
                    pass  # the client gave up: expected for slow bodies

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default backlog of 5 drops connects when 32 arrive at once

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
