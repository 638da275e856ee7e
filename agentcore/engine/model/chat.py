"""Chat formats (ChatML, Llama 3, DeepSeek V4) as prefix-stable per-message token segments.

``render(messages, tools)`` returns exactly one token segment per message; the prompt is
their concatenation plus ``generation_prompt(messages)``. Special tokens are inserted by id;
message text is encoded with ``Tokenizer.encode``, so control-token text in content stays
plain text. Tools are described in DSML (agentcore.dsml) inside the system turn for every
family, so one parser serves all; without a SystemMessage the tools block becomes a system
turn of its own, carried by the first message's segment (as is the BOS, where the model
wants one).

Invariants (tested):
- Prefix stability: ``concat(render(m[:n+1]))`` starts with ``concat(render(m[:n]))``; a
  segment depends only on its message and the ones before it.
- Exact replay: an AssistantMessage with ``token_ids`` renders as
  ``generation_prompt(previous messages) + token_ids + end-of-turn (unless token_ids already
  ends with a stop id) + separator``; so the prompt a model saw plus what it sampled is a
  prefix of the next prompt, and the next request prefills only new messages.

Tool results: all ToolMessages that follow one assistant turn share ONE user turn, joined
by "\\n\\n" (DSML.md). ChatML and Llama 3 use the plain ``user`` role for it (SmolLM2's
template has no tool role; Llama 3.1's ``ipython`` role is meant for code output; one role
everywhere keeps the DSML convention uniform). The first ToolMessage's segment opens the
turn, each later one appends "\\n\\n" + its result; the turn's closing tokens belong to the
segment of the next non-tool message, or to the generation prompt when the conversation
ends in tool results. DeepSeek (V4, V4.1) follows its official encoders instead, which also
merge consecutive user messages into one turn: see DeepSeekV4; V3.2 puts one turn's results in
a ``<function_results>`` block of their own, with no user turn: see DeepSeekV32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from agentcore.dsml import (
    FUNCTION_RESULTS_END,
    FUNCTION_RESULTS_START,
    V4,
    V32,
    V41,
    Dialect,
    render_function_result,
    render_tool_calls,
    render_tool_result,
    render_tools,
)
from agentcore.engine.model.gguf import GGUFModel
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.errors import TokenizerError
from agentcore.messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolMessage,
    ToolSpec,
    UserMessage,
)

__all__ = [
    "CHAT_FORMATS",
    "ChatFormat",
    "ChatML",
    "DeepSeekV3",
    "DeepSeekV4",
    "DeepSeekV32",
    "DeepSeekV41",
    "Llama3",
    "chat_format_for_template",
    "chat_format_named",
    "detect_chat_format",
]  # fmt: skip


class ChatFormat(ABC):
    """Base of the chat formats; subclasses define how one turn opens, closes and ends."""

    name = "base"
    # The DSML the format renders tools and calls in (and the tool-call constraint writes):
    # V4's for every family that is taught it; DeepSeek's formats speak their own.
    dialect: Dialect = V4

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos: list[int] = (
            [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
        )
        self.stop_ids: set[int] = set(tokenizer.eot_ids)

    # -- what a format defines
    end_of_turn: list[int]  # closes an assistant turn the model did not close itself
    separator: list[int]  # follows every closed turn (ChatML: "\n")

    @abstractmethod
    def _open(self, role: str, text: str) -> list[int]:
        """A turn's opening and its text, without the closing tokens."""

    @abstractmethod
    def _close(self) -> list[int]:
        """Closes a user or system turn."""

    @abstractmethod
    def _assistant_prompt(self) -> list[int]:
        """Opens an assistant turn (the generation prompt, less any pending closing)."""

    def _assistant_body(self, message: AssistantMessage) -> list[int]:
        """Tokens of an assistant turn written as text (no token_ids), before end_of_turn."""
        text = message.content + render_tool_calls(message.tool_calls, self.dialect)
        if message.reasoning:
            text = f"<think>{message.reasoning}</think>{text}"
        return self.tokenizer.encode(text)

    # -- shared logic
    def render(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> list[list[int]]:
        """One token segment per message (see the module docstring)."""
        segments: list[list[int]] = []
        for i, message in enumerate(messages):
            segment = self._first_prefix(message, tools) if i == 0 else []
            after_tool = i > 0 and isinstance(messages[i - 1], ToolMessage)
            if isinstance(message, ToolMessage):
                result = render_tool_result(message.content)
                if after_tool:
                    segment += self.tokenizer.encode("\n\n" + result)
                else:
                    segment += self._open("user", result)
                segments.append(segment)
                continue
            if after_tool:
                segment += self._close()
            if isinstance(message, AssistantMessage):
                segment += self._assistant_prompt() + self._assistant(message)
            else:
                text = message.content
                if i == 0 and isinstance(message, SystemMessage) and tools:
                    text = f"{text}\n\n{render_tools(tools, self.dialect)}"
                segment += self._open(message.role, text) + self._close()
            segments.append(segment)
        return segments

    def generation_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Tokens that hand the turn to the assistant after ``messages``."""
        if not messages:
            return self.bos + self._assistant_prompt()
        closing = self._close() if isinstance(messages[-1], ToolMessage) else []
        return closing + self._assistant_prompt()

    def _first_prefix(self, first: Message, tools: Sequence[ToolSpec]) -> list[int]:
        """BOS, and a system turn for the tools when the conversation has no system message."""
        prefix = list(self.bos)
        if tools and not isinstance(first, SystemMessage):
            prefix += self._open("system", render_tools(tools, self.dialect)) + self._close()
        return prefix

    def _assistant(self, message: AssistantMessage) -> list[int]:
        if message.token_ids is None:
            return self._assistant_body(message) + self.end_of_turn + self.separator
        ids = list(message.token_ids)
        closed = bool(ids) and ids[-1] in self.stop_ids
        return ids + ([] if closed else self.end_of_turn) + self.separator


class ChatML(ChatFormat):
    """``<|im_start|>role\\n…<|im_end|>\\n`` (SmolLM2, Qwen)."""

    name = "chatml"

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        self._start = tokenizer.special("<|im_start|>")
        self._end = tokenizer.special("<|im_end|>")
        self.end_of_turn = [self._end]
        self.separator = tokenizer.encode("\n")
        self.stop_ids.add(self._end)

    def _open(self, role: str, text: str) -> list[int]:
        return [self._start, *self.tokenizer.encode(f"{role}\n{text}")]

    def _close(self) -> list[int]:
        return [self._end, *self.separator]

    def _assistant_prompt(self) -> list[int]:
        return [self._start, *self.tokenizer.encode("assistant\n")]


class Llama3(ChatFormat):
    """``<|start_header_id|>role<|end_header_id|>\\n\\n…<|eot_id|>``; content is trimmed as
    the official template does."""

    name = "llama3"

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        self._header = tokenizer.special("<|start_header_id|>")
        self._header_end = tokenizer.special("<|end_header_id|>")
        self._eot = tokenizer.special("<|eot_id|>")
        self.end_of_turn = [self._eot]
        self.separator = []
        self.stop_ids.add(self._eot)

    def _role(self, role: str) -> list[int]:
        return [self._header, *self.tokenizer.encode(role), self._header_end]

    def _open(self, role: str, text: str) -> list[int]:
        return self._role(role) + self.tokenizer.encode("\n\n" + text.strip())

    def _close(self) -> list[int]:
        return [self._eot]

    def _assistant_prompt(self) -> list[int]:
        return self._role("assistant") + self.tokenizer.encode("\n\n")


class DeepSeekV2(ChatFormat):
    """DeepSeek-V2 / V2-Lite / Coder-V2 chat: ``{system}\n\nUser: {text}\n\nAssistant: {reply}<eos>``
    after BOS, as their chat template writes it; the generation prompt is ``Assistant:``.
    The family has no native tool-call tokens: tools are taught through the system prompt in
    DSML, as for ChatML and Llama 3 models."""

    name = "deepseek-v2"

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        eos = tokenizer.eos_id
        self.end_of_turn = [] if eos is None else [eos]
        self.separator = []
        if eos is not None:
            self.stop_ids.add(eos)

    def _open(self, role: str, text: str) -> list[int]:
        return self.tokenizer.encode(text if role == "system" else f"User: {text}")

    def _close(self) -> list[int]:
        return self.tokenizer.encode("\n\n")

    def _assistant_prompt(self) -> list[int]:
        return self.tokenizer.encode("Assistant:")

    def _assistant_body(self, message: AssistantMessage) -> list[int]:
        return self.tokenizer.encode(" ") + super()._assistant_body(message)


class DeepSeekV3(ChatFormat):
    """DeepSeek V3 / R1-era chat (the deepseek2 architecture's template, as llama.cpp reads
    it: the template holds ``<｜tool▁calls▁begin｜>``): BOS, system text + "\n\n",
    ``<｜User｜>{text}``, ``<｜Assistant｜>{text}<｜end▁of▁sentence｜>``. These models were not
    trained on DSML; like ChatML models they are taught it through the system prompt (their
    own ``<｜tool▁calls▁begin｜>`` JSON format is not spoken), and tool results go back as a
    user turn."""

    name = "deepseek-v3"

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        self.bos = [tokenizer.special("<｜begin▁of▁sentence｜>")]
        eos = tokenizer.special("<｜end▁of▁sentence｜>")
        self._user = tokenizer.special("<｜User｜>")
        self._assistant_id = tokenizer.special("<｜Assistant｜>")
        self.end_of_turn = [eos]
        self.separator = []
        self.stop_ids.add(eos)

    def _open(self, role: str, text: str) -> list[int]:
        if role == "system":
            return self.tokenizer.encode(text + "\n\n")
        return [self._user, *self.tokenizer.encode(text)]

    def _close(self) -> list[int]:
        return []

    def _assistant_prompt(self) -> list[int]:
        return [self._assistant_id]


class DeepSeekDSML(ChatFormat):
    """What DeepSeek's DSML chat formats (V3.2, V4, V4.1) share: BOS, the ``<｜User｜>`` and
    ``<｜Assistant｜>`` tokens, ``<think>`` / ``</think>``, the tools block after the first
    system text, and an assistant turn as ``{reasoning}</think>{content}{calls}`` plus EOS
    (reasoning in thinking mode, unless the turn is dropped). Subclasses render the turns."""

    def __init__(
        self, tokenizer: Tokenizer, *, thinking: bool = False, drop_thinking: bool = False
    ) -> None:
        super().__init__(tokenizer)
        self.thinking = thinking
        self.drop_thinking = drop_thinking
        self.bos = [tokenizer.special("<｜begin▁of▁sentence｜>")]
        eos = tokenizer.special("<｜end▁of▁sentence｜>")
        self._user = tokenizer.special("<｜User｜>")
        self._assistant_id = tokenizer.special("<｜Assistant｜>")
        self._think = self._marker("<think>")
        self._think_end = self._marker("</think>")
        self.end_of_turn = [eos]
        self.separator = []
        self.stop_ids.add(eos)

    def _marker(self, text: str) -> list[int]:
        return _special_or_text(self.tokenizer, text)

    # ChatFormat's hooks (the subclasses' own render and generation_prompt do the rest)
    def _open(self, role: str, text: str) -> list[int]:
        marker = [] if role == "system" else [self._user]
        return marker + self.tokenizer.encode(text)

    def _close(self) -> list[int]:
        return []

    def _assistant_prompt(self, *, think: bool | None = None) -> list[int]:
        think = self.thinking if think is None else think
        return [self._assistant_id, *(self._think if think else self._think_end)]

    def _first_prefix(self, first: Message, tools: Sequence[ToolSpec]) -> list[int]:
        prefix = list(self.bos)
        if tools and not isinstance(first, SystemMessage):
            prefix += self._system(SystemMessage(content=""), tools, first=True)
        return prefix

    def _system(self, message: SystemMessage, tools: Sequence[ToolSpec], *, first: bool) -> list[int]:
        text = message.content
        if first and tools:
            text = f"{text}\n\n{render_tools(tools, self.dialect)}"
        return self.tokenizer.encode(text)

    def _assistant_turn(self, message: AssistantMessage, *, dropped: bool) -> list[int]:
        if message.token_ids is not None and not dropped:
            ids = list(message.token_ids)
            closed = bool(ids) and ids[-1] in self.stop_ids
            return ids + ([] if closed else self.end_of_turn)
        visible = self.tokenizer.encode(
            message.content + render_tool_calls(message.tool_calls, self.dialect)
        )
        if self.thinking and not dropped:
            visible = self.tokenizer.encode(message.reasoning or "") + self._think_end + visible
        return visible + self.end_of_turn


class DeepSeekV4(DeepSeekDSML):
    """DeepSeek V4, byte-exact to DeepSeek's ``encoding_dsv4.py`` (golden fixtures in
    tests/data/dsml/): BOS, system text, ``<｜User｜>…<｜Assistant｜><think>…EOS``.

    Turns: consecutive user and tool messages are ONE user turn, their texts joined by
    "\\n\\n" (tool results as ``<tool_result>`` blocks, put in the order of the calls), so a
    message's segment opens with ``<｜User｜>`` or with "\\n\\n", by what precedes it. Each
    assistant segment opens with the assistant prompt, ``<｜Assistant｜>`` plus ``<think>``
    (thinking) or ``</think>`` (chat), exactly as ``generation_prompt`` gave it.

    ``drop_thinking``: the official encoder's default drops the reasoning of assistant turns
    before the last user turn (unless tools are declared). That rewrites history, so every
    cached prefix after the first such turn is lost; agentcore's default keeps reasoning,
    which is also what the encoder does whenever tools are declared. With
    ``drop_thinking=True`` a segment depends on later messages (prefix stability is given up).

    Deliberate deviations (the encoder has no sensible output there): an assistant message
    that follows an assistant, a system message or nothing still gets the assistant prompt;
    tools without a SystemMessage render as if an empty one led the conversation; a literal
    ``</tool_result>`` inside a result is written ``&lt;/tool_result>`` (the encoder writes it
    raw, which ends the result early); a string argument holding its own closing parameter
    tag is written as a JSON string (see agentcore.dsml.render).
    Tool results out of call order are put in call order like the encoder does; a conversation
    cut inside such a run is then not a prefix of the whole (agentcore appends results in
    call order, so it does not happen there).
    """

    name = "deepseek-v4"

    # -- the conversation
    def render(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> list[list[int]]:
        """One token segment per message (see the class docstring)."""
        slots = _in_call_order(messages)
        later_user = _later_user_turns(slots, self._is_user_turn)
        drop = self.drop_thinking and self.thinking and not tools
        segments: list[list[int]] = []
        for i, message in enumerate(slots):
            segment = self._first_prefix(message, tools) if i == 0 else []
            previous = slots[i - 1] if i else None
            if isinstance(message, UserMessage | ToolMessage):
                text = (
                    render_tool_result(message.content)
                    if isinstance(message, ToolMessage)
                    else message.content
                )
                if isinstance(previous, UserMessage | ToolMessage):
                    segment += self.tokenizer.encode("\n\n" + text)
                else:
                    segment += [self._user, *self.tokenizer.encode(text)]
            elif isinstance(message, SystemMessage):
                segment += self._system(message, tools, first=i == 0)
            else:
                assert isinstance(message, AssistantMessage)
                dropped = drop and later_user[i]
                segment += self._assistant_prompt(think=self.thinking and not dropped)
                segment += self._assistant_turn(message, dropped=dropped)
            segments.append(segment)
        return segments

    def generation_prompt(self, messages: Sequence[Message]) -> list[int]:
        return ([] if messages else self.bos) + self._assistant_prompt()

    def _is_user_turn(self, message: Message, index: int) -> bool:
        return isinstance(message, UserMessage | ToolMessage)


class DeepSeekV41(DeepSeekV4):
    """DeepSeek V4.1, byte-exact to ``encoding/encoding.py`` of DeepSeek-V4.1-Flash: V4's
    layout, with the spaced DSML tags (``<｜DSML｜ calls>``), a ``<｜System｜>`` marker that
    opens the first system text and every later system message (a later one is answered
    like a user turn), and, in thinking mode, a reasoning-effort line after BOS.

    ``reasoning_effort``: 1..100, or "low" (50), "high" (75, the default), "max" (100), as
    the reference encoder maps them.
    """

    name = "deepseek-v4.1"
    dialect = V41

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        thinking: bool = False,
        drop_thinking: bool = False,
        reasoning_effort: int | str = "high",
    ) -> None:
        super().__init__(tokenizer, thinking=thinking, drop_thinking=drop_thinking)
        effort = _EFFORTS.get(reasoning_effort, reasoning_effort)
        if not isinstance(effort, int) or not 1 <= effort <= 100:
            raise ValueError(
                f"reasoning_effort {reasoning_effort!r}: use 1..100 or one of {list(_EFFORTS)}"
            )
        self.reasoning_effort = effort
        self._system_marker = self._marker("<｜System｜>")

    def _first_prefix(self, first: Message, tools: Sequence[ToolSpec]) -> list[int]:
        prefix = list(self.bos)
        leads = isinstance(first, SystemMessage) or bool(tools)
        if self.thinking or leads:
            prefix += self._system_marker
        if self.thinking:
            prefix += self.tokenizer.encode(
                f"Reasoning Effort: {self.reasoning_effort} (range 1-100, the higher the "
                "value, the more thorough the reasoning)\n\n"
            )
        if tools and not isinstance(first, SystemMessage):
            prefix += self._system(SystemMessage(content=""), tools, first=True)
        return prefix

    def _system(self, message: SystemMessage, tools: Sequence[ToolSpec], *, first: bool) -> list[int]:
        marker = [] if first else self._system_marker
        return marker + super()._system(message, tools, first=first)

    def _is_user_turn(self, message: Message, index: int) -> bool:
        return super()._is_user_turn(message, index) or (
            isinstance(message, SystemMessage) and index > 0
        )


class DeepSeekV32(DeepSeekDSML):
    """DeepSeek V3.2, byte-exact to DeepSeek's ``encoding_dsv32.py`` (golden fixtures in
    tests/data/dsml/v3.2.json): BOS, the system text (the first one followed by "\\n\\n" and
    V3.2's tools block), each user message as ``<｜User｜>{text}<｜Assistant｜>`` plus ``<think>``
    (thinking) or ``</think>`` (chat), each assistant turn as ``{reasoning}</think>`` (thinking
    only) ``{content}{calls}<｜end▁of▁sentence｜>`` with calls in ``<｜DSML｜function_calls>``.
    The results of one assistant turn follow it as one block, no user turn:
    ``\\n\\n<function_results>``, ``\\n<result>…</result>`` each, and after as many results as
    the turn made calls ``\\n</function_results>\\n\\n`` plus ``<think>`` or ``</think>``. So a
    user message's segment and a complete block's last segment end with what hands the turn to
    the model, and ``generation_prompt`` adds nothing after them.

    ``drop_thinking``: in thinking mode the encoder writes ``<think>`` and reasoning only from
    the last user message on; every earlier user message gets ``</think>`` and earlier turns
    lose their reasoning, so each new user message rewrites the history before it. agentcore's
    default keeps every turn as the model saw and wrote it (``<think>``, reasoning): the
    encoder's output whenever the conversation has one user message (an agent's task with all
    its tool rounds), and prefix-stable across user messages; ``drop_thinking=True`` gives the
    encoder's output always (a segment then depends on later messages).

    Deliberate deviations (the encoder has no sensible output there): an assistant message
    after a system message, another assistant message or nothing gets ``<｜Assistant｜>`` and
    the marker first; results with no calls before them, or more results than calls, are a
    block each; a block cut short by a message other than a result is closed before it; a
    literal ``</result>`` inside a result is written ``&lt;/result>``; a string argument holding
    its own closing parameter tag is written as a JSON string (see agentcore.dsml.render).
    Results are rendered in the order given (the encoder does not sort them by call).
    """

    name = "deepseek-v3.2"
    dialect: Dialect = V32

    def _handover(self, think: bool) -> list[int]:
        """What ends a user message or a results block: the turn is the model's."""
        return self._think if think else self._think_end

    def _results_end(self, think: bool) -> list[int]:
        return self.tokenizer.encode(f"\n{FUNCTION_RESULTS_END}\n\n") + self._handover(think)

    # -- the conversation
    def render(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> list[list[int]]:
        """One token segment per message (see the class docstring)."""
        later_user = _later_user_turns(messages, lambda m, i: isinstance(m, UserMessage))
        blocks = _result_blocks(messages)
        segments: list[list[int]] = []
        for i, message in enumerate(messages):
            segment = self._first_prefix(message, tools) if i == 0 else []
            # thinking from here on: in drop mode only after the last user message
            think = self.thinking and not (self.drop_thinking and later_user[i])
            previous = messages[i - 1] if i else None
            if isinstance(previous, ToolMessage) and not blocks[i - 1][1] and not isinstance(message, ToolMessage):
                segment += self._results_end(think)  # a block cut short: closed before this
            if isinstance(message, ToolMessage):
                opens, closes = blocks[i]
                if opens:
                    segment += self.tokenizer.encode(f"\n\n{FUNCTION_RESULTS_START}")
                segment += self.tokenizer.encode(render_function_result(message.content))
                if closes:
                    segment += self._results_end(think)
            elif isinstance(message, UserMessage):
                segment += [self._user, *self.tokenizer.encode(message.content), self._assistant_id]
                segment += self._handover(think)
            elif isinstance(message, SystemMessage):
                segment += self._system(message, tools, first=i == 0)
            else:
                assert isinstance(message, AssistantMessage)
                # After a user message or a results block (closed above if it was cut
                # short) the turn is already the model's.
                if not isinstance(previous, UserMessage | ToolMessage):
                    segment += self._assistant_prompt(think=think)
                segment += self._assistant_turn(message, dropped=self.thinking and not think)
            segments.append(segment)
        return segments

    def generation_prompt(self, messages: Sequence[Message]) -> list[int]:
        if not messages:
            return self.bos + self._assistant_prompt()
        last = messages[-1]
        if isinstance(last, UserMessage):
            return []
        if isinstance(last, ToolMessage):
            return [] if _result_blocks(messages)[-1][1] else self._results_end(self.thinking)
        return self._assistant_prompt()


def _result_blocks(messages: Sequence[Message]) -> list[tuple[bool, bool]]:
    """Per message, for V3.2: (opens a ``<function_results>`` block, closes it). A result
    opens one when no block is open, and closes it once the block holds as many results as
    the assistant turn before the run made calls (at once when that turn made none, or the
    run follows no assistant turn); other messages give (False, False)."""
    out, calls, seen, pending = [], 0, 0, False
    for message in messages:
        if not isinstance(message, ToolMessage):
            out.append((False, False))
            pending = False
            calls = len(message.tool_calls) if isinstance(message, AssistantMessage) else 0
            continue
        opens = not pending
        if opens:
            pending, seen = True, 0
        seen += 1
        closes = seen >= calls
        if closes:
            pending, calls = False, 0
        out.append((opens, closes))
    return out


_EFFORTS = {"low": 50, "high": 75, "max": 100}


def _special_or_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """A marker as its special token where the vocabulary has one, else as text."""
    tid = tokenizer.special_ids.get(text)
    return [tid] if tid is not None else tokenizer.encode(text)


def _in_call_order(messages: Sequence[Message]) -> list[Message]:
    """The messages with each user turn's tool results sorted into the order of the calls
    (of the last assistant turn that made calls), as DeepSeek's encoders do; stable, and
    results of unknown calls sort first."""
    slots = list(messages)
    order: dict[str, int] = {}
    i = 0
    while i < len(slots):
        message = slots[i]
        if isinstance(message, AssistantMessage) and message.tool_calls:
            order = {c.id: n for n, c in enumerate(message.tool_calls) if c.id}
        if not isinstance(message, UserMessage | ToolMessage):
            i += 1
            continue
        j = i
        while j < len(slots) and isinstance(slots[j], UserMessage | ToolMessage):
            j += 1
        places = [k for k in range(i, j) if isinstance(slots[k], ToolMessage)]
        results = sorted((slots[k] for k in places), key=lambda m: order.get(m.call_id, 0))  # type: ignore[union-attr]
        for k, result in zip(places, results, strict=True):
            slots[k] = result
        i = j
    return slots


def _later_user_turns(messages: Sequence[Message], is_user) -> list[bool]:
    """For each position: does a user turn come after it?"""
    out, seen = [False] * len(messages), False
    for i in range(len(messages) - 1, -1, -1):
        out[i] = seen
        seen |= is_user(messages[i], i)
    return out


def detect_chat_format(
    model: GGUFModel,
    tokenizer: Tokenizer,
    *,
    thinking: bool = False,
    drop_thinking: bool = False,
    dialect: str | None = None,
) -> ChatFormat:
    """The chat format of a GGUF model, from its chat template and special tokens (see
    ``chat_format_for_template``)."""
    template = str(model.metadata.get("tokenizer.chat_template", ""))
    try:
        return chat_format_for_template(template, tokenizer, thinking=thinking,
                                        drop_thinking=drop_thinking, dialect=dialect)  # fmt: skip
    except TokenizerError as exc:
        raise TokenizerError(f"{model.path}: {exc}") from None


def chat_format_for_template(
    template: str,
    tokenizer: Tokenizer,
    *,
    thinking: bool = False,
    drop_thinking: bool = False,
    dialect: str | None = None,
) -> ChatFormat:
    """The chat format a chat template (a GGUF's, or a server's) and a vocabulary speak.

    ``thinking`` and ``drop_thinking`` select DeepSeek's modes; other formats ignore them.
    ``dialect`` ("v3.2", "v4" or "v4.1") overrides the DeepSeek generation read from the
    template (V3.2 is told by DSML with its ``function_calls`` / ``function_results``; V4.1 by
    its ``<｜System｜>`` token or its spaced ``<｜DSML｜ calls>`` tag; V3 by its own
    ``<｜tool▁calls▁begin｜>`` markers).
    """
    specials = getattr(tokenizer, "special_ids", {})

    def has(marker: str) -> bool:
        return marker in template or marker in specials

    # V2's template writes plain "User: " / "Assistant:" turns (its vocabulary may still hold
    # the later role tokens, so the template decides).
    v2_turns = "User: " in template and "Assistant:" in template and "<｜Assistant｜>" not in template
    if dialect is None and v2_turns and has("<｜begin▁of▁sentence｜>"):
        return DeepSeekV2(tokenizer)
    if dialect is None and has("<｜Assistant｜>") and "DSML" in template and (
        "function_calls" in template or "function_results" in template
    ):
        dialect = "v3.2"  # V3.2's DSML block and results (before V3's check: a template may hold both)
    if dialect is None and has("<｜Assistant｜>") and "tool▁calls▁begin" in template:
        return DeepSeekV3(tokenizer)  # V3's own template; V4 and V4.1 write DSML instead
    if has("<｜Assistant｜>") or dialect is not None:
        if dialect is None:
            dialect = "v4.1" if has("<｜System｜>") or "｜DSML｜ calls" in template else "v4"
        if dialect not in _DEEPSEEK:
            raise TokenizerError(f"DeepSeek dialect {dialect!r}: supported are {list(_DEEPSEEK)}")
        return _DEEPSEEK[dialect](tokenizer, thinking=thinking, drop_thinking=drop_thinking)
    if has("<|start_header_id|>"):
        return Llama3(tokenizer)
    if has("<|im_start|>"):
        return ChatML(tokenizer)
    raise TokenizerError(
        "no supported chat format found in the chat template or special tokens; supported: "
        "ChatML (<|im_start|>), Llama 3 (<|start_header_id|>), DeepSeek V2 ('User: ' / "
        "'Assistant:' turns), V3 (<｜tool▁calls▁begin｜> in the template), V3.2 (DSML function_calls), "
        "V4 and V4.1 (<｜Assistant｜>)"
    )


def chat_format_named(name: str, tokenizer: Tokenizer, *, thinking: bool = False) -> ChatFormat:
    """A chat format by name: one of ``CHAT_FORMATS``."""
    if name not in CHAT_FORMATS:
        raise ValueError(f"chat_format must be one of {', '.join(CHAT_FORMATS)}, not {name!r}")
    fmt = CHAT_FORMATS[name]
    if issubclass(fmt, DeepSeekDSML):
        return fmt(tokenizer, thinking=thinking)
    return fmt(tokenizer)


_DEEPSEEK: dict[str, type[DeepSeekDSML]] = {
    "v3.2": DeepSeekV32, "v4": DeepSeekV4, "v4.1": DeepSeekV41,
}  # fmt: skip
CHAT_FORMATS: dict[str, type[ChatFormat]] = {
    f.name: f for f in (ChatML, Llama3, DeepSeekV2, DeepSeekV3, DeepSeekV32, DeepSeekV4, DeepSeekV41)
}
