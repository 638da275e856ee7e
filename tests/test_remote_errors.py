"""Server failures become typed errors; retries are bounded and only where nothing was received."""

from __future__ import annotations

import httpx
import pytest
import respx
from test_remote_fakes import chatml, completion_chunks, error, openai_models, sse
from test_remote_llamacpp import request, run

from agentcore.engine import RemoteEngine
from agentcore.errors import (
    ContextOverflow,
    ServerProtocolError,
    ServerRejected,
    ServerTimeout,
    ServerUnavailable,
)
from agentcore.messages import UserMessage

BASE = "http://gpu.test"
MSGS = [UserMessage(content="q")]


@pytest.fixture
def router():
    with respx.mock(assert_all_called=False) as r:
        r.get(f"{BASE}/props").mock(return_value=httpx.Response(404))
        r.get(f"{BASE}/v1/models").mock(return_value=httpx.Response(200, json=openai_models("vllm")))
        yield r


def engine(**kw) -> RemoteEngine:
    return RemoteEngine(BASE, chat_format=chatml(), max_retry_wait=0.01, **kw)


def test_503_with_retry_after_is_retried_then_succeeds(router):
    route = router.post(f"{BASE}/v1/completions")
    route.side_effect = [
        httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"message": "busy"}}),
        httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "rate"}}),
        sse(completion_chunks("ok", prompt_tokens=5, cached=0)),
    ]
    e = engine()
    _, c = run(e, request(MSGS))
    assert c.text == "ok" and route.call_count == 3
    assert e.stats()["retries"] == 2


def test_busy_through_every_retry_is_server_unavailable_with_retry_after(router):
    route = router.post(f"{BASE}/v1/completions")
    route.mock(return_value=httpx.Response(503, headers={"Retry-After": "7"}, json={"error": {"message": "busy"}}))
    with pytest.raises(ServerUnavailable, match="retry later") as info:
        run(engine(max_retries=2), request(MSGS))
    assert route.call_count == 3 and info.value.retry_after == 7


def test_refused_connection_is_server_unavailable_saying_start_the_server(router):
    route = router.post(f"{BASE}/v1/completions")
    route.mock(side_effect=httpx.ConnectError("Connection refused"))
    with pytest.raises(ServerUnavailable, match="start the server"):
        run(engine(max_retries=1), request(MSGS))
    assert route.call_count == 2


def test_refused_at_construction_is_server_unavailable():
    with respx.mock() as r:
        r.get(f"{BASE}/props").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(ServerUnavailable, match="check base_url"):
            RemoteEngine(BASE, max_retries=0)


def test_read_timeout_is_server_timeout_and_not_replayed(router):
    route = router.post(f"{BASE}/v1/completions")
    route.mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(ServerTimeout, match="timeout="):
        run(engine(), request(MSGS))
    assert route.call_count == 1


@pytest.mark.parametrize("response", [
    # vLLM
    httpx.Response(400, json={"object": "error", "message": "This model's maximum context length is 8192 "
                              "tokens. However, you requested 9000 tokens.", "type": "BadRequestError",
                              "param": None, "code": 400}),
    # SGLang
    httpx.Response(400, json={"object": "error", "message": "The input (9000 tokens) is longer than the "
                              "model's context length (8192 tokens).", "type": "BadRequestError", "code": 400}),
    # ds4-server
    httpx.Response(400, json={"error": {"message": "Prompt has 9000 tokens, but the configured context size "
                              "is 8192 tokens", "type": "invalid_request_error", "param": "prompt",
                              "code": "context_length_exceeded", "n_prompt_tokens": 9000, "n_ctx": 8192}}),
    # llama.cpp
    error(400, "request (9000 tokens) exceeds the available context size (8192 tokens), try increasing it",
          "exceed_context_size_error"),
], ids=["vllm", "sglang", "ds4", "llama.cpp"])
def test_prompt_too_long_is_context_overflow_never_retried(router, response):
    route = router.post(f"{BASE}/v1/completions")
    route.mock(return_value=response)
    with pytest.raises(ContextOverflow, match="compact"):
        run(engine(), request(MSGS))
    assert route.call_count == 1


def test_overflow_inside_the_stream_is_context_overflow(router):
    router.post(f"{BASE}/v1/completions").mock(return_value=sse(
        [{"error": {"code": 400, "message": "exceeds the available context size", "type": "exceed_context_size_error"}}]))
    with pytest.raises(ContextOverflow):
        run(engine(), request(MSGS))


def test_garbage_body_is_a_protocol_error(router):
    router.post(f"{BASE}/v1/completions").mock(return_value=httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=b"data: <html>oops</html>\n\n"))
    with pytest.raises(ServerProtocolError, match="not JSON"):
        run(engine(), request(MSGS))


def test_html_instead_of_json_at_discovery_is_a_protocol_error():
    with respx.mock() as r:
        r.get(f"{BASE}/props").mock(return_value=httpx.Response(404))
        r.get(f"{BASE}/v1/models").mock(return_value=httpx.Response(200, text="<html>login</html>"))
        with pytest.raises(ServerProtocolError, match="inference server"):
            RemoteEngine(BASE, chat_format=chatml())


def test_bad_api_key_says_check_api_key(router):
    router.post(f"{BASE}/v1/completions").mock(return_value=httpx.Response(401, json={"error": {"message": "no"}}))
    with pytest.raises(ServerRejected, match="api_key") as info:
        run(engine(api_key="wrong"), request(MSGS))
    assert info.value.status == 401


def test_api_key_is_sent_as_bearer(router):
    route = router.post(f"{BASE}/v1/completions")
    route.mock(return_value=sse(completion_chunks("ok", prompt_tokens=5, cached=0)))
    run(engine(api_key="sk-1"), request(MSGS))
    assert route.calls[0].request.headers["Authorization"] == "Bearer sk-1"


def test_a_failed_request_leaves_the_session_ledger_untouched(router):
    route = router.post(f"{BASE}/v1/completions")
    route.side_effect = [
        sse(completion_chunks("first", prompt_tokens=5, cached=0, token_ids=True)),
        httpx.Response(500, json={"error": {"message": "boom"}}),
    ]
    e = engine()
    run(e, request(MSGS))
    before = list(e.sessions["s1"].computed)
    with pytest.raises(ServerRejected, match="server's log"):
        run(e, request(MSGS))
    assert e.sessions["s1"].computed == before


def test_unknown_context_length_asks_for_one():
    with respx.mock() as r:
        r.get(f"{BASE}/props").mock(return_value=httpx.Response(404))
        r.get(f"{BASE}/v1/models").mock(return_value=httpx.Response(200, json={"data": [{"id": "m", "owned_by": "x"}]}))
        with pytest.raises(Exception, match="context_length="):
            RemoteEngine(BASE, chat_format=chatml())
        assert RemoteEngine(BASE, chat_format=chatml(), context_length=4096).context_length == 4096
