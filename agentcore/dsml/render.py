"""Rendering: the tools block, tool-call blocks and tool results, byte-exact to DeepSeek's
encoders (``encoding_dsv32.py`` for V3.2, ``encoding_dsv4.py`` for V4, ``encoding/encoding.py``
of V4.1).

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
    V32,
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


# V3.2's tools block (encoding_dsv32.py's TOOLS_SYSTEM_TEMPLATE): its own wording, the schemas
# inside <functions>, and the example of a thinking block after <function_results>.
_TOOLS_TEMPLATE_V32 = """## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<{D}function_calls>" block like the following as part of your reply to the user:
<{D}function_calls>
<{D}invoke name="$FUNCTION_NAME">
<{D}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{D}parameter>
...
</{D}invoke>
<{D}invoke name="$FUNCTION_NAME2">
...
</{D}invoke>
</{D}function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, \
while lists and objects should use JSON format. The "string" attribute should be set to "true" \
for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider \
outputting a thinking block. Here is an example:

<{D}function_calls>
...
</{D}function_calls>

<function_results>
...
</function_results>

<think>...thinking about results</think>

Here are the functions available in JSONSchema format:
<functions>
{schemas}
</functions>
"""

FUNCTION_RESULTS_START = "<function_results>"
FUNCTION_RESULTS_END = "</function_results>"
RESULT_END = "</result>"


def _check_renderable(dialect: Dialect) -> None:
    if dialect not in (V32, V4, V41):
        raise DSMLError(f"rendering supports the V3.2, V4 and V4.1 dialects, not {dialect.name}")


def render_tools(specs: Sequence[ToolSpec], dialect: Dialect = V4) -> str:
    """The tools block, ending in a newline; the system text and it are joined by "\\n\\n"."""
    _check_renderable(dialect)
    schemas = "\n".join(json.dumps(s.function_object(), ensure_ascii=False) for s in specs)
    if dialect is V32:
        return _TOOLS_TEMPLATE_V32.replace("{D}", DSML).replace("{schemas}", schemas)
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


def render_function_result(content: str) -> str:
    """One V3.2 result, ``\\n<result>…</result>``, as it follows ``<function_results>`` or the
    result before it. A literal ``</result>`` inside is written ``&lt;/result>`` (the encoder
    writes it raw, which ends the result early), as V4's ``</tool_result>`` is."""
    return f"\n<result>{content.replace(RESULT_END, '&lt;/result>')}{RESULT_END}"


def render_function_results(results: Sequence[str | ToolMessage]) -> str:
    """All results of one V3.2 assistant turn, in call order: the ``<function_results>`` block
    with the "\\n\\n" that separates it from the turn's end."""
    body = "".join(render_function_result(r.content if isinstance(r, ToolMessage) else r) for r in results)
    return f"\n\n{FUNCTION_RESULTS_START}{body}\n{FUNCTION_RESULTS_END}"


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
