"""Off-box summarizers for compaction.

A single-worker local model summarizing its own context is slow and times out, so
compaction asks a small remote model through the ``Summarizer`` protocol. Any object with
``async summarize(messages, *, max_tokens) -> str`` works; ``OpenAICompatibleSummarizer``
talks to any ``/v1/chat/completions`` endpoint (a hosted flash model, a local vLLM).

Invariant: ``summarize`` either returns non-empty text or raises ``SummarizerError``; the
agent catches that and falls back to dropping old turns, so a summarizer outage never
wedges a session.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import anyio
import httpx

from agentcore.errors import SummarizerError
from agentcore.messages import AssistantMessage, Message, SystemMessage, ToolMessage, UserMessage

__all__ = ["SUMMARY_PROMPT", "OpenAICompatibleSummarizer", "Summarizer", "transcript_text"]

SUMMARY_PROMPT = """\
You compress the middle of an AI agent's working session so the agent can continue \
without it. Write a structured summary with exactly these sections:

## Goal
## Progress so far
## Decisions and their reasons
## Files, paths, identifiers, commands and values (copy them verbatim)
## Open problems and errors seen
## Next step

Be concrete and terse. Never invent facts that are not in the transcript."""


@runtime_checkable
class Summarizer(Protocol):
    async def summarize(self, messages: Sequence[Message], *, max_tokens: int) -> str: ...


def transcript_text(messages: Sequence[Message]) -> str:
    """A plain-text rendering of messages for a summarizer (not a model prompt format)."""
    parts: list[str] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            parts.append(f"[system]\n{m.content}")
        elif isinstance(m, UserMessage):
            parts.append(f"[user]\n{m.content}")
        elif isinstance(m, AssistantMessage):
            text = m.content
            for call in m.tool_calls:
                args = json.dumps(call.arguments, ensure_ascii=False, sort_keys=True)
                text += f"\n[tool call {call.name} {args}]"
            parts.append(f"[assistant]\n{text.strip()}")
        elif isinstance(m, ToolMessage):
            status = "error" if m.is_error else "ok"
            parts.append(f"[tool result {m.name} ({status})]\n{m.content}")
    return "\n\n".join(parts)


def _chat_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


class OpenAICompatibleSummarizer:
    """Summarize through an OpenAI-compatible chat completions endpoint.

    Retries with exponential backoff on timeouts, connection errors, 429 and 5xx
    (``max_retries`` extra attempts). Other failures (4xx, malformed JSON, empty content)
    raise ``SummarizerError`` at once: retrying them would only repeat the answer.

    ``timeout`` bounds each attempt as a whole (connect, send, every byte of the answer), so
    a server that drips its answer cannot stretch it. A ``Retry-After`` header (seconds or
    an HTTP date) replaces the backoff when it is longer; one over ``max_retry_after_s``
    fails at once, since the agent's drop fallback beats waiting that long.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_retry_after_s: float = 30.0,
        prompt: str = SUMMARY_PROMPT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = _chat_url(base_url)
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.prompt = prompt
        self._client = client

    async def summarize(self, messages: Sequence[Message], *, max_tokens: int) -> str:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.prompt},
                {"role": "user", "content": transcript_text(messages)},
            ],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last_error = "no attempt made"
        retry_after = 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                await anyio.sleep(max(self.backoff_s * 2 ** (attempt - 1), retry_after))
            retry_after = 0.0
            try:
                with anyio.fail_after(self.timeout):
                    response = await self._post(body, headers)
            except TimeoutError:
                last_error = f"timed out after {self.timeout:g}s"
                continue
            except httpx.TimeoutException as exc:
                last_error = f"{type(exc).__name__}: {exc or 'timed out'} (timed out)"
                continue
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                retry_after = _retry_after_s(response)
                if retry_after > self.max_retry_after_s:
                    raise SummarizerError(
                        f"summarizer at {self.url} answered HTTP {response.status_code} with "
                        f"Retry-After {retry_after:.0f}s, more than max_retry_after_s="
                        f"{self.max_retry_after_s:g}; try again later or use another endpoint"
                    )
                continue
            if response.status_code >= 400:
                raise SummarizerError(
                    f"summarizer at {self.url} answered HTTP {response.status_code}: "
                    f"{response.text[:300]} (check base_url, model and api_key)"
                )
            return _content(response, self.url)
        raise SummarizerError(
            f"summarizer at {self.url} failed after {self.max_retries + 1} attempts: {last_error}"
        )

    async def _post(self, body: dict, headers: dict[str, str]) -> httpx.Response:
        if self._client is not None:
            return await self._client.post(self.url, json=body, headers=headers, timeout=self.timeout)
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            return await client.post(self.url, json=body, headers=headers)


def _retry_after_s(response: httpx.Response) -> float:
    """Seconds the server asked us to wait (0 when it did not say, or said nonsense)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        if when.tzinfo is None:
            return 0.0
        seconds = when.timestamp() - time.time()
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _content(response: httpx.Response, url: str) -> str:
    try:
        text = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:
        raise SummarizerError(
            f"summarizer at {url} returned a malformed response ({type(exc).__name__}): "
            f"{response.text[:200]!r}"
        ) from None
    if not isinstance(text, str) or not text.strip():
        raise SummarizerError(f"summarizer at {url} returned an empty summary")
    return text.strip()
