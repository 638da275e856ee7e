"""How users test their agents: ScriptedEngine for the model, respx for the summarizer's HTTP.

Run: pytest examples/test_with_mocked_summarizer.py
"""

import httpx
import pytest
import respx

from agentcore import Agent, ContextPolicy, OpenAICompatibleSummarizer, UserMessage, tool
from agentcore.dsml import render_tool_calls
from agentcore.messages import ToolCall
from agentcore.testing.scripted import ScriptedEngine


@tool
def big_query(sql: str) -> str:
    """Run a query that returns many rows."""
    return "\n".join(f"row {i}: {sql}" for i in range(80))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@respx.mock
async def test_agent_compacts_with_the_summary_from_my_endpoint(tmp_path, anyio_backend):
    route = respx.post("https://flash.example/v1/chat/completions").mock(
        return_value=httpx.Response(200, json={"choices": [{"message": {"content": "## Goal\nrun queries"}}]})
    )
    calls = [render_tool_calls([ToolCall(id="c", name="big_query", arguments={"sql": f"select {i}"})])
             for i in range(10)]
    agent = Agent(ScriptedEngine(calls + ["done"], context_length=8192), tools=[big_query],
                  system="Analyst.", workspace=tmp_path, max_tokens=256,
                  summarizer=OpenAICompatibleSummarizer("https://flash.example/v1", "flash"),
                  context=ContextPolicy(keep_recent_turns=2, target_after=0.3))
    result = await agent.run("run ten queries")
    assert result.final_text == "done"
    assert route.called and result.compactions
    assert any(isinstance(m, UserMessage) and "run queries" in m.content for m in agent.messages)
