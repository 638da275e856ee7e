"""The agent loop with the real Agent, real tools and ScriptedEngine (DESIGN.md invariants 2-4)."""

import time

import anyio
import httpx
import pytest
import respx

from agentcore.agent import Agent
from agentcore.context import MASK_PREFIX, ContextPolicy
from agentcore.dsml import render_tool_calls
from agentcore.engine.base import GenerationRequest
from agentcore.errors import ContextOverflow
from agentcore.messages import (
    AssistantMessage,
    CheckpointEvent,
    CompactionEvent,
    FinalEvent,
    SystemMessage,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolMessage,
    ToolResultEvent,
    TurnEvent,
    UserMessage,
)
from agentcore.summarize import OpenAICompatibleSummarizer
from agentcore.testing.scripted import ScriptedEngine
from agentcore.tools import tool

pytestmark = pytest.mark.anyio


@tool
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@tool
def dump(n: int) -> str:
    """Return n characters of log output."""
    return "\n".join(f"line {i:06d} " + "x" * 40 for i in range(n // 50 + 1))[:n]


@tool
def explode() -> str:
    """Always raises."""
    raise RuntimeError("disk on fire")


@tool(timeout=0.2)
async def hang() -> str:
    """Never returns."""
    await anyio.sleep(60)
    return "unreachable"


def call(name, **arguments):
    return render_tool_calls([ToolCall(id="x", name=name, arguments=arguments)])


SYSTEM = "You are a careful agent. " * 40


async def test_final_answer_without_tools_ends_the_run():
    engine = ScriptedEngine(["The answer is 4."])
    result = await Agent(engine, system=SYSTEM).run("2+2?")
    assert result.final_text == "The answer is 4."
    assert result.stop_reason == "final" and result.steps == 1
    assert engine.checkpoints == []


async def test_checkpoint_follows_every_tool_round_trip_before_the_next_generation():
    engine = ScriptedEngine([call("add", a=1, b=2), call("add", a=3, b=4), "done"])
    agent = Agent(engine, tools=[add], system=SYSTEM)
    await agent.run("add things")
    kinds = [kind for kind, _ in engine.calls]
    assert kinds == ["stream", "checkpoint", "stream", "checkpoint", "stream"]
    for i, (kind, req) in enumerate(engine.calls):
        if kind == "checkpoint":
            assert isinstance(req.messages[-1], ToolMessage)
            nxt = engine.calls[i + 1][1]
            assert nxt.messages == req.messages  # the next generation starts where the checkpoint ends
    assert [m.content for m in agent.messages if isinstance(m, ToolMessage)] == ["3", "7"]


async def test_stream_yields_typed_events_in_loop_order():
    engine = ScriptedEngine(["Let me add." + call("add", a=2, b=2), "It is 4."])
    events = [e async for e in Agent(engine, tools=[add], system=SYSTEM).stream("2+2")]
    kinds = [type(e).__name__ for e in events]
    first_turn = kinds.index("TurnEvent")
    assert set(kinds[:first_turn]) == {"TextDelta"}
    assert kinds[first_turn:first_turn + 4] == ["TurnEvent", "ToolCallEvent", "ToolResultEvent", "CheckpointEvent"]
    assert isinstance(events[-1], FinalEvent) and events[-1].text == "It is 4."
    visible = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "DSML" not in visible and visible.startswith("Let me add.")


async def test_prefix_reuse_is_at_least_99_percent_on_tool_turns():
    script = [call("add", a=i, b=i) for i in range(30)] + ["finished"]
    engine = ScriptedEngine(script, context_length=1 << 20)
    result = await Agent(engine, tools=[add], system=SYSTEM).run("add thirty times")
    reuse = [u.cached_tokens / u.prompt_tokens for u in result.usages[1:]]
    assert len(reuse) == 30 and min(reuse) >= 0.99


async def test_run_again_continues_the_conversation():
    engine = ScriptedEngine(["first answer", "second answer"])
    agent = Agent(engine, system=SYSTEM)
    await agent.run("one")
    result = await agent.run("two")
    users = [m.content for m in result.messages if isinstance(m, UserMessage)]
    assert users == ["one", "two"] and result.final_text == "second answer"
    assert engine.requests[1].messages[:3] == agent.messages[:3]


async def test_bad_calls_become_error_results_and_the_run_finishes():
    script = [
        call("nope", x=1),
        call("add", a=1),
        call("add", a="one", b=2),
        call("explode"),
        call("hang"),
        "<｜DSML｜tool_calls>\n<｜DSML｜invoke>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
        "all done",
    ]
    engine = ScriptedEngine(script)
    t0 = time.monotonic()
    result = await Agent(engine, tools=[add, explode, hang], system=SYSTEM).run("try everything")
    assert time.monotonic() - t0 < 10
    assert result.final_text == "all done"
    errors = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert len(errors) == 6 and all(m.is_error for m in errors)
    text = "\n".join(m.content for m in errors)
    assert "add" in errors[0].content  # unknown tool lists what exists
    assert "disk on fire" in text and "timed out" in text


async def test_cut_off_tool_call_is_reported_not_run():
    cut = call("add", a=1, b=2)[:-45]  # inside the invoke: nothing may run
    engine = ScriptedEngine([cut, "ok"])
    result = await Agent(engine, tools=[add], system=SYSTEM).run("go")
    results = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert len(results) == 1 and results[0].is_error
    assert not any(m.content == "3" for m in results)


async def test_long_session_with_huge_outputs_never_exceeds_the_real_limit(tmp_path):
    engine = ScriptedEngine([call("dump", n=50_000) for _ in range(200)] + ["done"], context_length=8192)
    agent = Agent(engine, tools=[dump], system="Inspect logs.", workspace=tmp_path, max_tokens=256,
                  context=ContextPolicy(keep_recent_turns=2), max_steps=250)
    result = await agent.run("read all logs")
    assert result.final_text == "done" and result.steps == 201
    for req in engine.requests:
        assert engine.count_tokens(req) + req.max_tokens <= 8192
    assert result.compactions, "a 200-turn session in 8K tokens must compact"
    capped = [m for m in result.messages if isinstance(m, ToolMessage) and m.truncated]
    assert capped and all(m.spill_path for m in capped)
    assert (tmp_path / capped[-1].spill_path).exists()  # absolute or workspace-relative


async def test_compaction_keeps_system_tools_first_task_and_recent_turns(tmp_path):
    engine = ScriptedEngine([call("dump", n=3000) for _ in range(12)] + ["done"], context_length=8192)
    agent = Agent(engine, tools=[dump], system="Keep me.", workspace=tmp_path, max_tokens=256,
                  context=ContextPolicy(keep_recent_turns=3))
    events = [e async for e in agent.stream("the first task")]
    compactions = [i for i, e in enumerate(events) if isinstance(e, CompactionEvent)]
    assert compactions
    assert isinstance(events[compactions[0] + 1], CheckpointEvent)  # checkpoint right after compaction
    req = engine.requests[-1]
    assert req.messages[0] == SystemMessage(content="Keep me.")
    assert req.messages[1] == UserMessage(content="the first task")
    assert [t.name for t in req.tools] == ["dump"]
    tail = agent.messages[-7:-1]  # the three recent turns before the final answer
    assert isinstance(tail[0], AssistantMessage) and isinstance(tail[1], ToolMessage)
    assert not tail[1].content.startswith(MASK_PREFIX)
    for i, m in enumerate(agent.messages):  # never a call without its result
        if isinstance(m, AssistantMessage) and m.tool_calls:
            assert isinstance(agent.messages[i + 1], ToolMessage)


@respx.mock
async def test_summarizer_outage_falls_back_and_the_session_goes_on(tmp_path):
    respx.post("http://sum.test/v1/chat/completions").mock(return_value=httpx.Response(503))
    summarizer = OpenAICompatibleSummarizer("http://sum.test/v1", "flash", max_retries=1, backoff_s=0)
    engine = ScriptedEngine([call("dump", n=3000) for _ in range(12)] + ["done"], context_length=8192)
    agent = Agent(engine, tools=[dump], system="s", workspace=tmp_path, summarizer=summarizer,
                  max_tokens=256, context=ContextPolicy(keep_recent_turns=2))
    result = await agent.run("task")
    assert result.final_text == "done"
    assert any("drop" in c.strategy and "503" in c.note for c in result.compactions)


@respx.mock
async def test_summarizer_success_replaces_the_middle_with_a_summary(tmp_path):
    respx.post("http://sum.test/v1/chat/completions").mock(
        return_value=httpx.Response(200, json={"choices": [{"message": {"content": "## Goal\nread logs"}}]})
    )
    summarizer = OpenAICompatibleSummarizer("http://sum.test/v1", "flash")
    engine = ScriptedEngine([call("dump", n=3000) for _ in range(12)] + ["done"], context_length=8192)
    agent = Agent(engine, tools=[dump], system="s", workspace=tmp_path, summarizer=summarizer,
                  max_tokens=256, context=ContextPolicy(keep_recent_turns=2, target_after=0.3))
    result = await agent.run("task")
    assert any("summarize" in c.strategy for c in result.compactions)
    assert any(isinstance(m, UserMessage) and "## Goal\nread logs" in m.content for m in agent.messages)


async def test_system_prompt_bigger_than_the_window_is_a_context_overflow():
    engine = ScriptedEngine(["never"], context_length=2048)
    agent = Agent(engine, system="x" * 5000, max_tokens=256)
    with pytest.raises(ContextOverflow, match="context"):
        await agent.run("hi")


async def test_cancellation_during_tools_leaves_every_call_with_a_result():
    engine = ScriptedEngine([call("hang")])
    agent = Agent(engine, tools=[hang], system=SYSTEM)
    with anyio.move_on_after(0.05):
        await agent.run("wait")
    calls = [m for m in agent.messages if isinstance(m, AssistantMessage) and m.tool_calls]
    results = [m for m in agent.messages if isinstance(m, ToolMessage)]
    assert len(calls) == 1 and len(results) == 1 and results[0].is_error


async def test_engine_sees_turn_usage_in_turn_events():
    engine = ScriptedEngine([call("add", a=1, b=1), "2"])
    events = [e async for e in Agent(engine, tools=[add], system=SYSTEM).stream("1+1")]
    turns = [e for e in events if isinstance(e, TurnEvent)]
    assert [t.finish_reason for t in turns] == ["tool_calls", "stop"]
    assert turns[1].usage.cached_tokens > 0
    assert [type(e) for e in events if isinstance(e, (ToolCallEvent, ToolResultEvent))] == [ToolCallEvent, ToolResultEvent]


def test_scripted_engine_counts_prompt_with_generation_header():
    engine = ScriptedEngine()
    req = GenerationRequest(session_id="s", messages=[UserMessage(content="hi")])
    assert engine.count_tokens(req) == len(b"<user>\nhi\n<assistant>\n")
