"""HTTP to one inference server: bounded retries, SSE streams, typed errors.

Invariants:
- a request is retried only while nothing of its answer has reached the caller: refused
  connections, connect timeouts and 429/503 answers (waiting ``Retry-After`` when given);
  a stream that breaks after its first event is an error, never a silent replay;
- a "prompt too long" answer is ``ContextOverflow`` and is never retried;
- every other failure is one of the ``RemoteEngineError`` types, with a message that names
  the server and says what to do.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from agentcore.errors import (
    ContextOverflow,
    ServerProtocolError,
    ServerRejected,
    ServerTimeout,
    ServerUnavailable,
)

__all__ = ["Transport", "is_context_overflow"]

log = logging.getLogger("agentcore.remote")

_RETRY_STATUS = (429, 503)
# How servers word "prompt too long": llama.cpp (type exceed_context_size_error), ds4 and
# OpenAI (code context_length_exceeded), vLLM ("maximum context length is", "longer than the
# maximum model length"), SGLang ("is longer than the model's context length").
_OVERFLOW = re.compile(
    r"exceed_context_size|context_length_exceeded|maximum context length|context length|"
    r"maximum model length|exceeds the available context|larger than the max context|"
    r"prompt is too long|too many tokens",
    re.IGNORECASE,
)


def is_context_overflow(status: int, body: str) -> bool:
    return status in (400, 413, 422) and bool(_OVERFLOW.search(body))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _error_text(body: str) -> str:
    """The server's own error message when the body is a JSON error object."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        if isinstance(err, str):
            return err[:300]
    return body.strip()[:300]


