"""Messages, tool specs and loop events: the append-only transcript and what the loop emits.

Invariant: an AssistantMessage that carries ``token_ids`` is rendered by a local engine as
exactly those ids (reasoning included), so turn N+1's prompt extends turn N's token by token.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=False, extra="forbid")


class ToolSpec(_Model):
    """What the model is told about a tool: OpenAI-style function object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def function_object(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


class ToolCall(_Model):
    """One parsed tool invocation."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class SystemMessage(_Model):
    role: Literal["system"] = "system"
    content: str


class UserMessage(_Model):
    role: Literal["user"] = "user"
    content: str
    # Written by compaction (a summary or a note about removed turns), not by the user.
    compacted: bool = False


class AssistantMessage(_Model):
    role: Literal["assistant"] = "assistant"
    content: str = ""
    reasoning: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    # Exact sampled ids (local engines). None for remote engines or scripted replies.
    token_ids: list[int] | None = None


class ToolMessage(_Model):
    role: Literal["tool"] = "tool"
    call_id: str
    name: str
    content: str
    is_error: bool = False
    truncated: bool = False
    spill_path: str | None = None
    # The output was replaced by a pointer to its spill file by compaction.
    compacted: bool = False


def is_compacted(message: object) -> bool:
    """True for a message that compaction wrote or rewrote (summary, drop note, masked output)."""
    return bool(getattr(message, "compacted", False))


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


# ---------------------------------------------------------------------------- events


class TextDelta(_Model):
    """Visible text as it is generated (never raw DSML)."""

    type: Literal["text"] = "text"
    text: str


class ToolCallEvent(_Model):
    type: Literal["tool_call"] = "tool_call"
    call: ToolCall


class ToolResultEvent(_Model):
    type: Literal["tool_result"] = "tool_result"
    result: ToolMessage


class CheckpointEvent(_Model):
    type: Literal["checkpoint"] = "checkpoint"
    session_id: str
    tokens: int
    bytes_written: int
    ms: float


class CompactionEvent(_Model):
    type: Literal["compaction"] = "compaction"
    before_tokens: int
    after_tokens: int
    strategy: str
    note: str = ""


class TurnEvent(_Model):
    """One model generation finished; carries its Usage."""

    type: Literal["turn"] = "turn"
    step: int
    usage: Any  # engine.base.Usage (kept loose to avoid an import cycle)
    finish_reason: str


class FinalEvent(_Model):
    type: Literal["final"] = "final"
    text: str
    stop_reason: Literal["final", "max_steps"] = "final"


Event = (
    TextDelta | ToolCallEvent | ToolResultEvent | CheckpointEvent | CompactionEvent | TurnEvent
    | FinalEvent
)
