"""RemoteEngine against a respx llama-server: prompts, reuse, slots, restore, limits."""

from __future__ import annotations

import logging

import anyio
import pytest
import respx
from test_remote_fakes import FakeLlamaServer, decode

from agentcore import dsml
from agentcore.engine import Completion, GenerationRequest, RemoteEngine, TextDelta
from agentcore.errors import ContextOverflow
from agentcore.messages import (
    AssistantMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)

BASE = "http://llama.test"
TOOLS = [ToolSpec(name="get_weather", description="Weather for a city.",
                  parameters={"type": "object", "properties": {"city": {"type": "string"}}})]


def run(engine: RemoteEngine, request: GenerationRequest) -> tuple[list[str], Completion]:
    async def go() -> tuple[list[str], Completion]:
        deltas, completion = [], None
        async for item in engine.stream(request):
            if isinstance(item, TextDelta):
                deltas.append(item.text)
            else:
                completion = item
        assert completion is not None
        return deltas, completion

    return anyio.run(go)


@pytest.fixture
def server():
    with respx.mock(assert_all_called=False) as router:
        yield FakeLlamaServer(router, BASE, n_ctx=4096)


def request(messages, **kw) -> GenerationRequest:
    return GenerationRequest(session_id=kw.pop("session_id", "s1"), messages=messages, **kw)


def test_base_url_alone_detects_llamacpp_context_and_chat_format(server):
    engine = RemoteEngine(BASE)
    assert engine.dialect.name == "llama.cpp"
    assert engine.context_length == 4096
    assert engine.chat is not None and engine.chat.name == "chatml"


def test_prompt_is_sent_as_token_ids_rendered_by_agentcore(server):
    server.replies.append("Hello!")
    engine = RemoteEngine(BASE)
    msgs = [SystemMessage(content="Be brief."), UserMessage(content="Hi")]
    deltas, completion = run(engine, request(msgs, max_tokens=32))
    sent = server.requests[0]
    assert decode(sent["prompt"]) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert sent["cache_prompt"] is True and sent["return_tokens"] is True and sent["id_slot"] == 0
    assert "".join(deltas) == completion.text == "Hello!"
    assert completion.token_ids is not None and decode(completion.token_ids) == "Hello!<|im_end|>"
    assert completion.usage.prompt_tokens == len(sent["prompt"])
    assert completion.finish_reason == "stop"


def test_count_tokens_is_exact_and_cached_per_message_segment(server):
    engine = RemoteEngine(BASE)
    msgs = [SystemMessage(content="sys"), UserMessage(content="one")]
    n = engine.count_tokens(request(msgs))
    assert n == len(engine._prompt(request(msgs), generation=True)[0])
    calls = server.tokenize_calls
    msgs.append(AssistantMessage(content="two"))
    msgs.append(UserMessage(content="three"))
    engine.count_tokens(request(msgs))
    before = server.tokenize_calls
    engine.count_tokens(request(msgs))
    assert server.tokenize_calls == before  # nothing new: all segments cached
    assert before - calls <= 4  # only the two new messages' texts were tokenized


def test_second_turn_reuses_all_that_was_reusable(server, caplog):
    caplog.set_level(logging.INFO, logger="agentcore.kv")
    server.replies += ["First answer.", "Second answer."]
    engine = RemoteEngine(BASE)
    msgs = [SystemMessage(content="sys"), UserMessage(content="q1")]
    _, c1 = run(engine, request(msgs))
    msgs += [AssistantMessage(content=c1.text, token_ids=c1.token_ids), UserMessage(content="q2")]
    _, c2 = run(engine, request(msgs))
    turn = engine.stats()["turns"][-1]
    # previous prompt + sampled ids, less the end token the server never fed
    assert turn["reusable"] == len(server.requests[0]["prompt"]) + len(c1.token_ids) - 1
    assert c2.usage.cached_tokens == turn["reusable"]
    assert turn["of_reusable"] >= 0.99
    assert "kv cache hit source=live" in caplog.text
    assert "kv cache miss prompt=" in caplog.text  # the first turn was cold
    assert engine.stats()["turns"][0]["reason"] == "cold"


def test_tool_call_block_is_cut_at_its_closing_tag(server):
    call = dsml.render_tool_calls([ToolCall(id="c1", name="get_weather", arguments={"city": "Taipei"})])
    server.replies.append("Let me look." + call + "\n\ntrailing text the server kept generating")
    engine = RemoteEngine(BASE)
    deltas, completion = run(engine, request([UserMessage(content="weather?")], tools=TOOLS))
    assert completion.text == "Let me look." + call
    assert "".join(deltas) == completion.text
    assert completion.finish_reason == "tool_calls"
    parsed = dsml.parse_completion(completion.text, tools=TOOLS)
    assert [c.name for c in parsed.tool_calls] == ["get_weather"]
    assert decode(completion.token_ids) == completion.text
    assert server.requests[0]["timings_per_token"] is True  # cache_n known though the stream was cut


def test_checkpoint_prefills_tool_results_and_saves_the_slot(server):
    server.replies.append("ok")
    engine = RemoteEngine(BASE)
    msgs = [UserMessage(content="weather?")]
    _, c1 = run(engine, request(msgs, tools=TOOLS))
    msgs += [AssistantMessage(content=c1.text, token_ids=c1.token_ids),
             ToolMessage(call_id="c1", name="get_weather", content="sunny")]
    info = anyio.run(engine.checkpoint, request(msgs, tools=TOOLS))
    prefill = server.requests[-1]
    assert prefill["n_predict"] == 0
    assert info.tokens == len(prefill["prompt"]) and info.bytes_written > 0
    assert engine.slot_filename("s1") in server.files
    assert engine.stats()["turns"][-1]["of_reusable"] >= 0.99


