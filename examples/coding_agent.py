"""A coding agent with the workspace tools on the local model; prints checkpoint and compaction events.

Run: python examples/coding_agent.py [workspace]
"""

import sys
import tempfile
from pathlib import Path

import anyio

from agentcore import (
    Agent,
    CheckpointEvent,
    CompactionEvent,
    ContextPolicy,
    FinalEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from agentcore.engine import LocalEngine
from agentcore.model_cache import pull
from agentcore.tools.builtin import builtin_tools


async def main(workspace: Path) -> None:
    (workspace / "app.py").write_text("def add(a, b):\n    return a - b\n")
    engine = LocalEngine.from_gguf(pull("smollm2"), context_length=4096,
                                   kv_dir=workspace / ".agentcore" / "kv")
    agent = Agent(engine, tools=builtin_tools(workspace), workspace=workspace, max_steps=3,
                  system="You are a coding agent. Inspect files with the tools before answering.",
                  tool_choice="required", max_tokens=128, context=ContextPolicy(keep_recent_turns=2))
    async for event in agent.stream("Look at app.py. Is add() correct?"):
        if isinstance(event, ToolCallEvent):
            print(f"call    {event.call.name} {event.call.arguments}")
        elif isinstance(event, ToolResultEvent):
            print(f"result  {'error ' if event.result.is_error else ''}{event.result.content[:80]!r}")
        elif isinstance(event, CheckpointEvent):
            print(f"checkpoint {event.tokens} tokens, {event.bytes_written} bytes, {event.ms:.0f} ms")
        elif isinstance(event, CompactionEvent):
            print(f"compaction {event.before_tokens} -> {event.after_tokens} ({event.strategy})")
        elif isinstance(event, FinalEvent):
            print(f"final ({event.stop_reason}): {event.text}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(main, Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