class Transport:
    """A sync client (discovery, tokenizing) and an async client (generation) for one server."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        connect_timeout: float,
        max_retries: int,
        max_retry_wait: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._headers = {**auth, **(headers or {})}
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.retries = 0
        self._sync = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
        self._async: httpx.AsyncClient | None = None
        self._loop: object = None

    @property
    def aclient(self) -> httpx.AsyncClient:
        # An AsyncClient's connections belong to one event loop: a new loop gets a new client.
        token = anyio.lowlevel.current_token()
        if self._async is None or self._loop is not token:
            self._async = httpx.AsyncClient(
                base_url=self.base_url, headers=self._headers, timeout=self._timeout
            )
            self._loop = token
        return self._async

    async def aclose(self) -> None:
        self._sync.close()
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    # ------------------------------------------------------------------ errors

    def _raise_for(self, path: str, response: httpx.Response, body: str) -> None:
        status = response.status_code
        what = f"{self.base_url}{path} answered {status}: {_error_text(body)}"
        if is_context_overflow(status, body):
            raise ContextOverflow(
                f"{what}. The prompt does not fit the server's context: compact the "
                "conversation, lower max_tokens, or give RemoteEngine the server's real "
                "context_length"
            )
        if status in _RETRY_STATUS:
            raise ServerUnavailable(
                f"{what}. The server stayed busy through {self.max_retries} retries: retry "
                "later, or give the server more slots/capacity",
                retry_after=_retry_after(response),
            )
        if status in (401, 403):
            raise ServerRejected(f"{what}. Check api_key", status=status)
        if status == 404:
            raise ServerRejected(
                f"{what}. The server lacks this endpoint: check base_url (no /v1 suffix) and "
                "the server kind (server=)",
                status=status,
            )
        raise ServerRejected(f"{what}. Check the server's log", status=status)

    def _unreachable(self, path: str, exc: Exception) -> ServerUnavailable:
        return ServerUnavailable(
            f"cannot reach {self.base_url}{path} ({type(exc).__name__}: {exc}): start the "
            "server or check base_url"
        )

    def _timed_out(self, path: str, exc: Exception) -> ServerTimeout:
        return ServerTimeout(
            f"{self.base_url}{path} did not answer in time ({type(exc).__name__}): raise "
            "RemoteEngine(timeout=...) for long prompts, or check that the server is not stuck"
        )

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else 0.25 * 2**attempt
        return min(wait, self.max_retry_wait)

    def _retry_wait(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before sending again (429/503 with retries left), else None."""
        if response.status_code in _RETRY_STATUS and attempt < self.max_retries:
            return self._wait(attempt, _retry_after(response))
        return None

    def _result(self, path: str, response: httpx.Response, missing_ok: bool) -> Any:
        """The JSON of a final answer; ``missing_ok`` turns 404/405/501 into None."""
        if missing_ok and response.status_code in (404, 405, 501):
            return None
        if response.status_code >= 400:
            self._raise_for(path, response, response.text)
        return self._json(path, self.base_url, response)

    @staticmethod
    def _json(path: str, base: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ServerProtocolError(
                f"{base}{path} answered {response.status_code} with a body that is not JSON "
                f"({response.text[:120]!r}): is base_url an inference server?"
            ) from None

    # ------------------------------------------------------------------ sync

    def get(self, path: str, *, missing_ok: bool = False) -> Any:
        return self.request("GET", path, missing_ok=missing_ok)

    def request(self, method: str, path: str, *, json_body: Any = None, missing_ok: bool = False,
                params: dict[str, str] | None = None) -> Any:
        """One JSON request with retries; ``missing_ok`` turns 404/405/501 into None."""
        for attempt in range(self.max_retries + 1):
            try:
                response = self._sync.request(method, path, json=json_body, params=params)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                if attempt == self.max_retries:
                    raise self._unreachable(path, exc) from None
                time.sleep(self._wait(attempt, None))
                self.retries += 1
                continue
            except httpx.TimeoutException as exc:
                raise self._timed_out(path, exc) from None
            wait = self._retry_wait(response, attempt)
            if wait is not None:
                time.sleep(wait)
                self.retries += 1
                continue
            return self._result(path, response, missing_ok)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ async

    async def apost(self, path: str, body: Any, *, headers: dict[str, str] | None = None,
                    missing_ok: bool = False, params: dict[str, str] | None = None) -> Any:
        for attempt in range(self.max_retries + 1):
            try:
                response = await self.aclient.post(path, json=body, headers=headers, params=params)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                if attempt == self.max_retries:
                    raise self._unreachable(path, exc) from None
                await anyio.sleep(self._wait(attempt, None))
                self.retries += 1
                continue
            except httpx.TimeoutException as exc:
                raise self._timed_out(path, exc) from None
            wait = self._retry_wait(response, attempt)
            if wait is not None:
                await anyio.sleep(wait)
                self.retries += 1
                continue
            return self._result(path, response, missing_ok)
        raise AssertionError("unreachable")

    async def stream(self, path: str, body: Any, *, headers: dict[str, str] | None = None
                     ) -> AsyncIterator[dict[str, Any]]:
        """POST and yield each SSE ``data:`` object (a JSON body is yielded whole)."""
        for attempt in range(self.max_retries + 1):
            received = False
            try:
                async with self.aclient.stream("POST", path, json=body, headers=headers) as response:
                    received = True
                    wait = self._retry_wait(response, attempt)  # if set: sent again below
                    if wait is None:
                        if response.status_code >= 400:
                            text = (await response.aread()).decode("utf-8", "replace")
                            self._raise_for(path, response, text)
                        async for item in self._events(path, response):
                            yield item
                        return
            except httpx.ConnectError as exc:
                if attempt == self.max_retries:
                    raise self._unreachable(path, exc) from None
                wait = self._wait(attempt, None)
            except httpx.TimeoutException as exc:
                raise self._timed_out(path, exc) from None
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                # A pooled connection the server closed (e.g. it restarted): nothing was
                # received, so sending again is safe.
                if not received and attempt < self.max_retries:
                    self.retries += 1
                    continue
                raise ServerProtocolError(
                    f"{self.base_url}{path}: the stream broke ({type(exc).__name__}: {exc}); "
                    "nothing was added to the transcript, send the request again"
                ) from None
            self.retries += 1
            await anyio.sleep(wait)

    async def _events(self, path: str, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        if "text/event-stream" not in response.headers.get("content-type", ""):
            yield self._json(path, self.base_url, await _read(response))
            return
        async for line in response.aiter_lines():
            if not line or line.startswith((":", "event:", "id:", "retry:")):
                continue
            field, _, data = line.partition(":")
            data = data.strip()
            if field not in ("data", "error"):
                raise ServerProtocolError(
                    f"{self.base_url}{path}: unexpected line in the event stream: {line[:120]!r}"
                )
            if data == "[DONE]":
                return
            try:
                item = json.loads(data)
            except ValueError:
                raise ServerProtocolError(
                    f"{self.base_url}{path}: an event is not JSON ({data[:120]!r}); the server "
                    "may be behind a proxy that rewrites streams"
                ) from None
            if field == "error" or (isinstance(item, dict) and "error" in item):
                error = item.get("error", item) if isinstance(item, dict) else item
                text = json.dumps(error)
                status = error.get("code", 500) if isinstance(error, dict) else 500
                self._raise_for(path, _fake(status if isinstance(status, int) else 500), text)
            if not isinstance(item, dict):
                raise ServerProtocolError(f"{self.base_url}{path}: an event is not a JSON object")
            yield item


async def _read(response: httpx.Response) -> httpx.Response:
    await response.aread()
    return response


def _fake(status: int) -> httpx.Response:
    """A bare response carrying an in-stream error's status, for ``_raise_for``."""
    return httpx.Response(status)
