"""Rendering: the tools block, tool-call blocks and tool results, byte-exact to DeepSeek's
encoders (``encoding_dsv4.py`` for V4, ``encoding/encoding.py`` of V4.1).

Deterministic: a changed byte in the prompt invalidates every cached prefix after it. Every
rendered call parses back to the same names and arguments. One deliberate deviation from
the encoders: a string value holding its own closing tag is written as a JSON string
(``string="false"``, ``<\\/`` for ``</``), where the encoders write it raw and so produce a
block their own parsers cut short. A name holding ``"<>`` or a value JSON cannot hold
raises DSMLError.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agentcore.dsml.markup import (
    DSML,
    PARAMETER_CLOSE,
    TOOL_RESULT_END,
    TOOL_RESULT_START,
    V4,
    V41,
    Dialect,
)
from agentcore.errors import DSMLError
from agentcore.messages import ToolCall, ToolMessage, ToolSpec

_TOOLS_TEMPLATE = """## Tools

You have access to a set of tools to help answer the user's question. \
You can invoke tools by writing a "<{D}{block}>" block like the following:

<{D}{block}>
<{D}{invoke} name="$TOOL_NAME">
<{D}{parameter} name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{D}{parameter}>
...
</{D}{invoke}>
<{D}{invoke} name="$TOOL_NAME2">
...
</{D}{invoke}>
</{D}{block}>

String parameters should be specified as is and set `string="true"`. \
For all other types (numbers, booleans, arrays, objects), \
pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), \
you MUST output your complete reasoning inside <think>...</think> \
BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

{schemas}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
"""


def _check_renderable(dialect: Dialect) -> None:
    if dialect not in (V4, V41):
        raise DSMLError(f"rendering supports the V4 and V4.1 dialects, not {dialect.name}")


def render_tools(specs: Sequence[ToolSpec], dialect: Dialect = V4) -> str:
    """The tools block, ending in a newline; the system text and it are joined by "\\n\\n"."""
    _check_renderable(dialect)
    schemas = "\n".join(json.dumps(s.function_object(), ensure_ascii=False) for s in specs)
    names = {"D": DSML, "block": dialect.block, "invoke": dialect.invoke}
    names["parameter"] = dialect.parameter
    text = _TOOLS_TEMPLATE
    for key, value in names.items():
        text = text.replace("{" + key + "}", value)
    return text.replace("{schemas}", schemas)


def render_tool_calls(calls: Sequence[ToolCall], dialect: Dialect = V4) -> str:
    """The tool-call block, with the "\\n\\n" that separates it from content; "" for no calls."""
    _check_renderable(dialect)
    if not calls:
        return ""
    invokes = []
    for call in calls:
        parameters = "\n".join(
            _render_parameter(call.name, k, v, dialect) for k, v in call.arguments.items()
        )
        name = _attribute(call.name, "tool name")
        invokes.append(
            f'<{DSML}{dialect.invoke} name="{name}">\n{parameters}\n</{DSML}{dialect.invoke}>'
        )
    body = "\n".join(invokes)
    return f"\n\n<{DSML}{dialect.block}>\n{body}\n</{DSML}{dialect.block}>"


def render_tool_result(content: str) -> str:
    # A literal closing tag would end the result early; ds4 neutralises it the same way.
    safe = content.replace(TOOL_RESULT_END, "&lt;/tool_result>")
    return f"{TOOL_RESULT_START}{safe}{TOOL_RESULT_END}"


def render_tool_results(results: Sequence[str | ToolMessage]) -> str:
    """All results of one assistant turn, in call order, as the text of one user turn."""
    return "\n\n".join(
        render_tool_result(r.content if isinstance(r, ToolMessage) else r) for r in results
    )


def _render_parameter(tool: str, name: str, value: Any, dialect: Dialect) -> str:
    name = _attribute(name, "parameter name")
    opening = f'<{DSML}{dialect.parameter} name="{name}"'
    closing = f"</{DSML}{dialect.parameter}>"
    if isinstance(value, str) and not PARAMETER_CLOSE.search(value):
        return f'{opening} string="true">{value}{closing}'
    try:
        body = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise DSMLError(f"{tool}.{name}: value is not JSON-serialisable ({exc})") from exc
    if PARAMETER_CLOSE.search(body):
        # "<\/" is JSON for "</", and "<" only occurs inside JSON strings.
        body = body.replace("</", "<\\/")
    return f'{opening} string="false">{body}{closing}'


def _attribute(value: str, what: str) -> str:
    if any(c in value for c in '"<>'):
        raise DSMLError(f"{what} {value!r} cannot be written in DSML: it contains '\"', '<' or '>'")
    return value
