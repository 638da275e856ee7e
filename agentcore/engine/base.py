"""The Engine protocol: what the agent loop needs from any backend.

LocalEngine (in process), remote OpenAI-compatible engines and users' own engines all
implement it. ``context_length`` is the real hard limit: the loop guarantees
``count_tokens(request) + request.max_tokens <= context_length`` before calling ``stream``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from agentcore.messages import Message, TextDelta, ToolSpec

__all__ = [
    "CheckpointInfo",
    "Completion",
    "Engine",
    "GenerationRequest",
    "Sampling",
    "TextDelta",
    "Usage",
]


class Sampling(BaseModel):
    """Sampling parameters. temperature=0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    # Generate max_tokens even past the model's end-of-turn (benchmarks; as vLLM's ignore_eos).
    ignore_eos: bool = False


class GenerationRequest(BaseModel):
    session_id: str
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    max_tokens: int = 1024
    sampling: Sampling | None = None
    stop: tuple[str, ...] = ()
    # "auto" | "required" | {"name": ...}; engines without constrained decoding ignore it.
    tool_choice: Any = "auto"


class Usage(BaseModel):
    """What one generation cost. ``cached_tokens``: prompt tokens not recomputed (live KV or
    restored); ``reusable_tokens``: the longest prefix of the prompt the session had already
    computed (its previous prompt plus the sampled tokens), so ``cached/reusable`` is the honest
    reuse figure: a turn that opens with genuinely new tokens is not a miss."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    reusable_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    # "ram" includes a checkpoint still being saved behind the turn (CUDA): its own device copy
    # of the KV, until the store has indexed the host copy (LocalEngine.stats() counts those tokens)
    cache_source: Literal["live", "ram", "disk", "none"] = "none"
    draft_tokens: int = 0  # prompt-lookup draft tokens checked (LocalEngine draft_tokens > 0)
    accepted_draft_tokens: int = 0  # of them, kept

    @property
    def reuse(self) -> float:
        """Fraction of the prompt served from cache (common/prompt)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def reuse_of_reusable(self) -> float:
        """Fraction of the reusable prefix that was reused (1.0 when nothing was reusable)."""
        return self.cached_tokens / self.reusable_tokens if self.reusable_tokens else 1.0


class Completion(BaseModel):
    text: str
    token_ids: list[int] | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] = "stop"
    usage: Usage = Field(default_factory=Usage)


class CheckpointInfo(BaseModel):
    """What ``checkpoint`` did: ``ms`` in all, of which ``prefill_ms`` computed the tokens the
    session did not have yet and ``store_ms`` put the KV in the store's RAM tier (the
    checkpoint's own cost on the turn's critical path; the disk write happens behind it)."""

    session_id: str
    tokens: int
    bytes_written: int = 0
    ms: float = 0.0
    prefill_ms: float = 0.0
    store_ms: float = 0.0


@runtime_checkable
class Engine(Protocol):
    """Any inference backend the Agent can drive."""

    context_length: int

    def count_tokens(self, request: GenerationRequest) -> int:
        """Exact prompt length of ``request`` in tokens (excluding max_tokens)."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        """Generate; yields TextDelta items and ends with exactly one Completion."""
        ...

    async def checkpoint(self, request: GenerationRequest | str) -> CheckpointInfo:
        """Bring the session's KV to the end of ``request.messages`` and persist it; given a
        session id, persist the KV the session holds now (DESIGN.md's ``checkpoint(session_id)``)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Per-turn reuse, cache tiers and checkpoints, as the engine keeps them."""
        ...
