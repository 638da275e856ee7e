"""RemoteEngine against respx vLLM, SGLang and ds4-server (completions and chat modes)."""

from __future__ import annotations

import json
import logging

import anyio
import httpx
import pytest
import respx
from test_remote_fakes import chat_chunks, chatml, completion_chunks, decode, openai_models, sse
from test_remote_llamacpp import TOOLS, request, run

from agentcore import dsml
from agentcore.engine import RemoteEngine
from agentcore.errors import UnknownSession
from agentcore.messages import AssistantMessage, ToolCall, ToolMessage, UserMessage

BASE = "http://gpu.test"


def mock_models(router, owned_by: str, **kw) -> None:
    router.get(f"{BASE}/props").mock(return_value=httpx.Response(404, json={"detail": "Not Found"}))
    router.get(f"{BASE}/v1/models").mock(return_value=httpx.Response(200, json=openai_models(owned_by, **kw)))


@pytest.mark.parametrize("owner,dialect", [("vllm", "vllm"), ("sglang", "sglang")])
def test_detects_server_and_its_max_model_len(owner, dialect):
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, owner, limit=32768)
        engine = RemoteEngine(BASE, chat_format=chatml())
        assert engine.dialect.name == dialect
        assert engine.context_length == 32768 and engine.model == "m"


def test_vllm_gets_token_ids_and_reports_cached_tokens(caplog):
    caplog.set_level(logging.INFO, logger="agentcore.kv")
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, "vllm")
        route = router.post(f"{BASE}/v1/completions")
        route.side_effect = [
            sse(completion_chunks("Hi there", prompt_tokens=20, cached=0, token_ids=True)),
            sse(completion_chunks("Again", prompt_tokens=40, cached=36, token_ids=True)),
        ]
        engine = RemoteEngine(BASE, chat_format=chatml())
        msgs = [UserMessage(content="hello")]
        _, c1 = run(engine, request(msgs))
        body = json.loads(route.calls[0].request.content)
        assert isinstance(body["prompt"], list) and body["return_token_ids"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert dsml.TOOL_CALLS_END in body["stop"] and body["include_stop_str_in_output"] is True
        assert c1.text == "Hi there" and decode(c1.token_ids) == "Hi there"
        msgs += [AssistantMessage(content=c1.text, token_ids=c1.token_ids), UserMessage(content="more")]
        _, c2 = run(engine, request(msgs))
        assert c2.usage.cached_tokens == 36 and c2.usage.cache_source == "live"
        assert "kv cache miss" in caplog.text  # 36 of the reusable prefix is not all of it


def test_sglang_without_token_ids_keeps_the_text_and_no_ids():
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, "sglang")
        route = router.post(f"{BASE}/v1/completions")
        route.return_value = sse(completion_chunks("Plain reply", prompt_tokens=12, cached=8))
        engine = RemoteEngine(BASE, chat_format=chatml())
        deltas, c = run(engine, request([UserMessage(content="q")]))
        body = json.loads(route.calls[0].request.content)
        assert body["no_stop_trim"] is True and "return_token_ids" not in body
        assert "".join(deltas) == c.text == "Plain reply"
        assert c.token_ids is None and c.usage.cached_tokens == 8


def test_a_trimmed_dsml_stop_string_is_put_back():
    call = dsml.render_tool_calls([ToolCall(id="c", name="get_weather", arguments={"city": "Oslo"})])
    trimmed = call[: -len(dsml.TOOL_CALLS_END)]
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, "sglang")
        router.post(f"{BASE}/v1/completions").return_value = sse(
            completion_chunks(trimmed, prompt_tokens=30, cached=0))
        engine = RemoteEngine(BASE, chat_format=chatml())
        deltas, c = run(engine, request([UserMessage(content="weather")], tools=TOOLS))
        assert c.text == call and "".join(deltas) == call
        assert c.finish_reason == "tool_calls"
        assert [t.name for t in dsml.parse_completion(c.text, tools=TOOLS).tool_calls] == ["get_weather"]


def test_ds4_gets_a_text_prompt_and_its_context_length():
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, "ds4.c", limit_field="context_length", limit=100000)
        route = router.post(f"{BASE}/v1/completions")
        route.return_value = sse(completion_chunks("ok", prompt_tokens=10, cached=6))
        engine = RemoteEngine(BASE, chat_format=chatml())
        assert engine.dialect.name == "ds4" and engine.context_length == 100000
        _, c = run(engine, request([UserMessage(content="q")]))
        body = json.loads(route.calls[0].request.content)
        assert body["prompt"] == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
        assert c.usage.cached_tokens == 6


