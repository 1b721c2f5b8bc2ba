"""A real S3 endpoint that can be broken on cue: moto's server behind a small HTTP forwarder.

The forwarder counts requests and asks `rule(method, key, n)` what to do with each one: forward it to moto,
answer 503 (a throttling/erroring endpoint), or go down (close the connection unanswered and stop listening,
as a crashed endpoint looks) until `start()` is called again. moto keeps its buckets in this process, so the
data survives an outage, as a real S3 does. Faults are placed by request count, never by timing.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

FORWARD, ERROR_503, DOWN = "forward", "503", "down"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class BreakableS3:
    """`url` is the endpoint to give boto3; `requests` lists (method, key, action) of every request seen."""

    def __init__(self, upstream: str, rule: Callable[[str, str, int], str] | None = None):
        self.upstream = urlparse(upstream)
        self.rule = rule or (lambda method, key, n: FORWARD)
        self.requests: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ThreadingHTTPServer | None = None
        self.down = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> BreakableS3:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                body = self._body()
                key = unquote(urlparse(self.path).path)
                with owner.lock:
                    n = len(owner.requests) + 1
                    action = DOWN if owner.down.is_set() else owner.rule(self.command, key, n)
                    owner.requests.append((self.command, key, action))
                if action == DOWN:
                    owner.down.set()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    threading.Thread(target=owner.stop, daemon=True).start()
                    return
                if action == ERROR_503:
                    payload = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                headers["content-length"] = str(len(body))
                conn = http.client.HTTPConnection(owner.upstream.hostname, owner.upstream.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_HEADERS and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.down.clear()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """The endpoint goes away: new connections are refused until `start()`."""
        self.down.set()
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def count(self, method: str | None = None, action: str | None = None, key_part: str = "") -> int:
        with self.lock:
            return sum(
                1
                for m, k, a in self.requests
                if (method is None or m == method) and (action is None or a == action) and key_part in k
            )
