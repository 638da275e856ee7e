"""An agent on a remote server: llama.cpp's llama-server, vLLM, SGLang or ds4-server.

Run: python examples/remote_engine.py http://127.0.0.1:8080 ["your task"]
 or: AGENTCORE_REMOTE_URL=http://127.0.0.1:8080 python examples/remote_engine.py

With llama-server the URL alone is enough: agentcore tokenizes through /tokenize, reads the
chat format and the context limit from /props, and checkpoints the session's slot after
every tool round-trip (start the server with --slot-save-path DIR to keep them on disk):

    llama-server -m SmolLM2-135M-Instruct.Q4_1.gguf --port 8080 --slot-save-path /tmp/slots

For vLLM/SGLang/ds4 in completions mode, also pass the model's GGUF (gguf=...) so agentcore
can render the prompt itself; or use mode="chat" to let the server apply its template.
"""

import os
import sys

import anyio

from agentcore import Agent, tool
from agentcore.engine import RemoteEngine
from agentcore.errors import RemoteEngineError
from agentcore.messages import CheckpointEvent, FinalEvent, TextDelta, ToolCallEvent, TurnEvent


@tool(timeout=5)
def word_count(text: str) -> str:
    """Count the words in a text."""
    return str(len(text.split()))


async def main(url: str, task: str) -> None:
    engine = RemoteEngine(url)
    print(f"{engine.dialect.name} at {url}: context {engine.context_length} tokens, "
          f"chat format {engine.chat.name if engine.chat else 'the server template'}")
    agent = Agent(engine, tools=[word_count], system="You are a concise assistant.", max_tokens=128,
                  max_steps=3)
    async for event in agent.stream(task):
        if isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, ToolCallEvent):
            print(f"\n[tool call {event.call.name}({event.call.arguments})]")
        elif isinstance(event, TurnEvent):
            u = event.usage
            print(f"\n[{u.prompt_tokens} prompt tokens, {u.cached_tokens} from the server's cache, "
                  f"TTFT {u.ttft_s * 1000:.0f} ms, {u.decode_tokens_per_s:.1f} tok/s]")
        elif isinstance(event, CheckpointEvent):
            print(f"[checkpoint: {event.tokens} tokens, {event.bytes_written} bytes, {event.ms:.0f} ms]")
        elif isinstance(event, FinalEvent):
            print()
    stats = engine.stats()
    print(f"reuse per turn: {[t['reuse'] for t in stats['turns']]}; checkpoints on "
          f"{stats['checkpoint_tier']}")
    await engine.aclose()


if __name__ == "__main__":
    args = sys.argv[1:]
    url = args[0] if args else os.environ.get("AGENTCORE_REMOTE_URL")
    if not url:
        print("No server given: pass its URL (python examples/remote_engine.py http://127.0.0.1:8080) "
              "or set AGENTCORE_REMOTE_URL. Nothing to do.")
        sys.exit(0)
    try:
        anyio.run(main, url, " ".join(args[1:]) or "How many words are in 'the quick brown fox'?")
    except RemoteEngineError as exc:
        print(f"The server at {url} cannot be used: {exc}")
        sys.exit(1)