def test_checkpoint_by_session_id_saves_the_slot_without_a_prefill(server):
    server.replies.append("ok")
    engine = RemoteEngine(BASE)
    run(engine, request([UserMessage(content="weather?")]))
    sent = len(server.requests)
    info = anyio.run(engine.checkpoint, "s1")
    assert len(server.requests) == sent  # no completion request: nothing prefilled
    assert info.session_id == "s1" and info.bytes_written > 0
    assert engine.slot_filename("s1") in server.files


def test_server_restart_restores_the_saved_slot(server, caplog):
    caplog.set_level(logging.INFO, logger="agentcore.kv")
    server.replies += ["one", "two"]
    engine = RemoteEngine(BASE)
    msgs = [UserMessage(content="hello there")]
    _, c1 = run(engine, request(msgs))
    msgs += [AssistantMessage(content=c1.text, token_ids=c1.token_ids), UserMessage(content="more")]
    anyio.run(engine.checkpoint, request(msgs))
    saved = len(server.files[engine.slot_filename("s1")])
    server.restart()
    _, c2 = run(engine, request(msgs))
    assert c2.usage.cache_source == "disk"
    assert c2.usage.cached_tokens == saved
    assert "kv cache hit source=disk" in caplog.text


def test_a_new_engine_restores_a_session_saved_by_another(server):
    server.replies += ["one", "two"]
    first = RemoteEngine(BASE)
    msgs = [UserMessage(content="hello there")]
    _, c1 = run(first, request(msgs))
    msgs += [AssistantMessage(content=c1.text, token_ids=c1.token_ids), UserMessage(content="more")]
    anyio.run(first.checkpoint, request(msgs))
    server.restart()
    _, c2 = run(RemoteEngine(BASE), request(msgs))
    assert c2.usage.cache_source == "disk" and c2.usage.cached_tokens > 0


def test_sessions_take_their_own_slots_and_restore_when_one_is_shared():
    with respx.mock(assert_all_called=False) as router:
        server = FakeLlamaServer(router, BASE, slots=2)
        server.replies += ["a", "b", "c"]
        engine = RemoteEngine(BASE)
        run(engine, request([UserMessage(content="x")], session_id="A"))
        run(engine, request([UserMessage(content="y")], session_id="B"))
        assert [r["id_slot"] for r in server.requests] == [0, 1]
        assert engine.stats()["live_sessions"] == ["A", "B"]


def test_checkpoint_without_slot_save_path_stays_live_and_says_so(caplog):
    with respx.mock(assert_all_called=False) as router:
        server = FakeLlamaServer(router, BASE, save_path=False)
        server.replies.append("ok")
        engine = RemoteEngine(BASE)
        msgs = [UserMessage(content="q")]
        _, c1 = run(engine, request(msgs))
        msgs += [AssistantMessage(content=c1.text, token_ids=c1.token_ids), UserMessage(content="q2")]
        info = anyio.run(engine.checkpoint, request(msgs))
        assert info.bytes_written == 0 and info.tokens > 0
        assert "--slot-save-path" in caplog.text
        assert engine.stats()["checkpoints"][-1]["tier"] == "live-slot"


def test_prompt_over_the_limit_is_refused_before_any_request(server):
    engine = RemoteEngine(BASE)
    with pytest.raises(ContextOverflow, match="compact"):
        run(engine, request([UserMessage(content="x" * 5000)], max_tokens=16))
    assert server.requests == []


def test_server_overflow_is_context_overflow_and_the_session_goes_on(server):
    # The user's limit is larger than the server's real one: the server refuses.
    engine = RemoteEngine(BASE, context_length=100_000)
    msgs = [UserMessage(content="hi")]
    server.replies += ["fine", "still fine"]
    _, c1 = run(engine, request(msgs))
    big = msgs + [AssistantMessage(content=c1.text, token_ids=c1.token_ids),
                  UserMessage(content="y" * 5000)]
    with pytest.raises(ContextOverflow, match="exceeds the available context"):
        run(engine, request(big, max_tokens=8))
    assert len(server.requests) == 2  # never retried
    ok = msgs + [AssistantMessage(content=c1.text, token_ids=c1.token_ids), UserMessage(content="short")]
    _, c2 = run(engine, request(ok))
    assert c2.text == "still fine"
    assert engine.stats()["turns"][-1]["of_reusable"] >= 0.99


def test_sampling_and_limit_reach_the_server(server):
    from agentcore.engine import Sampling

    server.replies.append("abcdefgh")
    engine = RemoteEngine(BASE)
    _, c = run(engine, request([UserMessage(content="q")], max_tokens=3,
                               sampling=Sampling(temperature=0.7, top_k=20, seed=5)))
    sent = server.requests[0]
    assert (sent["n_predict"], sent["temperature"], sent["top_k"], sent["seed"]) == (3, 0.7, 20, 5)
    assert c.finish_reason == "length" and c.text == "abc"


def test_session_id_travels_in_a_header_for_routers():
    with respx.mock(assert_all_called=False) as router:
        server = FakeLlamaServer(router, BASE)
        server.replies.append("ok")
        engine = RemoteEngine(BASE)
        run(engine, request([UserMessage(content="q")], session_id="sess-42"))
        sent = [c.request for c in router.calls if c.request.url.path == "/completion"]
        assert sent[0].headers["X-Session-ID"] == "sess-42"
