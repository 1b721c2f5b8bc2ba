"""The `llm` selector: ask any OpenAI-compatible chat-completions endpoint which description fits.

Bulk runs overlap many calls on one httpx.AsyncClient, bounded by a semaphore of `dme.llm.concurrency` so a
shared endpoint is not flooded. 429, 5xx, timeouts and connection errors are retried with exponential backoff
(`backoff_s * 2**attempt`); whatever still fails, and any answer that is not one integer in range, falls back
to the configured fallback selector and is counted under `fell_back[<reason>]`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx

from cluster.dme.prompt import AnswerError, build_messages, parse_answer
from cluster.dme.selectors import FALLBACK, NO_CANDIDATES, NO_MATCH, Item, Selection, Selector, chosen

RETRY_STATUS = {429, 500, 502, 503, 504}


class LLMError(Exception):
    """A call that did not produce an answer; `reason` names why (timeout, http_500, connect_error, ...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LLMClient:
    """POST {url}/chat/completions with retries; returns the first choice's message text."""

    def __init__(self, llm_cfg):
        if not llm_cfg.url:
            raise ValueError(
                "dme.selector=llm needs dme.llm.url (an OpenAI-compatible base URL, e.g. .../v1)"
            )
        self.cfg = llm_cfg
        self.endpoint = llm_cfg.url.rstrip("/") + "/chat/completions"
        api_key = os.environ.get(llm_cfg.api_key_env, "") if llm_cfg.api_key_env else ""
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def complete(self, client: httpx.AsyncClient, messages: list[dict], deadline: float | None) -> str:
        body = {"model": self.cfg.model, "messages": messages, "temperature": 0, "max_tokens": 8}
        reason = "no_attempt"
        for attempt in range(self.cfg.max_retries + 1):
            timeout_s = self.cfg.timeout_s
            if deadline is not None:  # serving: never wait past the latency budget
                timeout_s = min(timeout_s, deadline - time.monotonic())
                if timeout_s <= 0:
                    raise LLMError("budget")
            try:
                response = await client.post(
                    self.endpoint, json=body, headers=self.headers, timeout=timeout_s
                )
            except httpx.TimeoutException:
                reason = "budget" if timeout_s < self.cfg.timeout_s else "timeout"
            except httpx.TransportError:
                reason = "connect_error"
            else:
                if response.status_code == 200:
                    return _message_text(response)
                reason = f"http_{response.status_code}"
                if response.status_code not in RETRY_STATUS:
                    raise LLMError(reason)
            if attempt < self.cfg.max_retries:
                pause_s = self.cfg.backoff_s * 2**attempt
                if deadline is not None and time.monotonic() + pause_s >= deadline:
                    raise LLMError("budget")  # no time left for another try: fall back now
                await asyncio.sleep(pause_s)
        raise LLMError(reason)


def _message_text(response: httpx.Response) -> str:
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMError("bad_response") from None
    if not isinstance(content, str):
        raise LLMError("bad_response")
    return content


class LLMSelector(Selector):
    """Number-picking by an LLM, with a fallback selector for every failure."""

    name = "llm"

    def __init__(self, llm_cfg, fallback: Selector):
        super().__init__()
        self.client = LLMClient(llm_cfg)
        self.concurrency = max(1, llm_cfg.concurrency)
        self.fallback = fallback

    async def aselect_many(self, items: list[Item], deadline: float | None = None) -> list[Selection]:
        """Selections for `items`; `deadline` (time.monotonic()) bounds every call for serving budgets."""
        semaphore = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient() as client:
            outcomes = await asyncio.gather(*(self._ask(client, semaphore, item, deadline) for item in items))
        failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, str)]
        if failed:
            backups = self.fallback._select_many([items[i] for i in failed])
            for i, backup in zip(failed, backups):
                outcomes[i] = Selection(backup.index, backup.desc, FALLBACK + outcomes[i])
        return outcomes

    async def _ask(self, client, semaphore, item: Item, deadline: float | None) -> Selection | str:
        """A Selection, or the failure reason (a str) for the fallback."""
        mention, context, candidates = item
        if not candidates:
            return Selection(None, "", NO_CANDIDATES)
        async with semaphore:
            try:
                answer = await self.client.complete(
                    client, build_messages(mention, context, candidates), deadline
                )
                number = parse_answer(answer, len(candidates))
            except (LLMError, AnswerError) as err:
                return err.reason
        return Selection(None, "", NO_MATCH) if number == 0 else chosen(candidates, number - 1)

    def _select_many(self, items: list[Item], deadline: float | None = None) -> list[Selection]:
        return run_sync(self.aselect_many(items, deadline))

    def select_many(self, items: list[Item], deadline: float | None = None) -> list[Selection]:
        selections = self._select_many(items, deadline)
        for selection in selections:
            self.counters.record(selection)
        return selections


def run_sync(coro):
    """Run a coroutine from sync code, also when this thread already runs an event loop (Serve, FastAPI)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
