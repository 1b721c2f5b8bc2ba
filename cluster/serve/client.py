"""`mel link`: send one mention to a running server and print its ranked candidates as a table.

A local image file is sent inline as base64 (the server may not see this machine's files); anything with a
URI scheme (s3://, http(s)://, file://) is sent as is and read by the server under its allowed roots.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from pathlib import Path

URI = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
DESCRIPTION_CHARS = 60


def wait_ready(
    url: str, attempts: int = 120, interval_s: float = 0.5, give_up: Callable[[], bool] = lambda: False
) -> int:
    """Poll `url`/readyz until it answers 200 (Serve binds HTTP after deploying, so connection errors count as
    not ready); returns the last status (0: never answered). `give_up()` true stops early (a dead server)."""
    import httpx

    status = 0
    for _ in range(attempts):
        if give_up():
            break
        try:
            status = httpx.get(f"{url}/readyz", timeout=30).status_code
        except httpx.TransportError:
            status = 0
        if status == 200:
            break
        time.sleep(interval_s)
    return status


def request_body(mention: str, context: str = "", image: str | None = None, top_k: int = 5) -> dict:
    """The `POST /link` body; a local image path becomes base64."""
    body = {"mention": mention, "context": context or "", "top_k": int(top_k)}
    if image:
        if URI.match(image):
            body["image"] = image
        else:
            path = Path(image).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"image file not found: {image}")
            body["image"] = base64.b64encode(path.read_bytes()).decode("ascii")
    return body


def _cut(text: str, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(reply: dict) -> str:
    """rank | confidence | score | entity_id | name | description (truncated), then the NIL decision and
    timings. Confidence (calibrated, in [0, 1]) comes first: it is what the NIL decision reads; the raw score
    only orders candidates."""
    rows = [("rank", "confidence", "score", "entity_id", "name", "description")]
    for c in reply.get("candidates", []):
        confidence = c.get("confidence")
        rows.append(
            (
                str(c["rank"]),
                "-" if confidence is None else f"{confidence:.3f}",
                f"{c['score']:.4f}",
                c["entity_id"],
                _cut(c["name"], 30),
                _cut(c.get("description", ""), DESCRIPTION_CHARS),
            )
        )
    last = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(last)]
    lines = ["  ".join([*(r[i].ljust(widths[i]) for i in range(last)), r[last]]).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 11)
    if len(rows) == 1:
        lines.append("(no candidates)")
    threshold = reply.get("nil_threshold")
    verdict = "NIL (no entity in the KB)" if reply.get("nil") else "linked"
    lines.append(f"{verdict}; nil_threshold={threshold} (confidence); collection={reply.get('collection')}")
    timings = reply.get("timings_ms") or {}
    lines.append("timings ms: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return "\n".join(lines)


def link(
    url: str,
    mention: str,
    context: str = "",
    image: str | None = None,
    top_k: int = 5,
    timeout_s: float = 60.0,
) -> str:
    """POST /link and return the table; a 4xx/5xx raises ValueError with the server's message."""
    import httpx

    body = request_body(mention, context, image, top_k)
    try:
        reply = httpx.post(url.rstrip("/") + "/link", json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot reach {url}: {exc}") from None
    if reply.status_code != 200:
        try:
            detail = reply.json().get("error", reply.text)
        except ValueError:
            detail = reply.text
        raise ValueError(f"server answered {reply.status_code}: {detail}")
    return format_table(reply.json())
