"""Token budget, compaction policy and compaction strategies.

The loop knows the engine's real context limit and compacts *before* it, never after a
failure. Strategies run in order, cheapest and most cache-friendly first:

1. ``mask``: old tool outputs become a one-line placeholder naming the spill file that holds
   the full text (nothing is lost);
2. ``summarize``: the middle of the conversation is replaced by one summary message written
   by an off-box Summarizer;
3. ``drop``: if the summarizer is missing or fails, the oldest middle turns are removed and a
   note says so, so a summarizer outage never wedges the session;
4. ``squeeze``: only when the recent turns alone overflow, recent tool outputs are masked and
   older recent turns dropped, down to the last turn.

Invariants: the system message (and with it the tools block, the cached prefix), the first
user task and the last ``keep_recent_turns`` turns are kept verbatim by strategies 1-3; an
assistant message and its tool results are one unit, never separated. ``ContextOverflow``
is raised only when even the maximal compaction cannot fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from agentcore.errors import ContextOverflow
from agentcore.messages import Message, SystemMessage, ToolMessage, UserMessage
from agentcore.summarize import Summarizer

__all__ = ["MASK_PREFIX", "SUMMARY_PREFIX", "Compaction", "Compactor", "ContextPolicy"]

MASK_PREFIX = "[tool output elided to save context"
SUMMARY_PREFIX = "[Summary of earlier work"
DROP_PREFIX = "[Earlier work removed"
# Kept from each end of a tool output whose spill file could not be written.
_EXCERPT_CHARS = 400
# Rounds of cutting an over-long summary down to its token budget.
_FIT_ROUNDS = 8


class ContextPolicy(BaseModel):
    """When and how the agent compacts its context. Fractions are of the engine's real limit."""

    compact_at: float = Field(0.75, gt=0, le=1, description="compact when prompt + output reserve crosses this fraction")
    target_after: float = Field(0.5, gt=0, le=1, description="aim for this fraction after compacting")
    reserve_output_tokens: int | None = Field(None, ge=1, description="tokens kept free for the reply; None: the agent's max_tokens")
    keep_recent_turns: int = Field(4, ge=1, description="turns at the end kept verbatim")
    tool_output_tokens: int | None = Field(None, ge=16, description="cap per tool result; None: min(8192, 10% of the context)")
    summary_tokens: int = Field(1024, ge=64, description="max_tokens asked of the summarizer")

    def tool_cap(self, context_length: int) -> int:
        if self.tool_output_tokens is not None:
            return self.tool_output_tokens
        return max(16, min(8192, context_length // 10))


@dataclass
class Compaction:
    """The outcome of one compaction."""

    messages: list[Message]
    before_tokens: int
    after_tokens: int
    strategy: str
    note: str = ""


Counter = Callable[[Sequence[Message]], int]
Spill = Callable[[ToolMessage], str]


def _units(messages: Sequence[Message]) -> list[list[int]]:
    """Indices grouped so an assistant message and its tool results form one unit."""
    units: list[list[int]] = []
    for i, m in enumerate(messages):
        if isinstance(m, ToolMessage) and units:
            units[-1].append(i)
        else:
            units.append([i])
    return units


class Compactor:
    """Applies a ContextPolicy to a transcript.

    ``count`` returns the exact prompt tokens of a message list (the engine's count);
    ``spill`` persists a tool message's full content and returns the file path.
    """

    def __init__(
        self,
        policy: ContextPolicy,
        *,
        context_length: int,
        reserve: int,
        count: Counter,
        spill: Spill,
        summarizer: Summarizer | None = None,
    ) -> None:
        self.policy = policy
        self.context_length = context_length
        self.reserve = reserve
        self.count = count
        self.spill = spill
        self.summarizer = summarizer

    @property
    def limit(self) -> int:
        """The most prompt tokens a request may have: the real window minus the reply."""
        return self.context_length - self.reserve

    def needs_compaction(self, prompt_tokens: int) -> bool:
        return prompt_tokens + self.reserve > self.policy.compact_at * self.context_length

    async def compact(self, messages: Sequence[Message]) -> Compaction:
        msgs = list(messages)
        before = self.count(msgs)
        target = int(self.policy.target_after * self.context_length) - self.reserve
        head, middle, recent = self._split(msgs)
        steps: list[str] = []
        note = ""

        masked = [self._mask(msgs[i]) if i in middle else msgs[i] for i in range(len(msgs))]
        if masked != msgs:
            steps.append("mask")
            msgs = masked
        if self.count(msgs) > target and middle:
            msgs, step, note = await self._shrink_middle(msgs, head, middle, recent, target)
            steps.append(step)
        if self.count(msgs) > self.limit:
            msgs = self._squeeze(msgs)
            steps.append("squeeze")
        after = self.count(msgs)
        if after > self.limit:
            raise ContextOverflow(
                f"the conversation needs {after} tokens even after maximal compaction, but the "
                f"context window is {self.context_length} tokens with {self.reserve} reserved "
                "for the reply: shorten the system prompt or the first task, lower max_tokens, "
                "or use a larger context_length"
            )
        return Compaction(msgs, before, after, "+".join(steps) or "none", note)

    def _split(self, msgs: list[Message]) -> tuple[set[int], set[int], set[int]]:
        """Protected head (system + first task), compactable middle, protected recent."""
        units = _units(msgs)
        first_user = next((i for i, m in enumerate(msgs) if isinstance(m, UserMessage)), -1)
        head = {i for u in units for i in u if u[0] <= first_user or isinstance(msgs[u[0]], SystemMessage)}
        rest = [u for u in units if u[0] not in head]
        keep = self.policy.keep_recent_turns
        recent = {i for u in rest[-keep:] for i in u}
        middle = {i for u in rest[:-keep] for i in u}
        return head, middle, recent

    def _mask(self, m: Message) -> Message:
        if not isinstance(m, ToolMessage) or m.compacted:
            return m
        status = "error" if m.is_error else "ok"
        try:
            path = m.spill_path or self.spill(m)
        except OSError as exc:
            # No spill file: keep the ends of the output so the model keeps some record.
            head, tail = m.content[:_EXCERPT_CHARS], m.content[-_EXCERPT_CHARS:]
            excerpt = m.content if len(m.content) <= 2 * _EXCERPT_CHARS else f"{head}\n...\n{tail}"
            placeholder = (
                f"{MASK_PREFIX}: {m.name} ({status}); the full output could not be saved "
                f"({type(exc).__name__}: {exc}), only its start and end are kept]\n{excerpt}"
            )
            return m.model_copy(update={"content": placeholder, "compacted": True})
        placeholder = f"{MASK_PREFIX}: {m.name} ({status}); full output in {path}]"
        return m.model_copy(update={"content": placeholder, "spill_path": path, "compacted": True})

    async def _shrink_middle(
        self, msgs: list[Message], head: set[int], middle: set[int], recent: set[int], target: int
    ) -> tuple[list[Message], str, str]:
        middle_msgs = [msgs[i] for i in sorted(middle)]
        head_msgs = [msgs[i] for i in sorted(head)]
        recent_msgs = [msgs[i] for i in sorted(recent)]
        failure = "no summarizer configured"
        if self.summarizer is not None:
            try:
                summary = await self.summarizer.summarize(
                    middle_msgs, max_tokens=self.policy.summary_tokens
                )
                header = f"{SUMMARY_PREFIX} ({len(middle_msgs)} messages compacted)]"
                message = self._bounded_summary(header, summary)
                return head_msgs + [message] + recent_msgs, "summarize", ""
            except Exception as exc:  # noqa: BLE001 - any summarizer failure falls back
                failure = f"summarizer failed: {exc}"
        # Drop the oldest middle units until the target is met; a note keeps the model honest.
        units = _units(middle_msgs)
        dropped = 0
        kept = middle_msgs
        while units:
            dropped += len(units.pop(0))
            kept = [middle_msgs[i] for u in units for i in u]
            note_msg = UserMessage(
                content=f"{DROP_PREFIX}: {dropped} earlier messages were removed to fit the "
                f"context window ({failure}). Masked tool outputs remain in their spill files.]",
                compacted=True,
            )
            candidate = head_msgs + [note_msg] + kept + recent_msgs
            if self.count(candidate) <= target:
                break
        return candidate, "drop", failure

    def _bounded_summary(self, header: str, summary: str) -> UserMessage:
        """The summary message, its text cut to ``summary_tokens`` when the server ignored them.

        A summary far over budget would only be squeezed out again, taking the record of the
        compacted turns with it.
        """
        budget = self.policy.summary_tokens
        overhead = self.count([])

        def message(text: str) -> UserMessage:
            return UserMessage(content=f"{header}\n{text}", compacted=True)

        full = self.count([message(summary)]) - overhead
        if full <= budget:
            return message(summary)
        note = f"\n[summary cut to about {budget} tokens: the summarizer returned {full}]"
        keep = len(summary)
        for _ in range(_FIT_ROUNDS):
            keep = max(0, min(keep - 1, int(keep * budget / max(1, full) * 0.9)))
            candidate = message(summary[:keep].rstrip() + note)
            full = self.count([candidate]) - overhead
            if full <= budget or keep == 0:
                return candidate
        return message(note.strip())

    def _squeeze(self, msgs: list[Message]) -> list[Message]:
        """Last resort: mask every tool output but the newest turn's, then drop old turns.

        Every drop is noted in one message after the pinned head, naming a lost summary.
        """
        units = _units(msgs)
        first_user = next((i for i, m in enumerate(msgs) if isinstance(m, UserMessage)), -1)
        pinned = [u for u in units if u[0] <= first_user or isinstance(msgs[u[0]], SystemMessage)]
        rest = [u for u in units if u not in pinned]
        last = rest[-1] if rest else []
        masked = [m if i in last else self._mask(m) for i, m in enumerate(msgs)]
        head = [masked[i] for u in pinned for i in sorted(u)]
        dropped, lost_summary = 0, False
        while True:
            note: list[Message] = []
            if dropped:
                what = " (among them the summary of earlier work)" if lost_summary else ""
                note = [UserMessage(
                    content=f"{DROP_PREFIX}: {dropped} earlier messages{what} were removed to "
                    "fit the context window. Masked tool outputs remain in their spill files.]",
                    compacted=True,
                )]  # fmt: skip
            candidate = head + note + [masked[i] for u in rest for i in u]
            if self.count(candidate) <= self.limit or len(rest) <= 1:
                return candidate
            gone = rest.pop(0)
            dropped += len(gone)
            lost_summary |= any(msgs[i].content.startswith(SUMMARY_PREFIX) for i in gone)
