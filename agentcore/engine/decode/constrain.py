"""Constrained decoding of DSML tool calls: the engine writes the structure, the model the values.

A small model cannot write a valid ``<｜DSML｜tool_calls>`` block on its own. A
``ToolCallConstraint`` watches the text generated in one turn and tells the decode loop, step
by step, what may come next: ``Forced`` text (tags, a tool name once it is determined), an
``Allowed`` token mask (a choice among tool or parameter names, a value being written), or
``None`` (free text). The block it shapes is one invoke of a registered tool, each line
below ending in "\\n" but the last:

    <｜DSML｜tool_calls>
    <｜DSML｜invoke name="NAME">
    <｜DSML｜parameter name="P" string="true|false">VALUE</｜DSML｜parameter>
    …
    </｜DSML｜invoke>
    </｜DSML｜tool_calls>

Invariants
- Once the block has started, every text the engine appends under the constraint keeps it a
  prefix of a block that ``dsml.parse_completion`` reads as exactly one call to a registered
  tool, with every required parameter and a value of the schema's type for each parameter
  written; the block always ends (values are capped at ``max_value_tokens``), and ``done``
  turns true at the closing ``</｜DSML｜tool_calls>``.
- Parameters come in schema order; required ones are forced, optional ones may be skipped.
  ``string="true"`` exactly when the value is a string: the schema admits any string, or
  only strings (an enum of strings). A raw string value is any text without ``<``, CR or LF,
  at least one character long (so multi-line text cannot be written); a ``string="false"``
  value is JSON of the schema's type (no whitespace but an optional space after ``,`` and
  ``:``); enum and boolean values are chosen among their written forms. Numeric bounds are
  honoured only as far as the sign goes (``minimum >= 0``: no ``-``; an integer with
  ``minimum >= 1``: no ``0``); string formats, lengths and array sizes are not.
- Masks never admit a control token (end of turn, turn markers), an empty token, or a token
  whose text is not whole UTF-8: the engine's incremental decoder would hold such bytes back,
  and the constraint, which reads text, would lose step with the tokens.
- ``next`` is cheap: token texts and the masks of raw values are computed once per tokenizer;
  choices cost a dictionary lookup per character of the options; the mask of each JSON state
  is computed once per constraint from a few candidate buckets and then reused.

Where the vocabulary has no token for the fullwidth bar (SmolLM2), a choice between another
parameter and ``</｜DSML｜invoke>`` would be made on a character no token starts with, so
the model could never pick a parameter. There the tags are also offered with ASCII bars
(``<|DSML|parameter …>``, which the parser accepts); once the choice is settled, the rest is
forced in the canonical spelling where it is still possible.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentcore.dsml import DSML, THINK_END, THINK_START, V4, Dialect
from agentcore.engine.decode.json_values import ValueNode, admits_string, fixed_values, json_node
from agentcore.errors import DSMLError
from agentcore.messages import ToolSpec

__all__ = ["Allowed", "Forced", "ToolCallConstraint"]

_MIN_TRIGGER = 2  # "<" alone is too common to commit to a block
_JSON_MASKS_KEPT = 256  # masks of JSON states kept per constraint (one vocabulary of bools each)


@dataclass(frozen=True, slots=True)
class Forced:
    """Append ``ids`` (whose text is ``text``) without sampling, in one forward call."""

    ids: list[int]
    text: str


@dataclass(frozen=True, slots=True, eq=False)
class Allowed:
    """Sample only the tokens where ``mask`` (read-only bools, one per logit) is True."""

    mask: np.ndarray


Step = Forced | Allowed | None


class ToolCallConstraint:
    """What the next decode step may produce, given the text of the turn so far.

    ``tool_choice``: ``"auto"`` (free text until the model starts a tool_calls block itself,
    then constrained), ``"required"`` (a block of one call to any tool, from the first step),
    ``{"name": NAME}`` (a call to that tool) or ``"none"`` (never constrained). ``thinking``:
    the prompt ended with ``<think>``, so no block starts before ``</think>``. ``dialect``: the
    DSML the model speaks (the chat format's: V4's ``tool_calls``, V3.2's ``function_calls``,
    V4.1's spaced tags); the block is read and written in it.
    ``max_value_tokens``: sampled tokens per value before it is closed. ``vocab_size``: the
    length of the masks, the model's number of logits (default: the tokenizer's vocabulary;
    ids past it are never allowed).

    Call ``next`` once per decode step with the full text generated so far; stop when ``done``.
    """

    def __init__(
        self,
        tokenizer: Any,
        tools: Sequence[ToolSpec],
        tool_choice: Any = "auto",
        *,
        thinking: bool = False,
        max_value_tokens: int = 64,
        vocab_size: int | None = None,
        dialect: Dialect = V4,
    ) -> None:
        if max_value_tokens < 1:
            raise ValueError("max_value_tokens must be at least 1")
        self._tokenizer = tokenizer
        self._tags = _Tags.of(dialect)
        self._vocab = _Vocab.of(tokenizer, vocab_size or tokenizer.vocab_size, self._tags.parameter_end)
        self._thinking = thinking
        self._max_value_tokens = max_value_tokens
        self._mode, self._tools = _resolve_choice(tools, tool_choice)
        self._json_masks: dict[tuple[ValueNode, Hashable], np.ndarray] = {}
        self._forced: dict[str, list[int]] = {}
        self._seen = ""  # the text of the last call
        self._machine: _Machine | None = None

    @property
    def done(self) -> bool:
        """The block's closing tag (``</｜DSML｜tool_calls>``) has been written: the engine stops here."""
        return self._machine is not None and self._machine.done

    def next(self, text: str) -> Step:
        """``Forced``, ``Allowed`` or ``None`` (unconstrained) for the step after ``text``."""
        if self._mode == "none":
            return None
        # A trailing U+FFFD may be a character still being written: wait for the rest.
        text = text.rstrip("\ufffd")
        if not text.startswith(self._seen):
            self._machine = None  # the turn was restarted: read it again
            self._seen = ""
        if self._machine is None:
            self._machine = self._start(text)
        else:
            self._machine.feed(text[len(self._seen) :])
        self._seen = text
        return None if self._machine is None else self._decide(self._machine)

    # ---------------------------------------------------------------- where the block starts

    def _start(self, text: str) -> _Machine | None:
        """A machine fed with the block written so far, or None while no block has begun."""
        if self._mode == "required":
            if self._thinking and THINK_END not in text:
                return None
            return _Machine(self._grammar(self._tags.start))
        # auto: look for a tag opening in the text that is new since the last call.
        first = max(0, len(self._seen) - len(self._tags.start))
        at = text.find("<", first)
        while at >= 0:
            tail = text[at:]
            for opening in (self._tags.start, self._tags.start.replace("｜", "|")):
                begun = len(tail) >= _MIN_TRIGGER and opening.startswith(tail)
                if (begun or tail.startswith(opening)) and self._visible(text, at):
                    machine = _Machine(self._grammar(opening))
                    machine.feed(tail)
                    return machine
            at = text.find("<", at + 1)
        return None

    def _visible(self, text: str, at: int) -> bool:
        """Whether ``text[at]`` lies outside ``<think>…</think>`` (DSML there is reasoning)."""
        head = text[:at]
        closed = head.rfind(THINK_END)
        if self._thinking and closed < 0:
            return False
        return head.rfind(THINK_START) <= closed

    def _grammar(self, opening: str) -> Iterator[_Part]:
        return _block(opening, self._tools, self._tags, fullwidth_bar=self._vocab.writes_fullwidth_bar)

    # ---------------------------------------------------------------- the next step

    def _decide(self, m: _Machine) -> Step:
        if m.broken or m.done:
            return None
        if not m.literal:
            mask = self._mask(m)
            if mask is not None:
                return Allowed(mask)
        return self._force(m.literal)

    def _mask(self, m: _Machine) -> np.ndarray | None:
        """The mask of the current choice or value; None after committing ``m`` to a literal."""
        vocab, expect = self._vocab, m.expect
        if isinstance(expect, _Choice):
            rests = [o[len(m.partial) :] for o in expect.options if o.startswith(m.partial)]
            mask = vocab.prefix_mask(rests)
            if mask is None:  # no whole token starts any option: write the first one
                m.commit(rests[0])
            return mask
        assert isinstance(expect, _Value)
        node = expect.node
        if m.steps >= self._max_value_tokens:
            m.commit("" if node is None else node.finish(m.state))
            return None
        if node is None:
            m.steps += 1
            return vocab.raw_more if m.partial else vocab.raw_first
        mask = self._json_mask(node, m.state)
        if not mask.any():
            m.commit(node.finish(m.state))
            return None
        m.steps += 1
        return mask

    def _json_mask(self, node: ValueNode, state: Hashable) -> np.ndarray:
        key = (node, state)
        mask = self._json_masks.get(key)
        if mask is None:
            if len(self._json_masks) >= _JSON_MASKS_KEPT:
                self._json_masks.clear()
            mask = self._json_masks[key] = self._vocab.json_mask(node, state)
        return mask

    def _force(self, text: str) -> Forced:
        ids = self._forced.get(text)
        if ids is None:
            ids = self._tokenizer.encode(text)
            if self._tokenizer.decode(ids) != text:
                raise DSMLError(
                    f"the vocabulary cannot write {text!r} exactly; rename the tool or "
                    "parameter to plain ASCII"
                )
            self._forced[text] = ids
        return Forced(list(ids), text)


