"""DSML codec: render tools, tool calls and tool results; parse completions, whole or streamed.

DSML (shared/DSML.md) is the XML-like markup DeepSeek V4 writes tool calls in. agentcore
teaches it to every model family, so this is the only tool-call parser.

Invariants
- Rendering is byte-exact to DeepSeek's encoder and deterministic (a changed byte in the
  prompt invalidates every cached prefix after it), and every rendered call parses back to
  the same names and arguments: the one string a raw value cannot hold, its own closing tag,
  is written as a JSON string. Only a name holding ``"<>`` or a non-JSON value raises.
- Parsing never raises. Problems go to ``ParsedCompletion.errors`` as sentences the model
  can act on; a call comes only from an invoke written completely and correctly.
- ``parse_completion`` runs ``StreamParser``'s state machine, so streamed ``Visible`` texts
  concatenate to exactly ``parse_completion(stream.text).content``, however the text is cut.

How a completion is split
- Generation ends at the first ``<｜end▁of▁sentence｜>``; anything after it is ignored.
- ``<think>``…``</think>`` is reasoning (``thinking=True``: the text starts inside it; if it
  never closes, all is reasoning). DSML in reasoning is never a call, so calls come only
  after the last ``</think>``. A ``</think>`` in visible text is dropped: a stream cannot
  take back what it showed. Inside a parameter value it is just part of the value.
- ``content`` is the visible text before the first DSML tag, kept exactly (a chat format
  re-renders it byte for byte) except the whitespace right before the block.
- The block ends at the first ``</｜DSML｜tool_calls>`` outside a parameter value. Text after
  it is ignored (engines stop there); only a second DSML block there is reported.
- A cut-off block sets ``incomplete`` and yields no call, not even from invokes that closed
  before the cut: the block is one batch, and running part of it would act on a plan the
  model never finished writing.

Values are raw text, not XML: the lexer cuts each value at its closing tag and keeps it out
of band; lxml sees only the tags. So nothing is unescaped or normalised (an XML parser turns
``\r\n`` into ``\n`` and rejects control characters, even inside CDATA).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from lxml import etree
from pydantic import BaseModel, Field

from agentcore.errors import DSMLError
from agentcore.messages import ToolCall, ToolMessage, ToolSpec

DSML = "｜DSML｜"
EOS = "<｜end▁of▁sentence｜>"
THINK_START = "<think>"
THINK_END = "</think>"
TOOL_CALLS_START = f"<{DSML}tool_calls>"
TOOL_CALLS_END = f"</{DSML}tool_calls>"
INVOKE_END = f"</{DSML}invoke>"
PARAMETER_END = f"</{DSML}parameter>"
TOOL_RESULT_START = "<tool_result>"
TOOL_RESULT_END = "</tool_result>"

# Tag openings as models write them: fullwidth or ASCII bars, sometimes without the first bar.
_TAG_STARTS = tuple(
    f"<{slash}{bar1}DSML{bar2}" for slash in ("", "/") for bar1 in ("｜", "|", "") for bar2 in "｜|"
)
_PARAMETER_ENDS = tuple(
    f"{start}{space}parameter>" for start in _TAG_STARTS[6:] for space in ("", " ")
)
_TAG_START = re.compile("|".join(map(re.escape, _TAG_STARTS)))
_PARAMETER_END = re.compile("|".join(map(re.escape, _PARAMETER_ENDS)))
# The optional space after the bar is V4.1's spelling (`<｜DSML｜ invoke`).
_TAG = re.compile(r"<(/?)[｜|]?DSML[｜|] ?(\w*)([^<>]*)>")
_TAG_STOP = re.compile("[<>]")
_ATTR = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
_VISIBLE_MARKER = re.compile(f"{THINK_START}|{THINK_END}|{_TAG_START.pattern}")
_VISIBLE_MARKERS = (THINK_START, THINK_END, *_TAG_STARTS)
# Each DSML element and the element it must sit directly in.
_PARENT = {"tool_calls": None, "invoke": "tool_calls", "parameter": "invoke"}

# The correct form, quoted in error messages so the model can copy it.
_FORM = (
    f'\n{TOOL_CALLS_START}\n<{DSML}invoke name="TOOL">\n<{DSML}parameter name="PARAM" '
    f'string="true|false">VALUE{PARAMETER_END}\n{INVOKE_END}\n{TOOL_CALLS_END}'
)

_TOOLS_TEMPLATE = """## Tools

