"""Peer cases: the model outputs of vLLM's DeepSeek tool-parser tests, run through ours.

Source (vllm-project/vllm, read for this port):
- tests/tool_parsers/test_deepseekv32_tool_parser.py at 00816550e740a13736f7ef9921097d51a3f01ede
  (DeepSeekV32EngineToolParser: V3.2 ``<｜DSML｜function_calls>`` blocks);
- tests/tool_parsers/test_deepseekv4_tool_parser.py at 023f36c62e71a247a9bacb7eb4cea5d55505cb63
  (DeepSeekV4ToolParser: V4 ``<｜DSML｜tool_calls>`` blocks).
The input strings and the expected names and arguments are vLLM's; the structure is ours.
Not ported (no counterpart here): parser registration, xgrammar structural tags, and the
request adjustment (``skip_special_tokens``); the parsing half of that last test is ported.

What we expect of our parser (shared/DSML.md), and where it differs from vLLM on purpose:
- ``parse_completion(text, tools=..., ended=True)`` gives each call's name and arguments with
  their JSON types; a StreamParser fed the same text in any chunks gives the same
  ParsedCompletion (``completion_of``), and its Visible text never carries markup.
- ``string="true"`` values are raw strings, whatever the schema says; ``string="false"``
  values are JSON, and only a value that is not JSON is read by the schema (vLLM's engine
  coerces both by the schema).
- Whitespace between the content and the block is markup, not content; no content is ``""``
  (vLLM keeps the trailing space and gives ``None``).
- One parser reads every dialect (vLLM's V4 parser rejects V3.2's ``function_calls``).
- Calls come out only when their block is complete: a cut-off block is ``incomplete`` with no
  calls, and a stream gives no partial arguments (vLLM streams argument fragments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from agentcore.dsml import (
    StreamParser,
    ToolCallsComplete,
    ToolCallsStarted,
    Visible,
    completion_of,
    parse_completion,
)
from agentcore.messages import ToolSpec

# ---------------------------------------------------------------- building model outputs


def param(name: str, value: str, string: str = "true") -> str:
    return f'<｜DSML｜parameter name="{name}" string="{string}">{value}</｜DSML｜parameter>'


def invoke(name: str, *params: str, sep: str = "\n") -> str:
    """An invoke as vLLM's fixtures write it: parameters joined by ``sep``, then a newline."""
    body = sep.join(params) + "\n" if params else ""
    return f'<｜DSML｜invoke name="{name}">\n{body}</｜DSML｜invoke>'


def block(*invokes: str, kind: str = "function_calls") -> str:
    return f"<｜DSML｜{kind}>\n" + "\n".join(invokes) + f"\n</｜DSML｜{kind}>"


def v32_call(name: str, **params: str) -> str:
    """vLLM's V3.2 fixture shape: string parameters written back to back."""
    return block(invoke(name, *(param(k, v) for k, v in params.items()), sep=""))


def v4_call(name: str, **params: str) -> str:
    return block(invoke(name, *(param(k, v) for k, v in params.items())), kind="tool_calls")


def tool(name: str, **properties: Any) -> list[ToolSpec]:
    return [ToolSpec(name=name, parameters={"type": "object", "properties": properties})]


# ---------------------------------------------------------------- parsing and streaming


def typed(calls: list) -> str:
    """Names and arguments with their JSON types: "42" differs from 42, 5 from 5.0."""
    return json.dumps([[c.name, c.arguments] for c in calls], ensure_ascii=False)