def _resolve_choice(tools: Sequence[ToolSpec], tool_choice: Any) -> tuple[str, list[_ToolPlan]]:
    """The mode ("auto" | "required" | "none") and the tools a block may call."""
    plans = [_ToolPlan.of(spec) for spec in tools]
    if isinstance(tool_choice, dict):
        name = tool_choice.get("name")
        chosen = [p for p in plans if p.name == name]
        if not chosen:
            known = ", ".join(p.name for p in plans) or "none"
            raise ValueError(
                f"tool_choice names {name!r}, which is not a tool here (tools: {known})"
            )
        return "required", chosen
    if tool_choice not in ("auto", "required", "none"):
        raise ValueError(
            f'tool_choice must be "auto", "required", "none" or {{"name": TOOL}}, not {tool_choice!r}'
        )
    return (tool_choice if plans else "none"), plans


# ---------------------------------------------------------------------------- block grammar


@dataclass(frozen=True, slots=True)
class _Choice:
    """One of ``options`` (prefix-free strings) comes next; the grammar receives the one written.

    ``targets``, if given, maps each option to what it means: spellings of one meaning are
    settled as soon as the meaning is, in the first spelling still possible.
    """

    options: tuple[str, ...]
    targets: tuple[int, ...] = ()

    def settled(self, written: str) -> str | None:
        """The option ``written`` has settled on (the first alive spelling), if any."""
        alive = [i for i, o in enumerate(self.options) if o.startswith(written)]
        meanings = {self.targets[i] if self.targets else i for i in alive}
        return self.options[alive[0]] if len(meanings) == 1 else None


