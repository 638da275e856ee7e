"""Implementing the Engine protocol: an echo engine in under 50 lines.

Any backend (a remote server, a test double) plugs into Agent this way.
Run: python examples/custom_engine.py
"""

import anyio

from agentcore import Agent
from agentcore.engine.base import CheckpointInfo, Completion, GenerationRequest, TextDelta, Usage


class EchoEngine:
    """Answers every request by echoing the last user message."""

    context_length = 4096

    def count_tokens(self, request: GenerationRequest) -> int:
        return sum(len(getattr(m, "content", "").split()) + 4 for m in request.messages)

    async def stream(self, request: GenerationRequest):
        text = f"You said: {request.messages[-1].content}"
        for word in text.split(" "):
            yield TextDelta(text=word + " ")
        prompt = self.count_tokens(request)
        yield Completion(text=text, usage=Usage(prompt_tokens=prompt, completion_tokens=len(text.split())))

    async def checkpoint(self, request: GenerationRequest | str) -> CheckpointInfo:
        if isinstance(request, str):  # checkpoint(session_id): nothing is held here
            return CheckpointInfo(session_id=request, tokens=0)
        return CheckpointInfo(session_id=request.session_id, tokens=self.count_tokens(request))

    def stats(self) -> dict:
        return {}


async def main() -> None:
    result = await Agent(EchoEngine(), system="Echo.").run("hello engine")
    print(result.final_text)


if __name__ == "__main__":
    anyio.run(main)
