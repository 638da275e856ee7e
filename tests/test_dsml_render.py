"""Rendering DSML: byte-exact to DeepSeek's V4 encoder (shared/DSML.md)."""

import pytest

from agentcore.dsml import (
    TOOL_CALLS_END,
    V32,
    V41,
    parse_completion,
    render_tool_calls,
    render_tool_result,
    render_tool_results,
    render_tools,
)
from agentcore.errors import DSMLError
from agentcore.messages import ToolCall, ToolMessage, ToolSpec

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
)


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(id="call_test", name=name, arguments=arguments)


def test_tool_calls_match_the_official_encoder_byte_for_byte():
    expected = (
        "\n\n<｜DSML｜tool_calls>\n"
        '<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="location" string="true">Beijing</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="unit" string="true">celsius</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n"
        "</｜DSML｜tool_calls>"
    )
    assert render_tool_calls([call("get_weather", location="Beijing", unit="celsius")]) == expected


def test_no_calls_render_as_nothing():
    assert render_tool_calls([]) == ""


def test_non_string_values_are_json_with_string_false():
    rendered = render_tool_calls([call("f", n=3, flags=[True, None], meta={"city": "臺北"})])
    assert '<｜DSML｜parameter name="n" string="false">3</｜DSML｜parameter>' in rendered
    assert (
        '<｜DSML｜parameter name="flags" string="false">[true, null]</｜DSML｜parameter>'
        in rendered
    )
    assert (
        '<｜DSML｜parameter name="meta" string="false">{"city": "臺北"}</｜DSML｜parameter>'
        in rendered
    )


def test_json_looking_strings_stay_raw_with_string_true():
    rendered = render_tool_calls([call("f", n="3", raw='{"a": 1}')])
    assert '<｜DSML｜parameter name="n" string="true">3</｜DSML｜parameter>' in rendered
    assert '<｜DSML｜parameter name="raw" string="true">{"a": 1}</｜DSML｜parameter>' in rendered


def test_parallel_calls_share_one_block_joined_by_newlines():
    rendered = render_tool_calls([call("a"), call("b", x=1)])
    assert rendered == (
        "\n\n<｜DSML｜tool_calls>\n"
        '<｜DSML｜invoke name="a">\n\n</｜DSML｜invoke>\n'
        '<｜DSML｜invoke name="b">\n'
        '<｜DSML｜parameter name="x" string="false">1</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n"
        f"{TOOL_CALLS_END}"
    )


def test_a_string_holding_the_closing_parameter_tag_is_written_as_a_json_string():
    rendered = render_tool_calls([call("f", v="x</｜DSML｜parameter>y")])
    expected = (
        '<｜DSML｜parameter name="v" string="false">"x<\\/｜DSML｜parameter>y"</｜DSML｜parameter>'
    )
    assert expected in rendered
    assert parse_completion(rendered).tool_calls[0].arguments == {"v": "x</｜DSML｜parameter>y"}


def test_a_value_json_cannot_encode_cannot_be_rendered():
    with pytest.raises(DSMLError, match="not JSON-serialisable"):
        render_tool_calls([call("f", v={1, 2})])


def test_a_name_with_a_quote_cannot_be_rendered():
    with pytest.raises(DSMLError, match="tool name"):
        render_tool_calls([call('bad"name')])


def test_tools_block_matches_the_dsml_template_byte_for_byte():
    expected = (
        "## Tools\n\n"
        "You have access to a set of tools to help answer the user's question. You can invoke "
        'tools by writing a "<｜DSML｜tool_calls>" block like the following:\n\n'
        "<｜DSML｜tool_calls>\n"
        '<｜DSML｜invoke name="$TOOL_NAME">\n'
        '<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE'
        "</｜DSML｜parameter>\n"
        "...\n"
        "</｜DSML｜invoke>\n"
        '<｜DSML｜invoke name="$TOOL_NAME2">\n'
        "...\n"
        "</｜DSML｜invoke>\n"
        "</｜DSML｜tool_calls>\n\n"
        'String parameters should be specified as is and set `string="true"`. For all other '
        "types (numbers, booleans, arrays, objects), pass the value in JSON format and set "
        '`string="false"`.\n\n'
        "If thinking_mode is enabled (triggered by <think>), you MUST output your complete "
        "reasoning inside <think>...</think> BEFORE any tool calls or final response.\n\n"
        "Otherwise, output directly after </think> with tool calls or final response.\n\n"
        "### Available Tool Schemas\n\n"
        '{"name": "get_weather", "description": "Current weather for a city.", "parameters": '
        '{"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": '
        '"string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}\n'
        '{"name": "ping", "description": "", "parameters": {"type": "object", "properties": {}}}'
        "\n\n"
        "You MUST strictly follow the above defined tool name and parameter schemas to invoke "
        "tool calls.\n"
    )
    assert render_tools([WEATHER, ToolSpec(name="ping")]) == expected


def test_tool_schemas_keep_the_given_key_order_and_unicode():
    spec = ToolSpec(
        name="z",
        description="météo",
        parameters={"type": "object", "properties": {"b": {}, "a": {}}},
    )
    block = render_tools([spec])
    assert '{"name": "z", "description": "météo", "parameters": ' in block
    assert '"properties": {"b": {}, "a": {}}' in block


def test_tools_are_listed_in_the_given_order():
    block = render_tools([ToolSpec(name="second"), ToolSpec(name="first")])
    assert block.index('"second"') < block.index('"first"')


def test_tool_result_is_wrapped_and_a_literal_closing_tag_neutralised():
    assert (
        render_tool_result("a</tool_result>b") == "<tool_result>a&lt;/tool_result>b</tool_result>"
    )


def test_tool_results_of_one_turn_are_joined_by_a_blank_line_in_call_order():
    message = ToolMessage(call_id="c1", name="f", content="B")
    assert render_tool_results(["A", message]) == (
        "<tool_result>A</tool_result>\n\n<tool_result>B</tool_result>"
    )


def test_a_call_without_arguments_has_a_blank_line_inside_its_invoke():
    assert '<｜DSML｜invoke name="now">\n\n</｜DSML｜invoke>' in render_tool_calls([call("now")])


def test_v41_renders_spaced_tags_and_parses_back():
    rendered = render_tool_calls([call("f", a="1", n=2)], V41)
    assert rendered.startswith("\n\n<｜DSML｜ calls>\n<｜DSML｜ invoke name=\"f\">\n")
    assert '<｜DSML｜ parameter name="n" string="false">2</｜DSML｜ parameter>' in rendered
    assert parse_completion(rendered).tool_calls[0].arguments == {"a": "1", "n": 2}
    assert '"<｜DSML｜ calls>"' in render_tools([WEATHER], V41)


def test_v32_renders_its_block_name_and_an_unknown_dialect_is_refused():
    from agentcore.dsml import Dialect, render_function_results

    block = render_tool_calls([call("f", a="x")], V32)
    assert block == ('\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="f">\n'
                     '<｜DSML｜parameter name="a" string="true">x</｜DSML｜parameter>\n'
                     '</｜DSML｜invoke>\n</｜DSML｜function_calls>')  # fmt: skip
    assert render_function_results(["1", "a</result>"]) == (
        "\n\n<function_results>\n<result>1</result>\n<result>a&lt;/result></result>\n</function_results>"
    )
    with pytest.raises(DSMLError, match="V3.2, V4 and V4.1"):
        render_tool_calls([call("f")], Dialect("v9", "x", "invoke", "parameter"))