@dataclass(frozen=True, slots=True)
class _Value:
    """A parameter value: raw text (``node is None``) or JSON matched by ``node``; ends at ``<``."""

    node: ValueNode | None


_Part = str | _Choice | _Value  # a str is literal text


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    required: bool
    string: bool
    options: tuple[str, ...] | None  # the written forms of a fixed set of values
    node: ValueNode | None  # JSON grammar of a string="false" value without fixed options

    def opening(self, tags: _Tags) -> str:
        return f'{tags.parameter} name="{self.name}" string="{"true" if self.string else "false"}">'

    @classmethod
    def of(cls, name: str, schema: Any, required: bool) -> _Param:
        fixed = fixed_values(schema)
        if fixed is not None:
            if all(isinstance(v, str) for v in fixed):
                return cls(name, required, True, tuple(dict.fromkeys(fixed)), None)
            texts = (json.dumps(v, ensure_ascii=False) for v in fixed)
            return cls(name, required, False, tuple(dict.fromkeys(texts)), None)
        if admits_string(schema):
            return cls(name, required, True, None, None)
        return cls(name, required, False, None, json_node(schema))


@dataclass(frozen=True, slots=True)
class _ToolPlan:
    name: str
    params: tuple[_Param, ...]

    @classmethod
    def of(cls, spec: ToolSpec) -> _ToolPlan:
        properties = spec.parameters.get("properties") or {}
        required = set(spec.parameters.get("required") or ())
        return cls(spec.name, tuple(_Param.of(n, s, n in required) for n, s in properties.items()))


