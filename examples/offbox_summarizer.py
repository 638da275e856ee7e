"""Compaction with an off-box summarizer (a hosted flash model or a local vLLM).

Set AGENTCORE_SUMMARIZER_URL / _MODEL / _KEY for a real endpoint. Without them this points at
a closed loopback port, so the summarizer fails and you see the fallback: old turns are
dropped with a note and the session goes on.
Run: python examples/offbox_summarizer.py
"""

import os
import tempfile

import anyio

from agentcore import (
    Agent,
    CompactionEvent,
    ContextPolicy,
    FinalEvent,
    OpenAICompatibleSummarizer,
    tool,
)
from agentcore.dsml import render_tool_calls
from agentcore.messages import ToolCall
from agentcore.testing.scripted import ScriptedEngine


@tool
def fetch_page(n: int) -> str:
    """Fetch page n of a long report."""
    return f"page {n}: " + "quarterly numbers and commentary " * 60


async def main() -> None:
    summarizer = OpenAICompatibleSummarizer(
        base_url=os.environ.get("AGENTCORE_SUMMARIZER_URL", "http://127.0.0.1:9/v1"),
        model=os.environ.get("AGENTCORE_SUMMARIZER_MODEL", "deepseek-v4-flash"),
        api_key=os.environ.get("AGENTCORE_SUMMARIZER_KEY"),
        timeout=20, max_retries=1,
    )
    calls = [render_tool_calls([ToolCall(id="c", name="fetch_page", arguments={"n": i})]) for i in range(10)]
    engine = ScriptedEngine(calls + ["The report is summarised."], context_length=8192)
    with tempfile.TemporaryDirectory() as ws:
        agent = Agent(engine, tools=[fetch_page], system="Read the report.", workspace=ws,
                      summarizer=summarizer, max_tokens=256, context=ContextPolicy(keep_recent_turns=2))
        async for event in agent.stream("Read all pages."):
            if isinstance(event, CompactionEvent):
                print(f"compaction {event.before_tokens} -> {event.after_tokens} "
                      f"({event.strategy}) {event.note[:80]}")
            elif isinstance(event, FinalEvent):
                print("final:", event.text)


if __name__ == "__main__":
    anyio.run(main)