def sized(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def by_line(text: str) -> list[str]:
    """vLLM's line-at-a-time stream: each chunk keeps its newline."""
    return text.splitlines(keepends=True)


def chunkings(text: str) -> dict[str, list[str]]:
    return {**{f"{n} chars": sized(text, n) for n in (1, 3, 5, 7, 10)}, "lines": by_line(text)}


def streamed(chunks: list[str], tools: list[ToolSpec] | None, *, ended: bool = True):
    parser = StreamParser(tools=tools)
    events = [e for chunk in chunks for e in parser.feed(chunk)]
    events += parser.close(ended=ended)
    return completion_of(parser, events, tools), events


def assert_streams_like_whole(text: str, tools: list[ToolSpec] | None, *, ended: bool = True):
    whole = parse_completion(text, tools=tools, ended=ended)
    for how, chunks in chunkings(text).items():
        parsed, events = streamed(chunks, tools, ended=ended)
        assert parsed == whole, how
        for event in events:
            if isinstance(event, Visible):
                assert "DSML" not in event.text, (how, event)
    return whole


# ---------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    vllm: str  # the vLLM tests whose model output this is
    text: str
    calls: list[tuple[str, dict[str, Any]]]
    content: str = ""
    tools: list[ToolSpec] | None = None


TOGGLE = block(invoke("toggle", param("enabled", "true", "false"), param("count", "42", "false")))
SET_TIMER = block(
    invoke(
        "set_timer",
        param("wait", '{"type":"for","minutes":2880}', "false"),
        param("patches", '[{"op":"replace","path":"/schedule","value":"quiet"}]', "false"),
    )
)
UPDATE = block(
    invoke("update", param("tags", '["a", "b"]', "false"), param("meta", '{"k": 1}', "false"))
)
TWO_WEATHERS = block(
    invoke("get_weather", param("location", "SF")), invoke("get_weather", param("location", "NYC"))
)
FUNC_A_B = block(invoke("func_a", param("p", "v1")), invoke("func_b", param("q", "v2")))
FN_A_B = block(invoke("fn_a", param("x", "1")), invoke("fn_b", param("y", "2")))
TOKYO = block(invoke("get_weather", param("location", "Tokyo")))
COERCE = block(
    invoke(
        "coerce",
        param("union_value", "hello", "false"),
        param("bad_int", "abc", "false"),
        param("nullable_string", "null", "false"),
        param("null_string", "null", "false"),
        param("whole_number", "3.0", "false"),
    )
)
COERCE_TOOLS = tool(
    "coerce",
    union_value={"type": ["null", "string"]},
    bad_int={"type": "integer"},
    nullable_string={"type": ["null", "string"]},
    null_string={"type": "string"},
    whole_number={"type": "number"},
)
LOCATION = tool("get_weather", location={"type": "string"})

CASES = [
    Case("plain text", "test_no_tool_call", "just some text", [], "just some text"),
    Case(
        "plain text, streamed", "test_plain_content_no_tool", "Hello, world!", [], "Hello, world!"
    ),
    Case(
        "no parameters",
        "test_single_tool_no_params, test_empty_arguments_streaming",
        block('<｜DSML｜invoke name="get_time">\n</｜DSML｜invoke>'),
        [("get_time", {})],
    ),
    Case(
        "two string parameters",
        "test_single_tool_with_params, test_streaming_matches_non_streaming",
        v32_call("get_weather", location="SF", date="2024-01-16"),
        [("get_weather", {"location": "SF", "date": "2024-01-16"})],
    ),
    Case(
        # vLLM keeps the trailing space; DSML.md's form is "{content}\n\n<block>": it is markup.
        "content before the call",
        "test_content_before_tool_call",
        "Sure, let me check! " + v32_call("get_weather", location="NYC"),
        [("get_weather", {"location": "NYC"})],
        "Sure, let me check!",
    ),
    Case(
        # vLLM's content is None; ours is a str, empty.
        "no content",
        "test_no_content_prefix_returns_none, test_no_marker_leak_chunked/char_by_char",
        v32_call("get_weather", location="NYC"),
        [("get_weather", {"location": "NYC"})],
    ),
    Case(
        "parallel calls of one tool",
        "test_multiple_tools",
        TWO_WEATHERS,
        [("get_weather", {"location": "SF"}), ("get_weather", {"location": "NYC"})],
    ),
    Case(
        "boolean and integer by JSON",
        "test_type_conversion_in_non_streaming, test_responses_function_tool_schema_in_streaming",
        TOGGLE,
        [("toggle", {"enabled": True, "count": 42})],
        tools=tool("toggle", enabled={"type": "boolean"}, count={"type": "integer"}),
    ),
    Case(
        "integer by JSON",
        "test_string_attr_false_allows_schema_conversion",
        block(invoke("score", param("value", "42", "false"))),
        [("score", {"value": 42})],
        tools=tool("score", value={"type": "integer"}),
    ),
    Case(
        "object and array under anyOf/oneOf",
        "test_composed_schema_converts_object_and_array_params, "
        "test_composed_schema_conversion_in_streaming",
        SET_TIMER,
        [
            (
                "set_timer",
                {
                    "wait": {"type": "for", "minutes": 2880},
                    "patches": [{"op": "replace", "path": "/schedule", "value": "quiet"}],
                },
            )
        ],
        tools=tool(
            "set_timer",
            wait={
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {"type": {"const": "until"}, "date": {"type": "string"}},
                    },
                    {
                        "type": "object",
                        "properties": {"type": {"const": "for"}, "minutes": {"type": "number"}},
                    },
                ]
            },
            patches={"oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
        ),
    ),
    Case(
        "an undeclared arguments wrapper",
        "test_arguments_wrapper_repaired",
        block(invoke("get_weather", param("arguments", '{"location":"Beijing"}', "false"))),
        [("get_weather", {"location": "Beijing"})],
        tools=LOCATION,
    ),
    Case(
        "an undeclared input wrapper, as a raw string",
        "test_input_wrapper_repaired",
        block(invoke("get_weather", param("input", '{"location":"Beijing"}'))),
        [("get_weather", {"location": "Beijing"})],
        tools=LOCATION,
    ),
    Case(
        "array and object by JSON",
        "test_object_and_array_params, test_object_and_array_params_streaming",
        UPDATE,
        [("update", {"tags": ["a", "b"], "meta": {"k": 1}})],
        tools=tool("update", tags={"type": "array"}, meta={"type": "object"}),
    ),
    Case(
        # vLLM turns 5.0 into the int 5; JSON 5.0 is a number either way, so we keep the float.
        "numbers",
        "test_number_param, test_number_param_streaming",
        block(invoke("measure", param("ratio", "3.14", "false"), param("whole", "5.0", "false"))),
        [("measure", {"ratio": 3.14, "whole": 5.0})],
        tools=tool("measure", ratio={"type": "number"}, whole={"type": "number"}),
    ),
    Case(
        "a type list; a non-JSON value stays raw",
        "test_multi_typed_schema, test_multi_typed_schema_streaming",
        block(invoke("set_val", param("count", "42", "false"), param("label", "hello", "false"))),
        [("set_val", {"count": 42, "label": "hello"})],
        tools=tool(
            "set_val", count={"type": ["integer", "null"]}, label={"type": ["string", "null"]}
        ),
    ),
    Case(
        "null in a type list",
        "test_multi_typed_null_value, test_multi_typed_null_streaming",
        block(invoke("clear", param("value", "null", "false"))),
        [("clear", {"value": None})],
        tools=tool("clear", value={"type": ["integer", "null"]}),
    ),
    Case(
        "no schema: JSON values",
        "test_no_schema_parses_json",
        block(invoke("unknown_fn", param("count", "42", "false"), param("flag", "true", "false"))),
        [("unknown_fn", {"count": 42, "flag": True})],
    ),
    Case(
        "one call, streamed",
        "test_single_tool_streaming, test_single_tool_chunked_stream_interval",
        v32_call("get_weather", location="SF"),
        [("get_weather", {"location": "SF"})],
    ),
    Case(
        "the name, streamed",
        "test_tool_name_emitted",
        v32_call("my_func", x="1"),
        [("my_func", {"x": "1"})],
    ),
    Case(
        "content before the call, streamed",
        "test_content_before_tool_call_streaming, test_content_before_tool_chunked",
        "Thinking... " + v32_call("fn", a="b"),
        [("fn", {"a": "b"})],
        "Thinking...",
    ),
    Case(
        "integers, streamed",
        "test_type_conversion_in_streaming",
        block(invoke("add", param("x", "3", "false"), param("y", "4", "false"))),
        [("add", {"x": 3, "y": 4})],
        tools=tool("add", x={"type": "integer"}, y={"type": "integer"}),
    ),
    Case(
        "two tools, streamed",
        "test_multiple_tools_streaming, test_multiple_tools_chunked",
        FUNC_A_B,
        [("func_a", {"p": "v1"}), ("func_b", {"q": "v2"})],
    ),
    Case(
        "content before markup, no leak",
        "test_no_marker_leak_with_prefix_chunked",
        "Hello!" + v32_call("fn", a="b"),
        [("fn", {"a": "b"})],
        "Hello!",
    ),
    Case(
        "a marker prefix that is prose",
        "test_false_partial_marker_emitted",
        "<｜DSM some regular text",
        [],
        "<｜DSM some regular text",
    ),
    Case(
        "literal delimiters",
        "test_delimiter_preserved_fast_detokenization",
        TOKYO,
        [("get_weather", {"location": "Tokyo"})],
    ),
    Case(
        # vLLM keeps "Here is the weather: " (trailing space); the space is markup here.
        "literal delimiters after content",
        "test_delimiter_preserved_fast_detokenization",
        "Here is the weather: " + TOKYO,
        [("get_weather", {"location": "Tokyo"})],
        "Here is the weather:",
    ),
    Case(
        "special tokens kept",
        "test_tool_detection_skip_special_tokens_false",
        v32_call("search", query="vllm documentation"),
        [("search", {"query": "vllm documentation"})],
        tools=tool("search", query={"type": "string"}),
    ),
    Case(
        # As above, vLLM's content is "Let me check. " with the space.
        "V4: content and a call",
        "test_extract_tool_calls (V4)",
        "Let me check. " + v4_call("get_weather", location="Beijing", unit="celsius"),
        [("get_weather", {"location": "Beijing", "unit": "celsius"})],
        "Let me check.",
    ),
    Case(
        "V4: streamed",
        "test_streaming_extracts_complete_invokes (V4)",
        v4_call("search", query="deepseek v4"),
        [("search", {"query": "deepseek v4"})],
    ),
    Case(
        # vLLM's V4 parser sees no call in a function_calls block; DSML.md: one parser, 3 dialects.
        "V4: a V3.2 block is read too",
        "test_function_calls_block_is_not_accepted (V4)",
        v4_call("search", query="vllm").replace("tool_calls", "function_calls"),
        [("search", {"query": "vllm"})],
    ),
    Case(
        # vLLM coerces "42" to 42 by the schema; DSML.md: string="true" is a raw string.
        "string=true stays a string under an integer schema",
        "test_string_attr_true_coerced_by_schema(_streaming)",
        block(invoke("score", param("value", "42"))),
        [("score", {"value": "42"})],
        tools=tool("score", value={"type": "integer"}),
    ),
    Case(
        # vLLM parses the JSON object by the anyOf schema; DSML.md: string="true" is raw.
        "string=true stays a string under an object schema",
        "test_string_attr_true_coerced_by_composed_schema",
        block(invoke("set_timer", param("wait", '{"type":"for","minutes":2880}'))),
        [("set_timer", {"wait": '{"type":"for","minutes":2880}'})],
        tools=tool("set_timer", wait={"anyOf": [{"type": "object"}, {"type": "null"}]}),
    ),
    Case(
        # vLLM gives the string "null" for a string schema; DSML.md: string="false" null is JSON.
        "string=false null is null under a string schema",
        "test_null_coerced_back_to_string_by_schema",
        block(invoke("echo", param("text", "null", "false"))),
        [("echo", {"text": None})],
        tools=tool("echo", text={"type": "string"}),
    ),
    Case(
        # vLLM: null_string "null" and whole_number 3; ours: JSON null and 3.0 (valid JSON wins).
        "non-JSON fallbacks by the schema",
        "test_streaming_matches_non_streaming_conversion_fallbacks",
        COERCE,
        [
            (
                "coerce",
                {
                    "union_value": "hello",
                    "bad_int": "abc",
                    "nullable_string": None,
                    "null_string": None,
                    "whole_number": 3.0,
                },
            )
        ],
        tools=COERCE_TOOLS,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_whole_text_gives_vllms_calls(case: Case):
    parsed = parse_completion(case.text, tools=case.tools, ended=True)
    assert parsed.errors == [] and not parsed.incomplete
    assert typed(parsed.tool_calls) == json.dumps(
        [[name, arguments] for name, arguments in case.calls], ensure_ascii=False
    )
    assert parsed.content == case.content
    assert parsed.reasoning is None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_streamed_text_gives_the_whole_text_parse(case: Case):
    whole = assert_streams_like_whole(case.text, case.tools)
    # A closed block needs no end-of-turn signal: vLLM's streams never send one.
    for chunks in chunkings(case.text).values():
        parsed, events = streamed(chunks, case.tools, ended=False)
        assert parsed == whole
        signals = [type(e) for e in events if isinstance(e, ToolCallsStarted | ToolCallsComplete)]
        assert signals == ([ToolCallsStarted, ToolCallsComplete] if case.calls else [])


# ---------------------------------------------------------------- streaming behaviours


def test_the_start_marker_cut_at_every_point_never_leaks():
    # vLLM: test_no_marker_leak_all_split_points (chunk sizes 1 .. len(start marker) + 1).
    text = v32_call("fn", k="v")
    whole = parse_completion(text, ended=True)
    assert typed(whole.tool_calls) == '[["fn", {"k": "v"}]]'
    for size in range(1, len("<｜DSML｜function_calls>") + 2):
        parsed, events = streamed(sized(text, size), None)
        assert parsed == whole and parsed.content == "", size
        assert not [e for e in events if isinstance(e, Visible)], size


def test_a_prose_marker_prefix_is_shown_in_three_character_chunks():
    # vLLM: test_false_partial_marker_emitted (chunk size 3, no end-of-turn signal).
    text = "<｜DSM some regular text"
    _, events = streamed(sized(text, 3), None, ended=False)
    assert "".join(e.text for e in events if isinstance(e, Visible)) == text


def test_parallel_calls_get_distinct_ids_that_streaming_keeps():
    # vLLM: test_unique_tool_call_ids.
    whole = assert_streams_like_whole(FN_A_B, None)
    assert typed(whole.tool_calls) == '[["fn_a", {"x": "1"}], ["fn_b", {"y": "2"}]]'
    first, second = whole.tool_calls
    assert first.id != second.id


def test_a_fresh_parser_gives_the_same_result():
    # vLLM: test_state_reset_on_new_stream.
    text = v32_call("fn", k="v")
    first, _ = streamed(by_line(text), None)
    second, _ = streamed(by_line(text), None)
    assert first == second and typed(second.tool_calls) == '[["fn", {"k": "v"}]]'


def test_a_cut_off_block_gives_no_partial_call():
    # vLLM streams '{"k"...' before the invoke closes; ours takes no call from an unfinished
    # block (DSML.md: "report an incomplete call, never invent one").
    text = '<｜DSML｜function_calls>\n<｜DSML｜invoke name="fn">\n' + param("k", "val") + "\n"
    cut = assert_streams_like_whole(text, None, ended=False)
    assert cut.incomplete and cut.tool_calls == [] and cut.content == ""
    assert 'inside invoke "fn"' in cut.errors[0]
    # Had the model ended its turn there, only closing tags are missing: the call stands.
    ended = assert_streams_like_whole(text, None, ended=True)
    assert not ended.incomplete and typed(ended.tool_calls) == '[["fn", {"k": "val"}]]'


def test_a_long_string_value_streams_without_leaking_and_arrives_whole():
    # vLLM: test_long_string_argument_streams_before_close wants argument deltas per chunk;
    # ours signals the block at once and gives the call (one batch) when the block closes.
    body = "A" * 4096
    tools = tool("emit", text={"type": "string"})
    chunks = [
        (
            '<｜DSML｜function_calls>\n<｜DSML｜invoke name="emit">\n'
            '<｜DSML｜parameter name="text" string="true">'
        ),
        *sized(body, 32),
        "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
    ]
    parser = StreamParser(tools=tools)
    per_chunk = [parser.feed(chunk) for chunk in chunks]
    assert per_chunk[0] == [ToolCallsStarted()]
    assert all(events == [] for events in per_chunk[1:-1])
    assert per_chunk[-1] == [ToolCallsComplete()]
    parsed = completion_of(parser, [e for es in per_chunk for e in es] + parser.close(), tools)
    assert typed(parsed.tool_calls) == json.dumps([["emit", {"text": body}]])
    assert parsed == parse_completion("".join(chunks), tools=tools, ended=True)