@dataclass(frozen=True, slots=True)
class _Tags:
    """A dialect's tags as the block grammar writes them."""

    start: str
    end: str
    invoke: str  # the opening's start, before its name attribute
    invoke_end: str
    parameter: str
    parameter_end: str

    @classmethod
    def of(cls, d: Dialect) -> _Tags:
        return cls(f"<{DSML}{d.block}>", f"</{DSML}{d.block}>", f"<{DSML}{d.invoke}",
                   f"</{DSML}{d.invoke}>", f"<{DSML}{d.parameter}", f"</{DSML}{d.parameter}>")  # fmt: skip


def _block(opening: str, tools: Sequence[_ToolPlan], tags: _Tags, *, fullwidth_bar: bool) -> Iterator[_Part]:
    """The parts of one tool-call block, in order; choices are sent back as written."""
    yield f'{opening}\n{tags.invoke} name="'
    by_option = {f'{t.name}">': t for t in tools}
    tool = by_option[(yield _Choice(tuple(by_option)))]
    yield "\n"
    params = tool.params
    i = 0
    while True:
        # Next: any optional parameter up to and including the next required one, or the
        # end of the invoke once no required parameter is left.
        ahead = params[i:]
        required = next((k for k, p in enumerate(ahead) if p.required), None)
        reachable = ahead if required is None else ahead[: required + 1]
        targets = [(p.opening(tags), i + k) for k, p in enumerate(reachable)]
        if required is None:
            targets.append((tags.invoke_end, len(params)))
        if not fullwidth_bar and len(targets) > 1:
            targets += [(tag.replace("｜", "|"), k) for tag, k in targets]
        picked = yield _Choice(tuple(t for t, _ in targets), tuple(k for _, k in targets))
        j = dict(targets)[picked]
        if j == len(params):
            break
        param = params[j]
        if param.options is not None:
            yield _Choice(tuple(v + tags.parameter_end for v in param.options))
        else:
            yield _Value(param.node)
            yield tags.parameter_end
        yield "\n"
        i = j + 1
    yield "\n" + tags.end


