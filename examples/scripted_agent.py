"""An agent on ScriptedEngine: tool calls, checkpoints and compaction with no model at all.

Run: python examples/scripted_agent.py
"""

import tempfile

import anyio

from agentcore import Agent, ContextPolicy, tool
from agentcore.dsml import render_tool_calls
from agentcore.messages import CheckpointEvent, CompactionEvent, FinalEvent, ToolCall, TurnEvent
from agentcore.testing.scripted import ScriptedEngine


@tool
def grep_logs(pattern: str, lines: int = 400) -> str:
    """Search the service logs.

    Args:
        pattern: text to look for.
        lines: how many matching lines to return.
    """
    return "\n".join(f"2026-11-22T04:{i % 60:02d} ERROR {pattern} at worker-{i}" for i in range(lines))


def call(**arguments) -> str:
    return "Searching." + render_tool_calls([ToolCall(id="c", name="grep_logs", arguments=arguments)])


async def main() -> None:
    script = [call(pattern=f"timeout-{i}") for i in range(8)] + ["Workers time out under load."]
    engine = ScriptedEngine(script, context_length=8192)
    with tempfile.TemporaryDirectory() as workspace:
        agent = Agent(engine, tools=[grep_logs], system="You debug services.", workspace=workspace,
                      max_tokens=256, context=ContextPolicy(keep_recent_turns=2))
        async for event in agent.stream("Why do requests fail?"):
            if isinstance(event, TurnEvent):
                u = event.usage
                print(f"turn {event.step}: prompt={u.prompt_tokens} cached={u.cached_tokens} "
                      f"({u.reuse:.1%}) finish={event.finish_reason}")
            elif isinstance(event, CheckpointEvent):
                print(f"  checkpoint: {event.tokens} tokens, {event.bytes_written} new")
            elif isinstance(event, CompactionEvent):
                print(f"  compaction: {event.before_tokens} -> {event.after_tokens} tokens ({event.strategy})")
            elif isinstance(event, FinalEvent):
                print(f"final: {event.text}")


if __name__ == "__main__":
    anyio.run(main)
