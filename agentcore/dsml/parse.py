"""parse_completion: one completion split into content, reasoning and tool calls.

Parsing never raises. Problems go to ``ParsedCompletion.errors`` as sentences the model can
act on. A call comes only from an invoke the model finished writing; a cut-off block (or a
turn that stopped inside a tag) sets ``incomplete`` and yields no call at all, not even from
invokes that closed before the cut: the calls of a turn are one batch, and running part of
it would act on a plan the model never finished.

What an invoke may look like (real models write all of these; DSML.md):
- parameters, each ``string="true"`` (raw text, the default when the attribute is missing)
  or ``string="false"`` (JSON; if it is not JSON, read by the tool's schema, else raw);
- no ``</invoke>``: the next invoke or the block's end closes it;
- a JSON object instead of parameters;
- a single undeclared ``arguments`` or ``input`` parameter whose value is a JSON object
  wrapping the real arguments (unwrapped only when the tool's schema says so).
An invoke with a duplicate parameter or attribute, a missing name, stray text or an unknown
tag is not called; the error says why.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from agentcore.dsml.markup import BLOCK_NAMES, DIALECTS, DSML, V4, Dialect, Tag
from agentcore.dsml.stream import Block, Reasoning, StreamParser, Visible
from agentcore.messages import ToolCall, ToolSpec

_WRAPPERS = ("arguments", "input")


class ParsedCompletion(BaseModel):
    """One completion, split. ``errors`` are written for the model to read and correct."""

    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    incomplete: bool = False


def parse_completion(
    text: str,
    *,
    thinking: bool = False,
    tools: Sequence[ToolSpec] | None = None,
    ended: bool = False,
) -> ParsedCompletion:
    """Parse one completion. ``thinking``: the prompt ended with ``<think>``. ``tools``: the
    declared tools (bare invokes count as calls; their schemas read loose values).
    ``ended``: the model ended its turn (an EOS in ``text`` says so too)."""
    stream = StreamParser(thinking=thinking, tools=tools)
    events = stream.feed(text) + stream.close(ended=ended)
    return completion_of(stream, events, tools)


def completion_of(
    stream: StreamParser, events: Sequence[object], tools: Sequence[ToolSpec] | None
) -> ParsedCompletion:
    """The ParsedCompletion of a closed StreamParser and all the events it gave."""
    content = "".join(e.text for e in events if isinstance(e, Visible))
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    schemas = {t.name: t.parameters for t in tools or ()}
    calls: list[ToolCall] = []
    errors: list[str] = []
    for block in stream.blocks:
        _BlockReader(schemas, calls, errors).read(block)
    incomplete = stream.cut or any(not b.closed for b in stream.blocks)
    if incomplete:
        where = _cut_place(stream.blocks)
        errors.append(
            f"The output ended {where} before it was closed: the block is incomplete, so "
            f"none of this turn's calls were taken ({len(calls)} had closed). "
            f"Write the whole block: {_form(_dialect_of(stream.blocks))}"
        )
        calls = []
    return ParsedCompletion(
        content=content,
        reasoning=reasoning if stream.reasoned else None,
        tool_calls=calls,
        errors=errors,
        incomplete=incomplete,
    )


def _cut_place(blocks: Sequence[Block]) -> str:
    """Where an incomplete turn stopped, for the error: the invoke left open, if any."""
    open_blocks = [b for b in blocks if not b.closed]
    if not open_blocks:
        return "inside a DSML tag"
    name = None
    for token in open_blocks[-1].tokens:
        if isinstance(token, Tag) and token.name == "invoke":
            name = None if token.closing else token.attr("name") or "?"
    return f'inside invoke "{name}"' if name else "inside a tool-call block"


def _dialect_of(blocks: Sequence[Block]) -> Dialect:
    for block in blocks:
        first = block.tokens[0]
        if isinstance(first, Tag) and first.name in BLOCK_NAMES:
            return {"function_calls": DIALECTS["v3.2"], "calls": DIALECTS["v4.1"]}.get(
                first.name, V4
            )
    return V4


def _form(d: Dialect) -> str:
    """The correct form, quoted in errors so the model can copy it."""
    return (
        f'\n<{DSML}{d.block}>\n<{DSML}{d.invoke} name="TOOL">\n<{DSML}{d.parameter} '
        f'name="PARAM" string="true|false">VALUE</{DSML}{d.parameter}>\n'
        f"</{DSML}{d.invoke}>\n</{DSML}{d.block}>"
    )


@dataclass(slots=True)
class _Invoke:
    tag: Tag
    parameters: list[tuple[Tag, str]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


class _BlockReader:
    """Builds calls from one lexed block; one pass over its tokens."""

    def __init__(
        self, schemas: dict[str, dict[str, Any]], calls: list[ToolCall], errors: list[str]
    ) -> None:
        self._schemas, self._calls, self._errors = schemas, calls, errors
        self._invoke: _Invoke | None = None
        self._parameter: Tag | None = None
        self._value: list[str] = []
        self._block_faults: list[str] = []
        self._dialect = V4

    def read(self, block: Block) -> None:
        self._dialect = _dialect_of([block])
        gap: list[str] = []  # the stream cuts text between tags into pieces: rejoin them
        for i, token in enumerate(block.tokens):
            if not isinstance(token, Tag) and token[0] == "gap":
                gap.append(token[1])
                continue
            if gap:
                self._gap("".join(gap))
                gap = []
            if isinstance(token, Tag):
                self._tag(token, first=i == 0)
            else:
                self._value.append(token[1])
        if gap:
            self._gap("".join(gap))
        if self._invoke is not None and block.closed:
            self._finish()
        for fault in dict.fromkeys(self._block_faults):
            self._errors.append(f"In the tool-call block: {fault}. Write: {_form(self._dialect)}")

    def _gap(self, text: str) -> None:
        if not text.strip():
            return
        if self._invoke is not None:
            self._invoke.text.append(text)
        else:
            self._block_faults.append(f"stray text {_quote(text.strip())}")

    def _tag(self, tag: Tag, *, first: bool) -> None:
        if self._parameter is not None:  # the lexer ends a value only at its closing tag
            self._close_parameter()
            return
        if duplicates := tag.duplicate_attrs():
            self._fault(f"{_quote(tag.text)} gives the attribute {duplicates[0]!r} twice")
        if tag.name in BLOCK_NAMES:
            if tag.closing:
                if self._invoke is not None:
                    self._finish()
            elif not first:
                self._fault(f"{_quote(tag.text)} opens a block inside a block")
        elif tag.name == "invoke":
            if tag.closing and self._invoke is None:
                self._fault(f"{_quote(tag.text)} closes no invoke")
            if self._invoke is not None:
                self._finish()  # no </invoke>: the next invoke closes this one
            if tag.closing:
                return
            self._invoke = _Invoke(tag)
            if duplicates := tag.duplicate_attrs():
                self._invoke.faults.append(f"the attribute {duplicates[0]!r} is given twice")
        elif tag.name == "parameter":
            if tag.closing:
                self._fault(f"{_quote(tag.text)} closes no parameter")
            elif self._invoke is None:
                self._fault(f"{_quote(tag.text)} is outside any invoke")
                self._parameter, self._value = tag, []
            else:
                self._parameter, self._value = tag, []
        else:
            self._fault(f"unknown tag {_quote(tag.text)}")

    def _close_parameter(self) -> None:
        tag, value = self._parameter, "".join(self._value)
        assert tag is not None
        self._parameter, self._value = None, []
        if self._invoke is not None:
            self._invoke.parameters.append((tag, value))
            if tag.duplicate_attrs():
                self._invoke.faults.append(
                    f"{_quote(tag.text)} gives the attribute {tag.duplicate_attrs()[0]!r} twice"
                )

    def _fault(self, what: str) -> None:
        if self._invoke is not None:
            self._invoke.faults.append(what)
        else:
            self._block_faults.append(what)

    def _finish(self) -> None:
        invoke, self._invoke = self._invoke, None
        assert invoke is not None
        faults = list(dict.fromkeys(invoke.faults))
        name = invoke.tag.attr("name")
        if not name:
            faults.append('the invoke has no name attribute (write name="TOOL")')
        schema = self._schemas.get(name, {})
        arguments: dict[str, Any] = {}
        for tag, value in invoke.parameters:
            pname = tag.attr("name")
            if not pname:
                faults.append('a parameter has no name attribute (write name="PARAM")')
            elif pname in arguments:
                faults.append(f'parameter "{pname}" is given twice')
            else:
                arguments[pname] = _value(tag, value, schema, pname)
        text = "".join(invoke.text).strip()
        if text:
            body = _json_object(text)
            if body is None or invoke.parameters:
                faults.append(f"stray text {_quote(text)} between tags")
            else:
                arguments = body
        if faults:
            label = f'invoke "{name}"' if name else "invoke"
            self._errors.append(
                f"{label} was not called: {'; '.join(faults)}. Write: {_form(self._dialect)}"
            )
            return
        arguments = _unwrapped(arguments, schema)
        index = len(self._calls)
        canonical = json.dumps([index, name, arguments], sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
        # Built from checked parts: model_construct skips a second validation (it is hot).
        self._calls.append(
            ToolCall.model_construct(id=f"call_{digest[:16]}", name=name, arguments=arguments)
        )


def _value(tag: Tag, raw: str, schema: dict[str, Any], name: str) -> Any:
    if tag.attr("string", "true").strip().lower() != "false":
        return raw
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        properties = schema.get("properties")
        return _lenient(raw, properties.get(name) if isinstance(properties, dict) else None)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _unwrapped(arguments: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``{"arguments": {...}}`` for a tool that declares no such parameter: the inner object."""
    properties = schema.get("properties")
    if not isinstance(properties, dict) or len(arguments) != 1:
        return arguments
    (key, value), = arguments.items()
    if key not in _WRAPPERS or key in properties:
        return arguments
    inner = _json_object(value) if isinstance(value, str) else value
    return inner if isinstance(inner, dict) else arguments


def _quote(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _lenient(raw: str, schema: Any) -> Any:
    """Read a non-JSON ``string="false"`` value by the type its schema declares, else raw."""
    text = raw.strip()
    for kind in _schema_types(schema):
        try:
            if kind == "integer":
                return int(text)
            if kind == "number" and math.isfinite(number := float(text)):
                return number
            if kind == "boolean" and text.lower() in ("true", "false"):
                return text.lower() == "true"
            if kind == "null" and text in ("None", "null", "NULL"):
                return None
            if kind in ("array", "object"):
                # Models often write Python literals ('a', True, None); JSON-normalise them.
                value = json.loads(json.dumps(ast.literal_eval(text)))
                if isinstance(value, list if kind == "array" else dict):
                    return value
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
    return raw


def _schema_types(schema: Any) -> list[str]:
    if not isinstance(schema, dict):
        return []
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else declared
    types = list(types) if isinstance(types, list) else []
    for key in ("anyOf", "oneOf"):
        if isinstance(alternatives := schema.get(key), list):
            types += [t for alternative in alternatives for t in _schema_types(alternative)]
    return types