class _Machine:
    """Follows the text of one block through the grammar.

    ``literal`` is fixed text that must come next (consecutive literals, settled choices and
    the prefix all options of a choice share, merged); after it comes ``expect``: a choice
    (``partial``: the part of it written or forced so far), a value (``partial``: raw text so
    far, ``state``: its JSON state, ``steps``: tokens sampled for it), or None at the end.
    """

    def __init__(self, grammar: Iterator[_Part]) -> None:
        self._grammar = grammar
        self.literal = ""
        self.expect: _Choice | _Value | None = None
        self.partial = ""
        self.state: Hashable = None
        self.steps = 0
        self.broken = False
        self._pull(None)

    @property
    def done(self) -> bool:
        return not self.broken and not self.literal and self.expect is None

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text) and not self.broken and not self.done:
            ch = text[i]
            if self.literal:
                self.broken = ch != self.literal[0]
                self.literal = self.literal[1:]
            elif isinstance(self.expect, _Choice):
                self._choose(ch)
            elif self._ends_value(ch):
                self._pull(None)
                continue  # the "<" begins the closing tag, now the literal
            elif self.expect.node is None:
                self.partial += ch
            else:
                self.state = self.expect.node.step(self.state, ch)
                self.broken = self.state is None
            i += 1

    def commit(self, text: str) -> None:
        """Finish the current choice or value with ``text``, which becomes literal."""
        chosen = self.partial + text if isinstance(self.expect, _Choice) else None
        self.literal += text
        self._pull(chosen)

    def _choose(self, ch: str) -> None:
        self.partial += ch
        option = self.expect.settled(self.partial)
        if option is not None:  # determined: the rest is literal
            self.commit(option[len(self.partial) :])
        elif any(o.startswith(self.partial) for o in self.expect.options):
            self._force_common()
        else:
            self.broken = True

    def _force_common(self) -> None:
        """What all options still possible have in common comes next: make it literal."""
        rests = [o[len(self.partial) :] for o in self.expect.options if o.startswith(self.partial)]
        common = os.path.commonprefix(rests)
        self.partial += common
        self.literal += common

    def _ends_value(self, ch: str) -> bool:
        if ch != "<":
            return False
        node = self.expect.node
        return node is None or node.accepting(self.state)

    def _pull(self, sent: str | None) -> None:
        """Advance the grammar to its next choice or value, merging literals on the way."""
        while True:
            try:
                part = self._grammar.send(sent)
            except StopIteration:
                self.expect = None
                return
            sent = None
            if isinstance(part, str):
                self.literal += part
            elif isinstance(part, _Choice) and (settled := part.settled("")) is not None:
                self.literal += settled
                sent = settled
            else:
                self.expect, self.partial, self.steps = part, "", 0
                if isinstance(part, _Choice):
                    self._force_common()
                elif part.node is not None:
                    self.state = part.node.start()
                return


# ---------------------------------------------------------------------------- vocabulary


