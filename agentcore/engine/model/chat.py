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
ends in tool results. DeepSeek V4 needs no closing tokens: ``<｜Assistant｜>`` follows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from agentcore.dsml import render_tool_calls, render_tool_result, render_tools
from agentcore.engine.model.gguf import GGUFModel
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.errors import TokenizerError
from agentcore.messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolMessage,
    ToolSpec,
)

__all__ = ["ChatFormat", "ChatML", "DeepSeekV4", "Llama3", "detect_chat_format"]


class ChatFormat(ABC):
    """Base of the chat formats; subclasses define how one turn opens, closes and ends."""

    name = "base"

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
        text = message.content + render_tool_calls(message.tool_calls)
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
                    text = f"{text}\n\n{render_tools(tools)}"
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
            prefix += self._open("system", render_tools(tools)) + self._close()
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


class DeepSeekV4(ChatFormat):
    """DeepSeek V4 (DSML.md): BOS, system text, ``<｜User｜>…<｜Assistant｜></think>…EOS``.

    ``thinking=True`` opens each assistant turn with ``<think>`` instead of ``</think>``;
    a text-rendered turn is then ``{reasoning}</think>{content}{calls}``. V4 has no system
    marker: system text follows BOS (a later SystemMessage is rendered as bare text).
    """

    name = "deepseek-v4"

    def __init__(self, tokenizer: Tokenizer, *, thinking: bool = False) -> None:
        super().__init__(tokenizer)
        self.thinking = thinking
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
        tid = self.tokenizer.special_ids.get(text)
        return [tid] if tid is not None else self.tokenizer.encode(text)

    def _open(self, role: str, text: str) -> list[int]:
        marker = [] if role == "system" else [self._user]
        return marker + self.tokenizer.encode(text)

    def _close(self) -> list[int]:
        return []

    def _assistant_prompt(self) -> list[int]:
        return [self._assistant_id, *(self._think if self.thinking else self._think_end)]

    def _assistant_body(self, message: AssistantMessage) -> list[int]:
        visible = self.tokenizer.encode(message.content + render_tool_calls(message.tool_calls))
        if not self.thinking:
            return visible
        return self.tokenizer.encode(message.reasoning or "") + self._think_end + visible


def detect_chat_format(
    model: GGUFModel, tokenizer: Tokenizer, *, thinking: bool = False
) -> ChatFormat:
    """The chat format of a GGUF model, from its chat template and special tokens.

    ``thinking`` selects DeepSeek V4's thinking mode; other formats ignore it.
    """
    template = str(model.metadata.get("tokenizer.chat_template", ""))
    specials = tokenizer.special_ids

    def has(marker: str) -> bool:
        return marker in template or marker in specials

    if has("<｜Assistant｜>"):
        return DeepSeekV4(tokenizer, thinking=thinking)
    if has("<|start_header_id|>"):
        return Llama3(tokenizer)
    if has("<|im_start|>"):
        return ChatML(tokenizer)
    raise TokenizerError(
        f"{model.path}: no supported chat format found in the chat "
        "template or special tokens; supported: ChatML (<|im_start|>), Llama 3 "
        "(<|start_header_id|>), DeepSeek V4 (<｜Assistant｜>)"
    )
