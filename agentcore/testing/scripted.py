"""ScriptedEngine: an Engine that replies from a script, for users' tests and ours.

It renders a request deterministically as text, counts tokens with a byte-level tiktoken
encoding (one token per UTF-8 byte: pessimistic, exact with respect to itself, and needing
no download), records every call, and models a prefix cache per session: a request's
``cached_tokens`` is its common prefix with what the session last held (after a generation
or a checkpoint), just as a real KV cache would report it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from functools import cache

import tiktoken

from agentcore import dsml
from agentcore.engine.base import (
    CheckpointInfo,
    Completion,
    GenerationRequest,
    TextDelta,
    Usage,
)
from agentcore.errors import AgentCoreError, UnknownSession
from agentcore.messages import AssistantMessage, Message, SystemMessage, ToolMessage, UserMessage

__all__ = ["ScriptExhausted", "ScriptedEngine", "byte_encoding"]

Reply = str | Callable[[GenerationRequest], str]

_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class ScriptExhausted(AgentCoreError):
    """The ScriptedEngine was asked for more replies than its script holds."""


@cache
def byte_encoding() -> tiktoken.Encoding:
    """A tiktoken Encoding with the 256 byte tokens and no merges (no network needed)."""
    return tiktoken.Encoding(
        name="agentcore-bytes",
        pat_str=_PAT,
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={},
    )


GENERATION_PROMPT = "<assistant>\n"


def render_text(request: GenerationRequest, *, generation: bool = False) -> str:
    """Deterministic text of a request: prefix-stable as messages are appended.

    With ``generation`` the assistant header that opens the reply is appended, so the
    prompt plus a canonical reply is a prefix of the next turn's rendering.
    """
    parts: list[str] = []
    system_done = False
    for m in request.messages:
        if isinstance(m, SystemMessage) and not system_done:
            tools = "\n\n" + dsml.render_tools(request.tools) if request.tools else ""
            parts.append(f"<system>\n{m.content}{tools}\n")
            system_done = True
        else:
            parts.append(_render_message(m))
    if request.tools and not system_done:
        parts.insert(0, f"<system>\n{dsml.render_tools(request.tools)}\n")
    if generation:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def _render_message(m: Message) -> str:
    if isinstance(m, AssistantMessage):
        return f"{GENERATION_PROMPT}{m.content}{dsml.render_tool_calls(m.tool_calls)}\n"
    if isinstance(m, ToolMessage):
        return f"<tool>\n{dsml.render_tool_result(m.content)}\n"
    role = "user" if isinstance(m, UserMessage) else "system"
    return f"<{role}>\n{m.content}\n"


class ScriptedEngine:
    """Replies from ``script`` in order; each item is text or a function of the request.

    ``requests`` and ``checkpoints`` record every call, in order, for assertions.
    """

    def __init__(
        self,
        script: Sequence[Reply] = (),
        *,
        context_length: int = 8192,
        chunk_chars: int = 7,
    ) -> None:
        self.context_length = context_length
        self._script = list(script)
        self._chunk = max(1, chunk_chars)
        self.requests: list[GenerationRequest] = []
        self.checkpoints: list[GenerationRequest] = []
        self.calls: list[tuple[str, GenerationRequest]] = []
        self._held: dict[str, list[int]] = {}

    def add(self, *replies: Reply) -> None:
        self._script.extend(replies)

    def count_text(self, text: str) -> int:
        return len(byte_encoding().encode(text, disallowed_special=()))

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self._ids(request, generation=True))

    def _ids(self, request: GenerationRequest, *, generation: bool) -> list[int]:
        text = render_text(request, generation=generation)
        return byte_encoding().encode(text, disallowed_special=())

    def _common(self, session_id: str, ids: list[int]) -> int:
        held = self._held.get(session_id, [])
        n = min(len(held), len(ids))
        i = 0
        while i < n and held[i] == ids[i]:
            i += 1
        return i

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        self.requests.append(request)
        self.calls.append(("stream", request))
        if not self._script:
            raise ScriptExhausted(
                f"ScriptedEngine has no reply left for request #{len(self.requests)}; "
                "add more replies to the script"
            )
        reply = self._script.pop(0)
        text = reply(request) if callable(reply) else reply
        ids = self._ids(request, generation=True)
        cached = self._common(request.session_id, ids)
        start = time.perf_counter()

        enc = byte_encoding()
        out_ids = enc.encode(text, disallowed_special=())
        finish = "stop"
        if len(out_ids) > request.max_tokens:
            text = enc.decode(out_ids[: request.max_tokens])
            finish = "length"
        elif dsml.TOOL_CALLS_END in text:
            finish = "tool_calls"
        for i in range(0, len(text), self._chunk):
            yield TextDelta(text=text[i : i + self._chunk])
        elapsed = time.perf_counter() - start
        n_out = min(len(out_ids), request.max_tokens)
        # The session now holds the prompt and the reply, as a real KV cache would.
        self._held[request.session_id] = ids + out_ids[:n_out]
        yield Completion(
            text=text,
            token_ids=None,
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=len(ids),
                cached_tokens=cached,
                completion_tokens=n_out,
                ttft_s=elapsed,
                decode_tokens_per_s=n_out / elapsed if elapsed > 0 else 0.0,
                cache_source="live" if cached else "none",
            ),
        )

    async def checkpoint(self, request: GenerationRequest | str) -> CheckpointInfo:
        self.checkpoints.append(request)
        self.calls.append(("checkpoint", request))
        if isinstance(request, str):  # the KV the session holds now
            if request not in self._held:
                raise UnknownSession(f"no live KV for session {request!r}")
            return CheckpointInfo(session_id=request, tokens=len(self._held[request]))
        ids = self._ids(request, generation=False)
        new = len(ids) - self._common(request.session_id, ids)
        self._held[request.session_id] = ids
        return CheckpointInfo(session_id=request.session_id, tokens=len(ids), bytes_written=new)

    def stats(self) -> dict:
        return {"requests": len(self.requests), "checkpoints": len(self.checkpoints)}