class _Vocab:
    """Token texts of one tokenizer and the masks that depend on them alone (built once)."""

    @classmethod
    def of(cls, tokenizer: Any, size: int, parameter_end: str) -> _Vocab:
        kept = _VOCABS.setdefault(tokenizer, {})
        vocab = kept.get((size, parameter_end))
        if vocab is None:
            vocab = kept[size, parameter_end] = cls(tokenizer, size, parameter_end)
        return vocab

    def __init__(self, tokenizer: Any, size: int, parameter_end: str) -> None:
        """``parameter_end``: the dialect's closing parameter tag, which ends a value."""
        n = self.size = size
        self.parameter_end = parameter_end
        texts = [tokenizer.token_bytes(i).decode("utf-8", errors="replace") for i in range(n)]
        usable = np.ones(n, dtype=bool)
        for text, i in tokenizer.special_ids.items():
            # A user-defined token is text the tokenizer itself writes; a control token is not.
            if i < n:
                usable[i] = tokenizer.encode(text) == [i]
        self.by_text: dict[str, list[int]] = {}
        raw_body, raw_close, raw_close_after = (np.zeros(n, dtype=bool) for _ in range(3))
        json_breaking: list[int] = []  # tokens with '"' or '\\': they may leave a JSON string
        # Where the tail of a token that a string body keeps inside it (nothing of '"', '\\',
        # '<' or a control character) begins.
        self._inert_from = [0] * n
        buckets: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            if not t or "\ufffd" in t:
                usable[i] = False
            if not usable[i]:
                continue
            self.by_text.setdefault(t, []).append(i)
            cut = t.find("<")
            head = t if cut < 0 else t[:cut]
            if "\n" not in head and "\r" not in head:
                if cut < 0:
                    raw_body[i] = True
                elif parameter_end.startswith(t[cut:]):
                    raw_close[i] = True
                    raw_close_after[i] = cut > 0
            if '"' in t or "\\" in t:
                json_breaking.append(i)
            self._inert_from[i] = max(
                (k + 1 for k, c in enumerate(t) if c in '"\\<' or c < " "), default=0
            )
            buckets.setdefault(_bucket_key(t), []).append(i)
        self.texts = texts
        self.writes_fullwidth_bar = any(t.startswith("｜") for t in self.by_text)
        self.raw_first = _frozen(raw_body | raw_close_after)  # a raw value is not empty
        self.raw_more = _frozen(raw_body | raw_close)
        self._json_inert = usable & (np.array(self._inert_from) == 0)
        self._json_breaking = np.array(json_breaking, dtype=np.int64)
        # Tokens by the first characters of their text (_bucket_key), and those keys as a trie.
        self._buckets = {key: np.array(ids, dtype=np.int64) for key, ids in buckets.items()}
        self._next_chars: dict[str, set[str]] = {}
        for key in self._buckets:
            for k in range(len(key)):
                self._next_chars.setdefault(key[:k], set()).add(key[k])

    def prefix_mask(self, rests: Sequence[str]) -> np.ndarray | None:
        """Tokens whose text is a prefix of one of ``rests``; None if there is none."""
        ids = [i for r in rests for k in range(1, len(r) + 1) for i in self.by_text.get(r[:k], ())]
        if not ids:
            return None
        mask = np.zeros(self.size, dtype=bool)
        mask[ids] = True
        return _frozen(mask)

    def json_mask(self, node: ValueNode, state: Hashable) -> np.ndarray:
        """Tokens that keep a JSON value matched by ``node`` from ``state`` on track; a "<"
        is admitted where the value is complete, followed by a prefix of the closing tag."""
        mask = np.zeros(self.size, dtype=bool)
        if node.in_string(state):
            mask |= self._json_inert  # text without '"', '\\', '<' or controls stays inside
            candidates = self._json_breaking
        else:
            candidates = self._json_candidates(node, state)
        texts, inert_from = self.texts, self._inert_from
        end = self.parameter_end
        fits = [i for i in candidates.tolist() if _fits(node, state, texts[i], inert_from[i], end)]
        mask[fits] = True
        return _frozen(mask)

    def _json_candidates(self, node: ValueNode, state: Hashable) -> np.ndarray:
        """Tokens whose bucket key fits: a walk of the key trie, pruned where ``node`` rejects."""
        found: list[np.ndarray] = []
        walk: list[tuple[str, Hashable]] = [("", state)]
        while walk:
            prefix, at = walk.pop()
            if prefix in self._buckets:
                found.append(self._buckets[prefix])
            for c in self._next_chars.get(prefix, ()):
                if at is _CLOSING or c == "<" and node.accepting(at):
                    walk.append((prefix + c, _CLOSING))  # checked against the tag by _fits
                elif c != "<" and (after := node.step(at, c)) is not None:
                    walk.append((prefix + c, after))
        return np.concatenate(found) if found else _NONE


_VOCABS: weakref.WeakKeyDictionary[Any, dict[tuple[int, str], _Vocab]] = weakref.WeakKeyDictionary()
_NONE = np.zeros(0, dtype=np.int64)
_CLOSING = object()  # a trie walk past the "<" that ends a value
_KEY_CHARS = 3


def _bucket_key(text: str) -> str:
    """The first characters of a token's text, any non-ASCII one as "\\x80" (which, like every
    non-ASCII character, only a string body admits)."""
    return "".join(min("\x80", c) for c in text[:_KEY_CHARS])


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask.flags.writeable = False
    return mask


def _fits(node: ValueNode, state: Hashable, text: str, inert_from: int, parameter_end: str) -> bool:
    """Whether ``text`` continues the value from ``state`` (``text[inert_from:]`` has no
    '"', '\\', '<' or control character: inside a string body it changes nothing)."""
    for k, ch in enumerate(text):
        if k >= inert_from and node.in_string(state):
            return True
        if ch == "<" and node.accepting(state):
            return parameter_end.startswith(text[k:])
        state = node.step(state, ch)
        if state is None:
            return False
    return True
