"""A scripted OpenAI-compatible chat-completions server for DME tests (real HTTP on 127.0.0.1).

The script maps a mention (read back from the prompt's "Mention: ..." line, so concurrent requests cannot be
mixed up) to a list of replies served in order; the last reply repeats. A reply can be a text answer, an HTTP
error status, a delay before answering, or a body that is not a chat completion.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from tests.fixtures import free_port

_MENTION = re.compile(r"^Mention: (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Reply:
    content: str = "0"  # the assistant message text
    status: int = 200  # non-200: an error body with this status
    delay_s: float = 0.0  # sleep before answering (a slow endpoint)
    malformed_body: bool = False  # 200 with a body that is not a chat completion


class FakeLLM:
    """`with FakeLLM(script) as llm:` serves on `llm.url` (an OpenAI-style base URL ending in /v1)."""

    def __init__(self, script: dict[str, list[Reply]] | None = None, default: Reply = Reply("0")):
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default = default
        self.calls: Counter = Counter()  # mention -> requests received
        self.requests: list[dict] = []  # bodies and headers, in arrival order
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests being answered at once (checks client-side concurrency)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(
            uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def _next(self, mention: str) -> Reply:
        replies = self.script.get(mention)
        if not replies:
            return self.default
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            user = next(m["content"] for m in body["messages"] if m["role"] == "user")
            match = _MENTION.search(user)
            mention = match.group(1) if match else ""
            self.calls[mention] += 1
            self.requests.append({"body": body, "authorization": request.headers.get("authorization")})
            reply = self._next(mention)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
            finally:
                self.in_flight -= 1
            if reply.status != 200:
                return JSONResponse({"error": {"message": "scripted failure"}}, status_code=reply.status)
            if reply.malformed_body:
                return PlainTextResponse("this is not JSON")
            return {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content}}],
            }

        return app

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        for _ in range(500):  # wait until uvicorn listens (startup, not a timed assertion)
            if self._server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError("fake LLM server did not start")

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
