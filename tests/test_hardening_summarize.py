"""The summarizer and compaction under hostile servers and summaries (issue 17, item 4)."""

from __future__ import annotations

import socket
import threading
import time
from email.utils import formatdate

import httpx
import pytest
import respx

from agentcore.context import DROP_PREFIX, SUMMARY_PREFIX, Compactor, ContextPolicy
from agentcore.errors import SummarizerError
from agentcore.messages import AssistantMessage, SystemMessage, ToolCall, ToolMessage, UserMessage
from agentcore.summarize import OpenAICompatibleSummarizer

pytestmark = pytest.mark.anyio

URL = "http://summarizer.test/v1/chat/completions"
MESSAGES = [UserMessage(content="fix the failing test in src/app.py")]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def ok(text: str = "## Goal\nfix the test") -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": text}}]})


# ------------------------------------------------------------- one deadline per attempt


@pytest.fixture
def dripping_server():
    """A real HTTP server on 127.0.0.1 that sends one body byte every 0.3 s."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    def drip(conn: socket.socket) -> None:
        body = b'{"choices": [{"message": {"content": "' + b"x" * 200 + b'"}}]}'
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                for i in range(len(body)):
                    if stop.is_set():
                        return
                    conn.sendall(body[i : i + 1])
                    time.sleep(0.3)
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize("retries", [0, 1])
async def test_a_dripping_server_cannot_stretch_the_timeout(dripping_server, retries):
    summarizer = OpenAICompatibleSummarizer(
        dripping_server, "m", timeout=1.0, max_retries=retries, backoff_s=0.1
    )
    start = time.monotonic()
    with pytest.raises(SummarizerError, match="timed out"):
        await summarizer.summarize(MESSAGES, max_tokens=100)
    assert time.monotonic() - start < (retries + 1) * 1.0 + 1.5


# ------------------------------------------------------------- Retry-After


def make(**kw) -> OpenAICompatibleSummarizer:
    return OpenAICompatibleSummarizer("http://summarizer.test/v1", "m", backoff_s=0.01, **kw)


@respx.mock
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_is_honoured(status):
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(status, headers={"Retry-After": "1"}), ok()]
    )
    start = time.monotonic()
    assert await make().summarize(MESSAGES, max_tokens=100) == "## Goal\nfix the test"
    assert time.monotonic() - start >= 0.95
    assert route.call_count == 2


@respx.mock
async def test_retry_after_as_an_http_date_is_honoured():
    when = formatdate(time.time() + 2, usegmt=True)
    respx.post(URL).mock(side_effect=[httpx.Response(429, headers={"Retry-After": when}), ok()])
    start = time.monotonic()
    await make().summarize(MESSAGES, max_tokens=100)
    assert time.monotonic() - start >= 0.9


@respx.mock
async def test_a_retry_after_past_the_bound_fails_at_once_saying_so():
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "3600"}), ok()]
    )
    start = time.monotonic()
    with pytest.raises(SummarizerError, match="Retry-After"):
        await make(max_retry_after_s=5).summarize(MESSAGES, max_tokens=100)
    assert time.monotonic() - start < 1 and route.call_count == 1


@respx.mock
@pytest.mark.parametrize("value", ["-5", "soon", "nan", "1e400"])
async def test_a_malformed_retry_after_falls_back_to_backoff(value):
    respx.post(URL).mock(side_effect=[httpx.Response(429, headers={"Retry-After": value}), ok()])
    start = time.monotonic()
    assert await make().summarize(MESSAGES, max_tokens=100)
    assert time.monotonic() - start < 1


# ------------------------------------------------------------- hostile bodies


@respx.mock
@pytest.mark.parametrize("depth", [100_000, 1_000_000])
async def test_deeply_nested_json_is_a_summarizer_error(depth):
    respx.post(URL).mock(return_value=httpx.Response(200, text="[" * depth + "]" * depth))
    with pytest.raises(SummarizerError, match="malformed"):
        await make().summarize(MESSAGES, max_tokens=100)


@respx.mock
async def test_deeply_nested_content_is_a_summarizer_error():
    nested = '{"choices": [{"message": {"content": ' + "[" * 100_000 + "]" * 100_000 + "}}]}"
    respx.post(URL).mock(return_value=httpx.Response(200, text=nested))
    with pytest.raises(SummarizerError):
        await make().summarize(MESSAGES, max_tokens=100)


# ------------------------------------------------------------- the summary in compaction


def count(messages) -> int:
    return sum(len(m.content) // 4 + 4 for m in messages)


def transcript(turns: int, size: int) -> list:
    msgs = [SystemMessage(content="sys"), UserMessage(content="the task")]
    for i in range(turns):
        call = ToolCall(id=f"c{i}", name="t", arguments={})
        msgs += [AssistantMessage(content="a" * size, tool_calls=[call]),
                 ToolMessage(call_id=f"c{i}", name="t", content="r" * size, spill_path="s.txt")]  # fmt: skip
    return msgs


class Verbose:
    """A summarizer that ignores max_tokens by a factor of 100."""

    async def summarize(self, messages, *, max_tokens: int) -> str:
        return "## Goal\n" + "blah " * (max_tokens * 100)


async def test_a_summary_far_over_its_budget_is_cut_to_it_with_a_note():
    policy = ContextPolicy(keep_recent_turns=2, summary_tokens=100)
    msgs = transcript(turns=30, size=400)
    compactor = Compactor(policy, context_length=4000, reserve=100, count=count, spill=lambda m: "x",
                          summarizer=Verbose())  # fmt: skip
    result = await compactor.compact(msgs)
    [summary] = [m for m in result.messages if m.content.startswith(SUMMARY_PREFIX)]
    assert count([summary]) <= 100 + 40
    assert "cut" in summary.content


class Short:
    async def summarize(self, messages, *, max_tokens: int) -> str:
        return "## Goal\nthe short summary"


async def test_squeezing_that_removes_a_summary_leaves_a_note_saying_so():
    policy = ContextPolicy(keep_recent_turns=3, summary_tokens=100)
    msgs = transcript(turns=10, size=400)
    compactor = Compactor(policy, context_length=1600, reserve=100, count=count,
                          spill=lambda m: "x", summarizer=Short())  # fmt: skip
    first = await compactor.compact(msgs)
    assert any(m.content.startswith(SUMMARY_PREFIX) for m in first.messages)
    # Recent turns grow until they alone overflow: squeezing must drop the summary, and say so.
    later = first.messages + [
        m
        for i in range(10, 16)
        for m in (
            AssistantMessage(content="x" * 2000, tool_calls=[ToolCall(id=f"c{i}", name="t", arguments={})]),
            ToolMessage(call_id=f"c{i}", name="t", content="r" * 400, spill_path="s.txt"),
        )
    ]
    result = await compactor.compact(later)
    assert not any(m.content.startswith(SUMMARY_PREFIX) for m in result.messages)
    notes = [m for m in result.messages if m.content.startswith(DROP_PREFIX)]
    assert notes and "summary" in notes[-1].content
    assert result.messages[1].content == "the task"
