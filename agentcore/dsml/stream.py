"""StreamParser: splits a completion into visible text, reasoning and tool-call blocks as it
streams, in time linear in its input however the text is cut.

What is held back until it can be told: a suffix that may begin a marker (``<think>``,
``</think>``, a DSML tag, the EOS text), and whitespace right before a possible block
(dropped if a block follows, released otherwise, at the latest by ``close()``). Nothing
else is held, and nothing that is not markup is dropped.

Where a block starts
- visible text: a complete block opening tag (``tool_calls``, ``function_calls`` or V4.1's
  ``calls``, any bar spelling), or, when tools were declared, a complete invoke opening tag
  (a bare invoke), once the first thing after it that is not whitespace is a DSML tag (or,
  after a bare invoke, a JSON object body); until then the opener is held, and ToolCallsStarted
  waits. A marker only quoted in prose (``<｜DSML｜invoke is reserved.``, or a whole tag with
  prose after it: ``Open with <｜DSML｜tool_calls> then invokes.``) stays text, and so does
  an opener the model ended its turn right after.
- reasoning: a block opening tag starts a *tentative* block. If only whitespace follows its
  end until the stream ends, reasoning ended there (models that "forget" ``</think>``);
  if anything else follows, it was reasoning after all and is released as such.

Where a block ends: its closing tag outside a parameter value (a bare invoke: its
``</invoke>``). Then the text is visible again, and another block may follow. A block that
is still open when the stream ends is incomplete, unless the model ended its turn (the EOS
text arrived, or ``close(ended=True)``) outside a parameter value: a missing closing tag.
Stray closing DSML tags in visible text after a block are its residue, so they are
dropped; before any block, DSML tags that start none (closing tags among them) are text. A
cut-off marker at the end is dropped when the stream was cut, and is text when the model
ended its turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agentcore.dsml.markup import (
    BLOCK_NAMES,
    EOS,
    KNOWN_NAMES,
    PARAMETER_CLOSE,
    PARTIAL,
    THINK_END,
    THINK_START,
    Tag,
    is_cut_tag,
    parameter_close_hold,
    scan_tag,
)
from agentcore.messages import ToolSpec


@dataclass(frozen=True, slots=True)
class Visible:
    """Text the user may see; never DSML or think markup."""

    text: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallsStarted:
    """A tool-call block began in visible text; it is hidden until it ends."""


@dataclass(frozen=True, slots=True)
class ToolCallsComplete:
    """A tool-call block closed outside any parameter value: an engine may stop here."""


StreamEvent = Visible | Reasoning | ToolCallsStarted | ToolCallsComplete


@dataclass(slots=True)
class Block:
    """One tool-call block as lexed: tags, parameter values ("body") and the text between
    tags ("gap"), in order. ``bare``: it opened with an invoke, not a block tag."""

    tokens: list[Tag | tuple[str, str]] = field(default_factory=list)
    bare: bool = False
    in_reasoning: bool = False
    closed: bool = False
    confirmed: bool = True  # False: an opener in visible text with only whitespace after it


_VISIBLE, _REASONING, _BLOCK, _PENDING = "visible", "reasoning", "block", "pending"
_NON_SPACE = re.compile(r"\S")
# A "<" that may begin a marker or a DSML tag (or is the last character so far): the parser
# looks only at these, so runs of other "<" cost C speed, not a Python step each.
_CANDIDATE = re.compile(r"<(?=[/｜|Dt]|\Z)")


class StreamParser:
    """Feed text as it arrives; read events. ``tools``: declared tools (bare invokes count)."""

    def __init__(self, thinking: bool = False, tools: Sequence[ToolSpec] | None = None) -> None:
        self._bare_invokes = bool(tools)
        self._chunks: list[str] = []
        self._eos_held = ""
        self.ended = False  # the model ended its turn: EOS seen, or close(ended=True)
        self._mode = _REASONING if thinking else _VISIBLE
        self.reasoned = thinking
        self._buffer = ""  # undecided text
        self._space: list[str] = []  # visible whitespace held before a possible block
        self._in_value = False
        self._block: Block | None = None
        self._tentative: list[str] = []  # raw text of a block opened inside reasoning
        self.blocks: list[Block] = []
        self.cut = False  # the stream stopped inside a block or a tag
        self._closed = False

    @property
    def text(self) -> str:
        """Everything fed so far, raw."""
        self._chunks[:] = ["".join(self._chunks)]
        return self._chunks[0]

    @property
    def block_complete(self) -> bool:
        """A tool-call block in visible text has closed: generation may stop here."""
        return any(b.closed and not b.in_reasoning for b in self.blocks)

    def feed(self, text: str) -> list[StreamEvent]:
        self._chunks.append(text)
        if self.ended or self._closed:
            return []
        raw = self._eos_held + text
        cut = raw.find(EOS)
        if cut >= 0:
            self.ended, self._eos_held, raw = True, "", raw[:cut]
        else:
            hold = _held_from(raw, EOS)
            raw, self._eos_held = raw[:hold], raw[hold:]
        return self._advance(raw)

    def close(self, *, ended: bool = False) -> list[StreamEvent]:
        """The stream is over: decide everything held. ``ended``: the model ended its turn
        (finish reason "stop"), so a block missing only its closing tag is complete."""
        if self._closed:
            return []
        self.ended |= ended
        events = self._advance(self._eos_held)
        self._eos_held, rest, self._buffer = "", self._buffer, ""
        self._closed = True
        mode = self._mode
        if mode == _VISIBLE:
            if rest and is_cut_tag(rest) and not self.ended:
                self.cut = True
            elif tail := self._space_text() + rest:
                events.append(Visible(tail))
            self._space.clear()
        elif mode == _REASONING:
            if rest:
                events.append(Reasoning(rest))
        elif mode == _PENDING:
            self._accept_tentative(events)
        elif mode == _BLOCK:
            assert self._block is not None
            whole = not self._in_value and not rest.strip()
            if not self._block.confirmed and self.ended:
                self._release(events)  # the turn ended right after an opener: prose
                if tail := self._space_text() + rest:
                    events.append(Visible(tail))
                self._space.clear()
            elif self.ended and whole:
                self._end_block(events)
                if self._mode == _PENDING:
                    self._accept_tentative(events)
            else:
                self.cut = True
        return events

    # -- the state machine: each step consumes text from `at`, or returns `at` to wait
    def _advance(self, text: str) -> list[StreamEvent]:
        buf, at, events = self._buffer + text, 0, []
        while at < len(buf):
            mode = self._mode
            if mode == _VISIBLE:
                nxt = self._visible(buf, at, events)
            elif mode == _REASONING:
                nxt = self._reasoning(buf, at, events)
            elif mode == _BLOCK:
                nxt = self._lex_block(buf, at, events)
            else:
                nxt = self._pending(buf, at, events)
            if nxt == at and mode == self._mode:
                break
            at = nxt
        self._buffer = buf[at:]
        return _coalesced(events)

    def _visible(self, buf: str, at: int, events: list[StreamEvent]) -> int:
        pos = at  # text from `at` to `pos` is plain and not yet shown
        while True:
            m = _CANDIDATE.search(buf, pos)
            k = m.start() if m else -1
            if k < 0:
                self._show(buf[at:], events)
                return len(buf)
            step = self._visible_marker(buf, k)
            if step is None:  # a "<" that starts nothing: plain text
                pos = k + 1
                continue
            self._show(buf[at:k], events)
            if step == 0:
                return k
            return self._visible_tag(buf, k, step, events)

    def _visible_marker(self, buf: str, k: int) -> int | Tag | None:
        """At a "<": 0 to wait for more text, a Tag, the length of a think marker, or None."""
        rest = len(buf) - k
        for marker in (THINK_START, THINK_END):
            if buf.startswith(marker, k):
                return len(marker)
            if rest < len(marker) and marker.startswith(buf[k:]):
                return 0
        tag = scan_tag(buf, k)
        if tag == PARTIAL:
            return 0
        if isinstance(tag, Tag) and tag.name in KNOWN_NAMES:
            return tag
        return None

    def _visible_tag(self, buf: str, k: int, found: int | Tag, events: list[StreamEvent]) -> int:
        if not isinstance(found, Tag):
            if buf.startswith(THINK_START, k):
                self._show(self._space_text(), events)
                self._space.clear()
                self._mode, self.reasoned = _REASONING, True
            return k + found
        tag = found
        if tag.closing and self.blocks:
            return k + len(tag.text)  # the residue of a block: markup, not content
        if not tag.closing and (tag.name in BLOCK_NAMES or (tag.name == "invoke" and self._bare_invokes)):
            self._open_block(tag, in_reasoning=False, confirmed=False)  # held, with the space before it
        else:
            self._show(tag.text, events)
        return k + len(tag.text)

    def _reasoning(self, buf: str, at: int, events: list[StreamEvent]) -> int:
        pos, shown = at, at
        while True:
            m = _CANDIDATE.search(buf, pos)
            k = m.start() if m else -1
            if k < 0:
                if shown < len(buf):
                    events.append(Reasoning(buf[shown:]))
                return len(buf)
            if buf.startswith(THINK_END, k):
                if shown < k:
                    events.append(Reasoning(buf[shown:k]))
                self._mode = _VISIBLE
                return k + len(THINK_END)
            if len(buf) - k < len(THINK_END) and THINK_END.startswith(buf[k:]):
                tag: Tag | str | None = PARTIAL
            else:
                tag = scan_tag(buf, k)
            if tag == PARTIAL or (isinstance(tag, Tag) and tag.name in BLOCK_NAMES
                                  and not tag.closing):
                if shown < k:
                    events.append(Reasoning(buf[shown:k]))
                if isinstance(tag, Tag):
                    self._open_block(tag, in_reasoning=True)
                    self._tentative = [tag.text]
                    return k + len(tag.text)
                return k
            pos = k + 1

    def _lex_block(self, buf: str, at: int, events: list[StreamEvent]) -> int:
        block = self._block
        assert block is not None
        if not block.confirmed:
            at = self._confirm(block, buf, at, events)
            if not block.confirmed:  # still undecided, or released as prose
                return at
        if self._in_value:
            m = PARAMETER_CLOSE.search(buf, at)
            end = m.start() if m else parameter_close_hold(buf, at)
            if end > at:
                self._piece(block, "body", buf[at:end])
            if m is None:
                return end
            self._take(block, Tag(m.group(), True, "parameter", ()))
            self._in_value = False
            return m.end()
        pos = at
        while True:
            m = _CANDIDATE.search(buf, pos)
            k = m.start() if m else -1
            if k < 0:
                self._piece(block, "gap", buf[at:])
                return len(buf)
            tag = scan_tag(buf, k)
            if isinstance(tag, Tag) or tag == PARTIAL:
                break
            pos = k + 1  # a "<" that starts no tag: text between tags
        if k > at:
            self._piece(block, "gap", buf[at:k])
        if not isinstance(tag, Tag):
            return k
        self._take(block, tag)
        if tag.name == "parameter" and not tag.closing:
            self._in_value = True
        elif tag.closing and (
            tag.name in BLOCK_NAMES or (block.bare and tag.name == "invoke")
        ):
            self._end_block(events)
        return k + len(tag.text)

    def _pending(self, buf: str, at: int, events: list[StreamEvent]) -> int:
        m = _NON_SPACE.search(buf, at)
        if m is None:
            self._tentative.append(buf[at:])
            return len(buf)
        # Text follows the tentative block: it was reasoning that quoted DSML.
        self._tentative.append(buf[at : m.start()])
        events.append(Reasoning("".join(self._tentative)))
        self._tentative = []
        self.blocks.pop()
        self._mode = _REASONING
        return m.start()

    def _confirm(self, block: Block, buf: str, at: int, events: list[StreamEvent]) -> int:
        """An opener in visible text with only whitespace after it so far. Once a DSML tag
        (after a bare invoke also a JSON object) follows, the block is confirmed; once anything
        else does, the opener was prose quoting it and is released as text. Returns where to
        go on (or wait): the first character after the whitespace."""
        m = _NON_SPACE.search(buf, at)
        if m is None:
            if at < len(buf):
                self._piece(block, "gap", buf[at:])
            return len(buf)
        k = m.start()
        if k > at:
            self._piece(block, "gap", buf[at:k])
        if buf[k] == "<":
            tag = scan_tag(buf, k)
            if tag == PARTIAL:
                return k
            ok = isinstance(tag, Tag) and tag.name in KNOWN_NAMES
        else:
            ok = block.bare and buf[k] == "{"
        if not ok:
            self._release(events)
            return k
        block.confirmed = True
        self._space.clear()  # whitespace before a block is not content
        events.append(ToolCallsStarted())
        return k

    def _release(self, events: list[StreamEvent]) -> None:
        """The held opener was prose: its raw text (and the space before it) is visible."""
        block = self.blocks.pop()
        self._block, self._mode = None, _VISIBLE
        self._show("".join(t.text if isinstance(t, Tag) else t[1] for t in block.tokens), events)

    # -- helpers
    def _open_block(self, tag: Tag, *, in_reasoning: bool, confirmed: bool = True) -> None:
        block = Block(bare=tag.name == "invoke", in_reasoning=in_reasoning, confirmed=confirmed)
        block.tokens.append(tag)
        self._block, self._mode = block, _BLOCK
        self.blocks.append(block)

    def _end_block(self, events: list[StreamEvent]) -> None:
        block = self._block
        assert block is not None
        block.closed, self._block = True, None
        if block.in_reasoning:
            self._mode = _PENDING
        else:
            self._mode = _VISIBLE
            events.append(ToolCallsComplete())

    def _accept_tentative(self, events: list[StreamEvent]) -> None:
        """Reasoning ended at the block: it is a call (its raw text is not reasoning)."""
        self._tentative = []
        self.blocks[-1].in_reasoning = False
        events += [ToolCallsStarted(), ToolCallsComplete()]

    def _take(self, block: Block, tag: Tag) -> None:
        block.tokens.append(tag)
        if block.in_reasoning:
            self._tentative.append(tag.text)

    def _piece(self, block: Block, kind: str, text: str) -> None:
        block.tokens.append((kind, text))
        if block.in_reasoning:
            self._tentative.append(text)

    def _show(self, text: str, events: list[StreamEvent]) -> None:
        """Visible text; trailing whitespace waits, as it is dropped if a block follows."""
        if not text:
            return
        body = text.rstrip()
        if not body:
            self._space.append(text)
            return
        events.append(Visible(self._space_text() + body))
        self._space = [text[len(body) :]] if len(body) < len(text) else []

    def _space_text(self) -> str:
        if len(self._space) > 1:
            self._space[:] = ["".join(self._space)]
        return self._space[0] if self._space else ""


def _coalesced(events: list[StreamEvent]) -> list[StreamEvent]:
    """Adjacent texts of one kind joined: one event per run."""
    out: list[StreamEvent] = []
    run: list[str] = []
    kind: type | None = None
    for event in events:
        if isinstance(event, Visible | Reasoning):
            if type(event) is not kind and run:
                out.append(kind("".join(run)))  # type: ignore[misc]
                run = []
            kind = type(event)
            run.append(event.text)
            continue
        if run:
            out.append(kind("".join(run)))  # type: ignore[misc]
            run, kind = [], None
        out.append(event)
    if run:
        out.append(kind("".join(run)))  # type: ignore[misc]
    return out


def _held_from(buf: str, marker: str) -> int:
    """Index of the suffix of ``buf`` that may still grow into ``marker``."""
    start = buf.rfind("<", max(0, len(buf) - len(marker)))
    if start >= 0 and marker.startswith(buf[start:]):
        return start
    return len(buf)
