"""OpenAICompatibleSummarizer against a mocked endpoint (respx): the only HTTP we mock."""

import httpx
import pytest
import respx

from agentcore.errors import SummarizerError
from agentcore.messages import AssistantMessage, ToolCall, ToolMessage, UserMessage
from agentcore.summarize import OpenAICompatibleSummarizer, transcript_text

pytestmark = pytest.mark.anyio

URL = "http://summarizer.test/v1/chat/completions"
MESSAGES = [
    UserMessage(content="fix the failing test in src/app.py"),
    AssistantMessage(content="looking", tool_calls=[ToolCall(id="c1", name="read_file", arguments={"path": "src/app.py"})]),
    ToolMessage(call_id="c1", name="read_file", content="def f(): return 1"),
]


def ok(text="## Goal\nfix the test"):
    return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": text}}]})


def make(**kw):
    return OpenAICompatibleSummarizer("http://summarizer.test/v1", "flash-mini", api_key="k", backoff_s=0.0, **kw)


@respx.mock
async def test_success_returns_summary_and_sends_structured_prompt():
    route = respx.post(URL).mock(return_value=ok())
    text = await make().summarize(MESSAGES, max_tokens=300)
    assert text == "## Goal\nfix the test"
    body = route.calls.last.request.read().decode()
    assert '"max_tokens":300' in body.replace(" ", "")
    assert "Next step" in body and "src/app.py" in body
    assert route.calls.last.request.headers["authorization"] == "Bearer k"


@respx.mock
async def test_timeout_on_every_attempt_raises_summarizer_error():
    route = respx.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(SummarizerError, match="3 attempts"):
        await make(max_retries=2).summarize(MESSAGES, max_tokens=100)
    assert route.call_count == 3


@respx.mock
async def test_server_error_then_success_is_retried():
    route = respx.post(URL).mock(side_effect=[httpx.Response(500, text="boom"), ok("done")])
    assert await make().summarize(MESSAGES, max_tokens=100) == "done"
    assert route.call_count == 2


@respx.mock
async def test_rate_limit_is_retried_then_reported():
    route = respx.post(URL).mock(return_value=httpx.Response(429, text="slow down"))
    with pytest.raises(SummarizerError, match="429"):
        await make(max_retries=1).summarize(MESSAGES, max_tokens=100)
    assert route.call_count == 2


@respx.mock
async def test_malformed_json_is_a_summarizer_error_without_retry():
    route = respx.post(URL).mock(return_value=httpx.Response(200, text="<html>oops"))
    with pytest.raises(SummarizerError, match="malformed"):
        await make().summarize(MESSAGES, max_tokens=100)
    assert route.call_count == 1


@respx.mock
async def test_empty_content_is_a_summarizer_error():
    respx.post(URL).mock(return_value=ok("   "))
    with pytest.raises(SummarizerError, match="empty"):
        await make().summarize(MESSAGES, max_tokens=100)


@respx.mock
async def test_client_error_is_not_retried():
    route = respx.post(URL).mock(return_value=httpx.Response(401, text="bad key"))
    with pytest.raises(SummarizerError, match="401"):
        await make().summarize(MESSAGES, max_tokens=100)
    assert route.call_count == 1


def test_base_url_without_v1_gets_the_full_path():
    assert OpenAICompatibleSummarizer("http://h:8000", "m").url == "http://h:8000/v1/chat/completions"


def test_transcript_text_keeps_tool_calls_and_results_verbatim():
    text = transcript_text(MESSAGES)
    assert '[tool call read_file {"path": "src/app.py"}]' in text
    assert "[tool result read_file (ok)]\ndef f(): return 1" in text
