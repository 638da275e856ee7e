"""A streaming chat bot on the local model (SmolLM2-135M on the CPU by default).

Run: python examples/chat_bot.py "your question"
"""

import sys

import anyio

from agentcore import Agent, TextDelta, TurnEvent
from agentcore.engine import LocalEngine
from agentcore.model_cache import pull


async def main(question: str) -> None:
    engine = LocalEngine.from_gguf(pull("smollm2"), context_length=4096, device="auto")
    agent = Agent(engine, system="You are a friendly, concise assistant.", max_tokens=96)
    async for event in agent.stream(question):
        if isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, TurnEvent):
            u = event.usage
            print(f"\n[{u.prompt_tokens} prompt tokens, TTFT {u.ttft_s * 1000:.0f} ms, "
                  f"{u.decode_tokens_per_s:.1f} tok/s]")


if __name__ == "__main__":
    anyio.run(main, " ".join(sys.argv[1:]) or "What is the capital of France?")