def test_non_llamacpp_checkpoint_is_the_server_prefix_cache(caplog):
    caplog.set_level(logging.INFO, logger="agentcore.kv")
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, "vllm")
        router.post(f"{BASE}/v1/completions").return_value = sse(
            completion_chunks("x", prompt_tokens=5, cached=0, token_ids=True))
        engine = RemoteEngine(BASE, chat_format=chatml())
        run(engine, request([UserMessage(content="q")]))
        info = anyio.run(engine.checkpoint, request([UserMessage(content="q")]))
        assert info.bytes_written == 0 and info.tokens > 0
        assert engine.stats()["checkpoint_tier"] == "server-prefix-cache"
        assert "tier=server-prefix-cache" in caplog.text
        held = anyio.run(engine.checkpoint, "s1")  # DESIGN.md's checkpoint(session_id)
        assert held.session_id == "s1" and held.tokens == info.tokens
        with pytest.raises(UnknownSession, match="no session 'other'"):
            anyio.run(engine.checkpoint, "other")


def test_completions_mode_without_a_tokenizer_says_what_to_pass():
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, "vllm")
        with pytest.raises(Exception, match="gguf="):
            RemoteEngine(BASE)


# ---------------------------------------------------------------------------- chat mode


def test_chat_mode_maps_tool_calls_reasoning_and_usage():
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, "vllm")
        route = router.post(f"{BASE}/v1/chat/completions")
        route.return_value = sse(chat_chunks([
            {"reasoning_content": "Need the weather."},
            {"content": "Checking."},
            {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                             "function": {"name": "get_weather", "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": "\"Taipei\"}"}}]},
        ], prompt_tokens=50, cached=40, completion=12, finish="tool_calls"))
        engine = RemoteEngine(BASE, mode="chat")
        deltas, c = run(engine, request([UserMessage(content="weather in Taipei?")], tools=TOOLS))
        body = json.loads(route.calls[0].request.content)
        assert body["tools"][0] == {"type": "function", "function": TOOLS[0].function_object()}
        assert body["messages"] == [{"role": "user", "content": "weather in Taipei?"}]
        assert "".join(deltas) == c.text
        parsed = dsml.parse_completion(c.text, tools=TOOLS)
        assert parsed.reasoning == "Need the weather."
        assert parsed.content == "Checking."
        assert [(t.name, t.arguments) for t in parsed.tool_calls] == [("get_weather", {"city": "Taipei"})]
        assert c.finish_reason == "tool_calls"
        assert (c.usage.prompt_tokens, c.usage.cached_tokens, c.usage.completion_tokens) == (50, 40, 12)


def test_chat_mode_sends_tool_results_with_their_call_ids():
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, "sglang")
        route = router.post(f"{BASE}/v1/chat/completions")
        route.return_value = sse(chat_chunks([{"content": "Sunny."}], prompt_tokens=9, cached=0, completion=2))
        engine = RemoteEngine(BASE, mode="chat")
        msgs = [UserMessage(content="w?"),
                AssistantMessage(content="", tool_calls=[ToolCall(id="c9", name="get_weather", arguments={"city": "X"})]),
                ToolMessage(call_id="c9", name="get_weather", content="sunny"),
                ToolMessage(call_id="dsml-error-1", name="dsml", content="bad markup", is_error=True)]
        run(engine, request(msgs, tools=TOOLS))
        sent = json.loads(route.calls[0].request.content)["messages"]
        assert sent[1]["tool_calls"][0] == {"id": "c9", "type": "function",
                                            "function": {"name": "get_weather", "arguments": "{\"city\": \"X\"}"}}
        assert sent[2] == {"role": "tool", "tool_call_id": "c9", "content": "sunny"}
        assert sent[3] == {"role": "user", "content": "bad markup"}  # no call asked for it


def test_chat_mode_on_ds4_non_streaming_body_is_accepted():
    """A server that ignores stream=true and answers one JSON body still works."""
    with respx.mock(assert_all_called=False) as router:
        mock_models(router, "ds4.c", limit_field="context_length", limit=65536)
        router.post(f"{BASE}/v1/chat/completions").return_value = httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "deepseek-v4-flash",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Done.", "reasoning_content": "think"}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33,
                      "prompt_tokens_details": {"cached_tokens": 28, "cache_write_tokens": 2}}})
        engine = RemoteEngine(BASE, mode="chat")
        _, c = run(engine, request([UserMessage(content="q")]))
        assert c.text == "<think>think</think>Done."
        assert c.usage.cached_tokens == 28