You have access to a set of tools to help answer the user's question. \
You can invoke tools by writing a "<｜DSML｜tool_calls>" block like the following:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="$TOOL_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$TOOL_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜tool_calls>

String parameters should be specified as is and set `string="true"`. \
For all other types (numbers, booleans, arrays, objects), \
pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), \
you MUST output your complete reasoning inside <think>...</think> \
BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

{schemas}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls."""


# ---------------------------------------------------------------------------- rendering


def render_tools(specs: Sequence[ToolSpec]) -> str:
    """The tools block the system text is followed by (the caller joins them with "\\n\\n")."""
    schemas = "\n".join(json.dumps(s.function_object(), ensure_ascii=False) for s in specs)
    return _TOOLS_TEMPLATE.replace("{schemas}", schemas)


def render_tool_calls(calls: Sequence[ToolCall]) -> str:
    """The tool_calls block, with the "\\n\\n" that separates it from content; "" for no calls."""
    if not calls:
        return ""
    invokes = []
    for call in calls:
        parameters = [_render_parameter(call.name, k, v) for k, v in call.arguments.items()]
        opening = f'<{DSML}invoke name="{_attribute(call.name, "tool name")}">'
        invokes.append("\n".join([opening, *parameters, INVOKE_END]))
    return "\n\n" + "\n".join([TOOL_CALLS_START, *invokes, TOOL_CALLS_END])


def render_tool_result(content: str) -> str:
    # A literal closing tag would end the result early; ds4 neutralises it the same way.
    safe = content.replace(TOOL_RESULT_END, "&lt;/tool_result>")
    return f"{TOOL_RESULT_START}{safe}{TOOL_RESULT_END}"


def render_tool_results(results: Sequence[str | ToolMessage]) -> str:
    """All results of one assistant turn, in call order, as the text of one user turn."""
    return "\n\n".join(
        render_tool_result(r.content if isinstance(r, ToolMessage) else r) for r in results
    )


def _render_parameter(tool: str, name: str, value: Any) -> str:
    name = _attribute(name, "parameter name")
    if isinstance(value, str) and not _PARAMETER_END.search(value):
        return f'<{DSML}parameter name="{name}" string="true">{value}{PARAMETER_END}'
    try:
        body = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise DSMLError(f"{tool}.{name}: value is not JSON-serialisable ({exc})") from exc
    if _PARAMETER_END.search(body):
        # A raw value cannot hold its own closing tag, but JSON can: "<\/" is JSON for "</"
        # (and "<" only occurs inside JSON strings). So such a string goes as a JSON string.
        body = body.replace("</", "<\\/")
    return f'<{DSML}parameter name="{name}" string="false">{body}{PARAMETER_END}'


def _attribute(value: str, what: str) -> str:
    if any(c in value for c in '"<>'):
        raise DSMLError(f"{what} {value!r} cannot be written in DSML: it contains '\"', '<' or '>'")
    return value


# ---------------------------------------------------------------------------- streaming


@dataclass(frozen=True, slots=True)
class Visible:
    """Text the user may see; never DSML or think markup."""

    text: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallsStarted:
    """A DSML tag began in visible text; what follows is hidden until the block ends."""


@dataclass(frozen=True, slots=True)
class ToolCallsComplete:
    """``</｜DSML｜tool_calls>`` arrived: an engine may stop generating here."""


StreamEvent = Visible | Reasoning | ToolCallsStarted | ToolCallsComplete


@dataclass(slots=True)
class _Token:
    """One piece of a tool_calls block. kind: tag | body (parameter value) | gap | bad (tag)."""

    kind: str
    text: str
    closing: bool = False
    name: str = ""
    attrs: dict[str, str] = field(default_factory=dict)


class StreamParser:
    """Splits a completion into visible text, reasoning and the tool_calls block as it streams.

    Held back until disambiguated: a suffix that may begin a marker (``<think>``,
    ``</think>``, a DSML tag, the EOS text), and trailing whitespace of visible text, which
    is dropped if a block follows and released otherwise (at the latest by ``close()``).
    """

    def __init__(self, thinking: bool = False) -> None:
        self._chunks: list[str] = []
        self._eos_held = ""
        self._ended = False  # EOS seen: nothing after it is generation
        self._mode = "reasoning" if thinking else "visible"
        self._reasoned = thinking
        self._buffer = ""  # undecided text of the current mode
        self._in_parameter = False
        self._tokens: list[_Token] = []
        self._block_closed = False
        self._trailing: list[str] = []

    @property
    def text(self) -> str:
        """Everything fed so far, raw."""
        self._chunks[:] = ["".join(self._chunks)]
        return self._chunks[0]

    def feed(self, text: str) -> list[StreamEvent]:
        self._chunks.append(text)
        if self._ended:
            return []
        raw = self._eos_held + text
        cut = raw.find(EOS)
        if cut >= 0:
            self._ended, self._eos_held, raw = True, "", raw[:cut]
        else:
            hold = _held_from(raw, (EOS,))
            raw, self._eos_held = raw[:hold], raw[hold:]
        return self._advance(raw)

    def close(self) -> list[StreamEvent]:
        """Flush held text: the stream is over, so nothing held can still become a marker."""
        events = self._advance(self._eos_held)
        self._eos_held, rest, self._buffer = "", self._buffer, ""
        if rest and self._mode == "visible":
            events.append(Visible(rest))
        elif rest and self._mode == "reasoning":
            events.append(Reasoning(rest))
        return events

    def _advance(self, text: str) -> list[StreamEvent]:
        buf, events = self._buffer + text, []
        while buf:
            mode = self._mode
            if mode == "visible":
                rest = self._visible(buf, events)
            elif mode == "reasoning":
                rest = self._reasoning(buf, events)
            elif mode == "block":
                rest = self._block(buf, events)
            else:
                self._trailing.append(buf)
                rest = ""
            if len(rest) == len(buf) and mode == self._mode:
                break  # nothing more can be decided until more text arrives
            buf = rest
        self._buffer = buf
        return events

    def _visible(self, buf: str, events: list[StreamEvent]) -> str:
        m = _VISIBLE_MARKER.search(buf)
        if m is None:
            keep = _held_from(buf, _VISIBLE_MARKERS)
            text = buf[:keep].rstrip()
            if text:
                events.append(Visible(text))
            return buf[len(text) :]
        before = buf[: m.start()]
        if m.group() in (THINK_START, THINK_END):
            self._mode = "reasoning" if m.group() == THINK_START else "visible"
            self._reasoned |= self._mode == "reasoning"
        else:
            before = before.rstrip()
            self._mode = "block"
        if before:
            events.append(Visible(before))
        if self._mode == "block":
            events.append(ToolCallsStarted())
            return buf[m.start() :]
        return buf[m.end() :]

    def _reasoning(self, buf: str, events: list[StreamEvent]) -> str:
        end = buf.find(THINK_END)
        keep = _held_from(buf, (THINK_END,)) if end < 0 else end
        if keep:
            events.append(Reasoning(buf[:keep]))
        if end < 0:
            return buf[keep:]
        self._mode = "visible"
        return buf[end + len(THINK_END) :]

    def _block(self, buf: str, events: list[StreamEvent]) -> str:
        """Cut the block into tokens; a parameter value may hold anything but its closing tag."""
        if self._in_parameter:
            m = _PARAMETER_END.search(buf)
            if m is None:
                keep = _held_from(buf, _PARAMETER_ENDS)
                self._token("body", buf[:keep])
                return buf[keep:]
            self._token("body", buf[: m.start()])
            self._tokens.append(_Token("tag", m.group(), closing=True, name="parameter"))
            self._in_parameter = False
            return buf[m.end() :]
        m = _TAG_START.search(buf)
        if m is None:
            keep = _held_from(buf, _TAG_STARTS)
            self._token("gap", buf[:keep])
            return buf[keep:]
        self._token("gap", buf[: m.start()])
        stop = _TAG_STOP.search(buf, m.end())
        if stop is None:  # the tag is still being written
            return buf[m.start() :]
        tag = _TAG.match(buf, m.start())
        if tag is None:
            self._token("bad", buf[m.start() : stop.start()])
            return buf[stop.start() :]
        closing, name = bool(tag[1]), tag[2]
        attrs = dict(_ATTR.findall(tag[3]))
        self._tokens.append(_Token("tag", tag.group(), closing, name, attrs))
        if name == "parameter" and not closing:
            self._in_parameter = True
        elif name == "tool_calls" and closing:
            self._block_closed, self._mode = True, "after"
            events.append(ToolCallsComplete())
        return buf[tag.end() :]

    def _token(self, kind: str, text: str) -> None:
        if text:
            self._tokens.append(_Token(kind, text))


def _held_from(buf: str, markers: Iterable[str]) -> int:
    """Index of the suffix of `buf` that may still grow into one of `markers` (all start with <)."""
    start = buf.rfind("<")
    if start >= 0 and any(m.startswith(buf[start:]) for m in markers):
        return start
    return len(buf)


# ---------------------------------------------------------------------------- parsing


class ParsedCompletion(BaseModel):
    """One completion, split. ``errors`` are written for the model to read and correct."""

    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    incomplete: bool = False


def parse_completion(
    text: str, *, thinking: bool = False, tools: Sequence[ToolSpec] | None = None
) -> ParsedCompletion:
    """Parse one completion. ``thinking``: the prompt ended with ``<think>``. ``tools``: the
    schemas used to read ``string="false"`` values that are not valid JSON."""
    stream = StreamParser(thinking=thinking)
    events = stream.feed(text) + stream.close()
    content = "".join(e.text for e in events if isinstance(e, Visible))
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    reader = _BlockReader(tools or ())
    in_block = stream._mode in ("block", "after")
    if in_block:
        reader.read(stream._tokens, closed=stream._block_closed)
    if _TAG_START.search("".join(stream._trailing)):
        reader.errors.append(
            f"Text after {TOOL_CALLS_END} was ignored, including DSML tags: write all invokes "
            "inside one tool_calls block."
        )
    return ParsedCompletion(
        content=content,
        reasoning=reasoning if stream._reasoned else None,
        tool_calls=reader.calls,
        errors=reader.errors,
        incomplete=in_block and not stream._block_closed,
    )


class _BlockReader:
    """Builds calls from block tokens. lxml's pull parser checks the nesting and reports which
    elements closed; each element carries only an index into the tokens (its attribute ``i``)."""

    def __init__(self, tools: Sequence[ToolSpec]) -> None:
        self._schemas = {t.name: t.parameters for t in tools}
        self._xml = etree.XMLPullParser(events=("start", "end"))
        self._tags: list[_Token] = []
        self._open: list[Any] = []  # lxml elements, innermost last
        self._values: dict[int, str] = {}
        self._faults: dict[int, list[str]] = {}  # invoke index -> what is wrong inside it
        self.calls: list[ToolCall] = []
        self.errors: list[str] = []

    def read(self, tokens: list[_Token], *, closed: bool) -> None:
        for token in _joined(tokens):
            if not self._take(token):
                break
        if not closed:
            invokes = [e for e in self._open if e.tag == "invoke"]
            cut = f" inside {self._describe(invokes[-1])}" if invokes else ""
            self._stop(
                f"The output ended{cut} before {TOOL_CALLS_END}: the tool_calls block is "
                f"incomplete, so none of its calls were taken ({len(self.calls)} had closed)."
            )
            self.calls.clear()

    def _take(self, token: _Token) -> bool:
        """Consume one token; False once the structure is too broken to read further."""
        if token.kind == "body":
            self._values[int(self._open[-1].get("i"))] = token.text
        elif token.kind == "gap" and token.text.strip():
            self._fault(f"stray text {_quote(token.text.strip())} between tags")
        elif token.kind == "bad":
            self._fault(f"malformed tag {_quote(token.text)}")
        elif token.kind == "tag":
            if token.name not in _PARENT:
                self._fault(f"unknown tag {_quote(token.text)}")
            elif not self._tags and (token.closing or token.name != "tool_calls"):
                self.errors.append(
                    f"A tool_calls block must start with {TOOL_CALLS_START}, not "
                    f"{_quote(token.text)}. Write: {_FORM}"
                )
                return False
            else:
                return self._feed_xml(token)
        return True

    def _feed_xml(self, token: _Token) -> bool:
        self._tags.append(token)
        markup = (
            f"</{token.name}>" if token.closing else f'<{token.name} i="{len(self._tags) - 1}">'
        )
        try:
            self._xml.feed(markup)
        except etree.XMLSyntaxError:
            inner = self._open[-1]
            self._stop(
                f"Unexpected {_quote(token.text)} while {self._describe(inner)} was still open: "
                f"close it with </{DSML}{inner.tag}> first. The rest of the block was not read."
            )
            return False
        for event, element in self._xml.read_events():
            if event == "start":
                self._start(element)
                self._open.append(element)
            else:
                self._open.pop()
                if element.tag == "invoke":
                    self._finish_invoke(element)
        return True

    def _start(self, element: Any) -> None:
        parent = self._open[-1].tag if self._open else None
        if parent != _PARENT[element.tag]:
            where = f"inside {self._describe(self._open[-1])}" if self._open else "at the top"
            self._fault(f"{_quote(self._tag(element).text)} is not allowed {where}")

    def _finish_invoke(self, invoke: Any) -> None:
        faults = self._faults.pop(int(invoke.get("i")), [])
        if invoke.getparent().tag != "tool_calls":
            return  # reported, and charged to the enclosing invoke, when it was opened
        name = self._tag(invoke).attrs.get("name", "")
        if not name:
            faults.append('the invoke has no name attribute (write name="TOOL")')
        arguments: dict[str, Any] = {}
        for parameter in invoke.iterchildren("parameter"):
            pname = self._tag(parameter).attrs.get("name", "")
            if not pname:
                faults.append('a parameter has no name attribute (write name="PARAM")')
            elif pname in arguments:
                faults.append(f'parameter "{pname}" is given twice')
            else:
                arguments[pname] = self._value(name, pname, parameter)
        if faults:
            self.errors.append(
                f"{self._describe(invoke)} was not called: {'; '.join(faults)}. Write: {_FORM}"
            )
            return
        index = len(self.calls)
        canonical = json.dumps([index, name, arguments], sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
        self.calls.append(ToolCall(id=f"call_{digest[:16]}", name=name, arguments=arguments))

    def _value(self, tool: str, name: str, parameter: Any) -> Any:
        tag = self._tag(parameter)
        raw = self._values.get(int(parameter.get("i")), "")
        if tag.attrs.get("string", "true").strip().lower() != "false":
            return raw
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            properties = self._schemas.get(tool, {}).get("properties")
            schema = properties.get(name) if isinstance(properties, dict) else None
            return _lenient(raw, schema)

    def _stop(self, message: str) -> None:
        """Reading ends with invokes still open: report what was wrong inside them, then why."""
        for invoke in self._open:
            if faults := self._faults.pop(int(invoke.get("i")), None):
                self.errors.append(f"{self._describe(invoke)}: {'; '.join(faults)}.")
        self.errors.append(message)

    def _fault(self, what: str) -> None:
        """Charge a problem to the innermost open invoke (so it is not called), else the block."""
        invokes = [e for e in self._open if e.tag == "invoke"]
        if invokes:
            self._faults.setdefault(int(invokes[-1].get("i")), []).append(what)
        else:
            self.errors.append(f"In the tool_calls block: {what}. Write: {_FORM}")

    def _tag(self, element: Any) -> _Token:
        return self._tags[int(element.get("i"))]

    def _describe(self, element: Any) -> str:
        name = self._tag(element).attrs.get("name")
        return f'{element.tag} "{name}"' if name else element.tag


def _joined(tokens: list[_Token]) -> Iterator[_Token]:
    """The tokens with each run of value or gap pieces (the stream cuts them up) joined."""
    for kind, group in groupby(tokens, key=lambda t: t.kind):
        if kind == "tag":
            yield from group
        else:
            yield _Token(kind, "".join(t.text for t in group))


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
