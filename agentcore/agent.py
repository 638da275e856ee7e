"""The agent loop: generate -> parse -> run tools -> cap -> checkpoint -> repeat.

Read it top to bottom in ``stream``. Invariants:
- every request satisfies ``prompt_tokens + max_tokens <= engine.context_length``, checked
  before the engine touches any KV; compaction runs before the limit, never after a failure;
- ``engine.checkpoint`` is called after every tool round-trip and right after a compaction,
  each with a CheckpointEvent, so the next turn pays prefill only for its new tokens;
- the transcript is append-only between compactions and always consistent: an assistant
  message with tool calls is followed by one result per call, also when cancelled;
- a bad tool call (malformed DSML, unknown tool, bad arguments, a tool that raises or hangs)
  becomes an error result the model can read, and the loop goes on.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from agentcore.context import Compactor, ContextPolicy
from agentcore.dsml import ParsedCompletion, StreamParser, Visible, parse_completion
from agentcore.dsml.parse import completion_of
from agentcore.engine.base import (
    CheckpointInfo,
    Completion,
    Engine,
    GenerationRequest,
    Sampling,
    Usage,
)
from agentcore.errors import AgentCoreError, ContextOverflow
from agentcore.messages import (
    AssistantMessage,
    CheckpointEvent,
    CompactionEvent,
    Event,
    FinalEvent,
    Message,
    SystemMessage,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolMessage,
    ToolResultEvent,
    TurnEvent,
    UserMessage,
)
from agentcore.summarize import Summarizer
from agentcore.tools import Tool, ToolRegistry
from agentcore.tools.capping import spill_text

__all__ = ["Agent", "EngineProtocolError", "RunResult"]


class EngineProtocolError(AgentCoreError):
    """The engine's stream ended without a Completion."""


