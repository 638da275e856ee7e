"""DSML codec: render tools, tool calls and tool results; parse completions, whole or streamed.

DSML (shared/DSML.md) is the XML-like markup DeepSeek models write tool calls in. agentcore
teaches it to every model family, so this is the only tool-call parser. It reads all three
dialects (V3.2 ``function_calls``, V4 ``tool_calls``, V4.1 ``<｜DSML｜ calls>``) and renders
them (V3.2's results as a ``<function_results>`` block: ``render_function_results``).

Invariants (tested)
- Rendering is byte-exact to DeepSeek's encoders (golden fixtures in tests/data/dsml/) and
  deterministic; every rendered call parses back to the same names and arguments.
- Parsing never raises, never invents a call, and never drops text that is not markup.
- ``parse_completion`` runs ``StreamParser``, so streamed ``Visible`` texts concatenate to
  ``parse_completion(text).content`` however the text is cut; both run in linear time.
"""

from agentcore.dsml.markup import (
    DIALECTS,
    DSML,
    EOS,
    INVOKE_END,
    PARAMETER_END,
    THINK_END,
    THINK_START,
    TOOL_CALLS_END,
    TOOL_CALLS_START,
    TOOL_RESULT_END,
    TOOL_RESULT_START,
    V4,
    V32,
    V41,
    Dialect,
)
from agentcore.dsml.parse import ParsedCompletion, completion_of, parse_completion
from agentcore.dsml.render import (
    FUNCTION_RESULTS_END,
    FUNCTION_RESULTS_START,
    render_function_result,
    render_function_results,
    render_tool_calls,
    render_tool_result,
    render_tool_results,
    render_tools,
)
from agentcore.dsml.stream import (
    Reasoning,
    StreamEvent,
    StreamParser,
    ToolCallsComplete,
    ToolCallsStarted,
    Visible,
)

__all__ = [
    "DIALECTS",
    "DSML",
    "EOS",
    "FUNCTION_RESULTS_END",
    "FUNCTION_RESULTS_START",
    "INVOKE_END",
    "PARAMETER_END",
    "THINK_END",
    "THINK_START",
    "TOOL_CALLS_END",
    "TOOL_CALLS_START",
    "TOOL_RESULT_END",
    "TOOL_RESULT_START",
    "V4",
    "V32",
    "V41",
    "Dialect",
    "ParsedCompletion",
    "Reasoning",
    "StreamEvent",
    "StreamParser",
    "ToolCallsComplete",
    "ToolCallsStarted",
    "Visible",
    "completion_of",
    "parse_completion",
    "render_function_result",
    "render_function_results",
    "render_tool_calls",
    "render_tool_result",
    "render_tool_results",
    "render_tools",
]
