"""What the benchmarks time through the public API: ``LocalEngine.stream`` and ``checkpoint``.

A request's prompt is built from the model's own vocabulary to about ``n`` tokens; the
figures are the engine's own ``Usage`` (TTFT, decode tok/s) and ``CheckpointInfo``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np

from agentcore.engine.base import Completion, GenerationRequest, Sampling
from agentcore.messages import AssistantMessage, UserMessage

# Decode exactly max_tokens (a random-weight model may sample its end-of-turn early).
BENCH_SAMPLING = Sampling(temperature=0.0, ignore_eos=True)


def prompt_request(engine: Any, n: int, session_id: str, max_tokens: int, seed: int = 0) -> GenerationRequest:
    """A one-message request whose prompt is ``n`` tokens, give or take a few."""
    rng = np.random.default_rng(seed)
    words = engine.detokenize(rng.integers(256, engine.spec.vocab_size, max(8, n)).tolist())
    text = words
    for _ in range(4):
        req = _request(text, session_id, max_tokens)
        have = engine.count_tokens(req)
        if abs(have - n) <= max(4, n // 200):
            return req
        keep = int(len(text) * n / max(have, 1))
        while keep > len(text):
            text += words
        text = text[:keep]
    return _request(text, session_id, max_tokens)


def _request(text: str, session_id: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(session_id=session_id, messages=[UserMessage(content=text)],
                             max_tokens=max_tokens, sampling=BENCH_SAMPLING)  # fmt: skip


async def complete(engine: Any, request: GenerationRequest) -> Completion:
    done = None
    async for item in engine.stream(request):
        done = item
    if not isinstance(done, Completion):
        raise TypeError("the engine's stream ended without a Completion")
    return done


def followed_by(request: GenerationRequest, done: Completion) -> GenerationRequest:
    """The request's messages plus the reply it got (what an agent checkpoints next)."""
    reply = AssistantMessage(content=done.text, token_ids=done.token_ids)
    return request.model_copy(update={"messages": [*request.messages, reply]})


def agent_session(engine: Any, session_id: str, prompt_tokens: int, turns: int, *, new_tokens: int = 260,
                  max_tokens: int = 16) -> Iterator[tuple[int, Completion, Any]]:  # fmt: skip
    """An agent-like session through the public API: each turn streams a reply, then
    checkpoints the conversation with that reply and a ~``new_tokens`` message added (a tool
    result), which the next turn answers. Yields (turn, Completion, CheckpointInfo); the
    Completion of turn t > 0 is the turn right after a checkpoint."""
    req = prompt_request(engine, prompt_tokens, session_id, max_tokens)
    for turn in range(turns):
        done = anyio.run(complete, engine, req)
        more = prompt_request(engine, new_tokens, session_id, max_tokens, seed=turn + 1).messages[0]
        nxt = followed_by(req, done)
        nxt = nxt.model_copy(update={"messages": [*nxt.messages, more], "max_tokens": max_tokens})
        info = anyio.run(engine.checkpoint, nxt)
        yield turn, done, info
        req = nxt