class RunResult(BaseModel):
    """What one ``Agent.run`` produced."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    final_text: str
    stop_reason: Literal["final", "max_steps"]
    steps: int
    messages: list[Message]
    usages: list[Usage]
    checkpoints: list[CheckpointInfo]
    compactions: list[CompactionEvent]


class Agent:
    """A tool-using agent over any Engine.

    ``run`` again continues the same conversation; ``messages`` is the transcript.
    """

    def __init__(
        self,
        engine: Engine,
        tools: Iterable[Tool] | ToolRegistry = (),
        system: str | None = None,
        summarizer: Summarizer | None = None,
        context: ContextPolicy | None = None,
        max_steps: int = 50,
        session_id: str | None = None,
        workspace: str | Path = ".",
        *,
        max_tokens: int = 1024,
        sampling: Sampling | None = None,
        tool_choice: Any = "auto",
    ) -> None:
        self.engine = engine
        self.policy = context or ContextPolicy()
        self.max_steps = max_steps
        self.session_id = session_id or uuid.uuid4().hex[:16]
        self.workspace = Path(workspace)
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.tool_choice = tool_choice
        count_text = getattr(engine, "count_text", None)
        if isinstance(tools, ToolRegistry):
            self.registry = tools
        else:
            self.registry = ToolRegistry(
                list(tools),
                workspace=self.workspace,
                default_max_output_tokens=self.policy.tool_cap(engine.context_length),
                count_tokens=count_text,
            )
        self.messages: list[Message] = [SystemMessage(content=system)] if system else []
        self.compactor = Compactor(
            self.policy,
            context_length=engine.context_length,
            reserve=self.policy.reserve_output_tokens or max_tokens,
            count=self._count,
            spill=self._spill,
            summarizer=summarizer,
        )
        if self.compactor.limit <= 0:
            raise ContextOverflow(
                f"max_tokens={self.compactor.reserve} leaves no room for a prompt in a "
                f"{engine.context_length}-token context: lower max_tokens"
            )
        self.usages: list[Usage] = []
        self.checkpoints: list[CheckpointInfo] = []
        self.compactions: list[CompactionEvent] = []

    # ------------------------------------------------------------------ public API

    async def run(self, task: str) -> RunResult:
        """Run until a final answer or ``max_steps``; returns the result."""
        start = (len(self.usages), len(self.checkpoints), len(self.compactions))
        final = FinalEvent(text="")
        steps = 0
        async for event in self.stream(task):
            if isinstance(event, TurnEvent):
                steps = event.step
            elif isinstance(event, FinalEvent):
                final = event
        return RunResult(
            final_text=final.text,
            stop_reason=final.stop_reason,
            steps=steps,
            messages=list(self.messages),
            usages=self.usages[start[0] :],
            checkpoints=self.checkpoints[start[1] :],
            compactions=self.compactions[start[2] :],
        )

    async def compact(self) -> CompactionEvent | None:
        """Compact now, whatever the budget says (e.g. a REPL's /compact); checkpoints after."""
        events = [e async for e in self._fit_context(force=True)]
        return next((e for e in events if isinstance(e, CompactionEvent)), None)

    async def stream(self, task: str) -> AsyncIterator[Event]:
        """Run and yield typed events: text, tool calls and results, checkpoints, turns."""
        task_message = UserMessage(content=task)
        self.messages.append(task_message)
        content = ""
        for step in range(1, self.max_steps + 1):
            try:
                async for event in self._fit_context():
                    yield event
                request = self._request(max_tokens=self._room())
            except ContextOverflow:
                if step == 1:
                    # The task itself does not fit: roll it back, or it stays pinned as the
                    # first task and every later run overflows too.
                    self.messages = [m for m in self.messages if m is not task_message]
                raise
            if step > 1 and self.tool_choice == "required":
                # "required" forces the run's first call; later steps may answer.
                request.tool_choice = "auto"
            completion: Completion | None = None
            tools = self.registry.specs
            parser = StreamParser(thinking=self._thinking, tools=tools)
            events: list = []
            streamed: list[str] = []
            async for item in self.engine.stream(request):
                if isinstance(item, Completion):
                    completion = item
                    continue
                streamed.append(item.text)
                for ev in parser.feed(item.text):
                    events.append(ev)
                    if isinstance(ev, Visible) and ev.text:
                        yield TextDelta(text=ev.text)
            if completion is None:
                raise EngineProtocolError(
                    f"{type(self.engine).__name__}.stream ended without a Completion"
                )
            for ev in parser.close(ended=completion.finish_reason == "stop"):
                events.append(ev)
                if isinstance(ev, Visible) and ev.text:
                    yield TextDelta(text=ev.text)
            self.usages.append(completion.usage)
            yield TurnEvent(step=step, usage=completion.usage, finish_reason=completion.finish_reason)

            # The stream parser's result is the parse, unless the engine's final text is not
            # what it streamed (an engine may fix up its text at the end).
            if "".join(streamed) == completion.text:
                parsed = completion_of(parser, events, tools)
            else:
                parsed = parse_completion(completion.text, thinking=self._thinking, tools=tools,
                                          ended=completion.finish_reason == "stop")  # fmt: skip
            content = parsed.content
            self.messages.append(
                AssistantMessage(
                    content=parsed.content,
                    reasoning=parsed.reasoning,
                    tool_calls=parsed.tool_calls,
                    token_ids=completion.token_ids,
                )
            )
            feedback = _feedback(parsed, completion)
            if not parsed.tool_calls and not feedback:
                yield FinalEvent(text=content)
                return
            for call in parsed.tool_calls:
                yield ToolCallEvent(call=call)
            for result in await self._run_tools(parsed.tool_calls, feedback):
                yield ToolResultEvent(result=result)
            yield await self._checkpoint()
        yield FinalEvent(text=content, stop_reason="max_steps")

    # ------------------------------------------------------------------ loop steps

    @property
    def _thinking(self) -> bool:
        return bool(getattr(self.engine, "thinking", False))

    def _request(self, messages: Sequence[Message] | None = None, *, max_tokens: int | None = None) -> GenerationRequest:
        return GenerationRequest(
            session_id=self.session_id,
            messages=list(self.messages if messages is None else messages),
            tools=self.registry.specs,
            max_tokens=max_tokens or self.max_tokens,
            sampling=self.sampling,
            tool_choice=self.tool_choice,
        )

    def _count(self, messages: Sequence[Message]) -> int:
        return self.engine.count_tokens(self._request(messages))

    def _room(self) -> int:
        """max_tokens for the next request: never past the real limit (invariant 2)."""
        prompt = self._count(self.messages)
        room = self.engine.context_length - prompt
        if room < 1:
            raise ContextOverflow(
                f"prompt of {prompt} tokens does not fit the {self.engine.context_length}-token "
                "context even after compaction"
            )
        return min(self.max_tokens, room)

    async def _fit_context(self, *, force: bool = False) -> AsyncIterator[Event]:
        prompt = self._count(self.messages)
        if not force and not self.compactor.needs_compaction(prompt):
            return
        result = await self.compactor.compact(self.messages)
        if result.messages == self.messages:
            return
        self.messages = result.messages
        event = CompactionEvent(
            before_tokens=result.before_tokens,
            after_tokens=result.after_tokens,
            strategy=result.strategy,
            note=result.note,
        )
        self.compactions.append(event)
        yield event
        yield await self._checkpoint()

    async def _run_tools(self, calls: list[ToolCall], feedback: list[ToolMessage]) -> list[ToolMessage]:
        """Run the calls and append one result per call, even when cancelled."""
        try:
            results = await self.registry.run(calls) if calls else []
        except BaseException:
            self.messages.extend(
                ToolMessage(call_id=c.id, name=c.name, content="cancelled before it finished", is_error=True)
                for c in calls
            )
            raise
        results = list(results) + feedback
        self.messages.extend(results)
        return results

    async def _checkpoint(self) -> CheckpointEvent:
        info = await self.engine.checkpoint(self._request())
        self.checkpoints.append(info)
        return CheckpointEvent(
            session_id=info.session_id, tokens=info.tokens, bytes_written=info.bytes_written, ms=info.ms
        )

    def _spill(self, message: ToolMessage) -> str:
        return str(spill_text(message.content, self.workspace / ".agentcore" / "spill"))


def _feedback(parsed: ParsedCompletion, completion: Completion) -> list[ToolMessage]:
    """Error results that tell the model what went wrong with its tool-call markup."""
    if not parsed.errors and not parsed.incomplete:
        return []
    lines = list(parsed.errors)
    if parsed.incomplete and completion.finish_reason == "length":
        lines.append(
            "Your tool call was cut off by the output limit before </｜DSML｜tool_calls>; "
            "nothing was run. Send it again with shorter arguments."
        )
    text = "Your tool call could not be used:\n" + "\n".join(f"- {line}" for line in lines)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return [ToolMessage(call_id=f"dsml-error-{digest}", name="dsml", content=text, is_error=True)]
