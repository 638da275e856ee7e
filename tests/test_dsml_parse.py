"""Parsing completions: every variant of shared/DSML.md, and malformed input as errors."""

import pytest

from agentcore.dsml import EOS, parse_completion, render_tool_calls
from agentcore.messages import ToolCall, ToolSpec

CANONICAL = (
    "Let me check.\n\n<｜DSML｜tool_calls>\n"
    '<｜DSML｜invoke name="get_weather">\n'
    '<｜DSML｜parameter name="location" string="true">Beijing</｜DSML｜parameter>\n'
    '<｜DSML｜parameter name="unit" string="true">celsius</｜DSML｜parameter>\n'
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls><｜end▁of▁sentence｜>"
)

TYPED = ToolSpec(
    name="f",
    parameters={
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "n": {"type": "number"},
            "b": {"type": "boolean"},
            "a": {"type": "array"},
            "o": {"type": "object"},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
    },
)


def block(*invokes: str) -> str:
    return "<｜DSML｜tool_calls>\n" + "\n".join(invokes) + "\n</｜DSML｜tool_calls>"


def invoke(name: str, *parameters: str) -> str:
    return "\n".join([f'<｜DSML｜invoke name="{name}">', *parameters, "</｜DSML｜invoke>"])


def param(name: str, value: str, string: str | None = "true") -> str:
    attr = "" if string is None else f' string="{string}"'
    return f'<｜DSML｜parameter name="{name}"{attr}>{value}</｜DSML｜parameter>'


def only_arguments(text: str, **kwargs) -> dict:
    parsed = parse_completion(text, **kwargs)
    assert parsed.errors == [] and not parsed.incomplete
    [only] = parsed.tool_calls
    return only.arguments


# ---------------------------------------------------------------- the canonical form


def test_canonical_completion_gives_content_and_the_call():
    parsed = parse_completion(CANONICAL)
    assert parsed.content == "Let me check."
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("get_weather", {"location": "Beijing", "unit": "celsius"})
    ]
    assert parsed.errors == [] and parsed.incomplete is False and parsed.reasoning is None


def test_content_before_a_rendered_block_comes_back_exactly():
    content = "  Two lines,\n  indented."
    calls = [ToolCall(id="x", name="f", arguments={"a": 1})]
    assert parse_completion(content + render_tool_calls(calls)).content == content


def test_plain_answer_is_all_content_kept_exactly():
    assert parse_completion("\n\nThe answer is 4.\n" + EOS).content == "\n\nThe answer is 4.\n"


def test_eos_and_whitespace_after_it_are_stripped():
    parsed = parse_completion(CANONICAL + "\n \n")
    assert parsed.errors == [] and len(parsed.tool_calls) == 1


def test_nothing_after_eos_is_read():
    parsed = parse_completion("done" + EOS + block(invoke("f")))
    assert parsed.content == "done" and parsed.tool_calls == [] and parsed.errors == []


# ---------------------------------------------------------------- accepted variants


def test_any_whitespace_between_tags_is_accepted():
    text = 'Hi\n\n\n\n<｜DSML｜tool_calls>  <｜DSML｜invoke name="f">\t\n\n'
    text += param("a", "1") + "\r\n </｜DSML｜invoke>\n\n</｜DSML｜tool_calls>"
    parsed = parse_completion(text)
    assert parsed.content == "Hi" and parsed.errors == []
    assert parsed.tool_calls[0].arguments == {"a": "1"}


def test_missing_string_attribute_means_a_raw_string():
    assert only_arguments(block(invoke("f", param("n", "42", string=None)))) == {"n": "42"}


def test_ascii_bars_are_accepted():
    text = '<|DSML|tool_calls><|DSML|invoke name="f"><|DSML|parameter name="a" string="false">'
    text += "[1]</|DSML|parameter></|DSML|invoke></|DSML|tool_calls>"
    assert only_arguments(text) == {"a": [1]}


def test_dropped_first_bar_is_accepted():
    text = '<DSML｜tool_calls><DSML｜invoke name="f"><DSML｜parameter name="a">x'
    text += "</DSML｜parameter></DSML｜invoke></DSML｜tool_calls>"
    assert only_arguments(text) == {"a": "x"}


def test_v41_space_after_the_bar_is_accepted():
    text = '<｜DSML｜ tool_calls><｜DSML｜ invoke name="f"><｜DSML｜ parameter name="a">x'
    text += "</｜DSML｜ parameter></｜DSML｜ invoke></｜DSML｜ tool_calls>"
    assert only_arguments(text) == {"a": "x"}


def test_raw_markup_characters_in_values_are_kept_verbatim():
    value = 'if a < b && c > d: print("<ok>") # ]]> <![CDATA[ x ]]>'
    assert only_arguments(block(invoke("f", param("code", value)))) == {"code": value}


def test_escaped_entities_are_not_decoded():
    assert only_arguments(block(invoke("f", param("s", "&amp; &lt; &#60;")))) == {
        "s": "&amp; &lt; &#60;"
    }


def test_newlines_unicode_and_control_characters_are_kept_verbatim():
    value = "line1\r\nline2\n\tдом 家 🦀 \x00\x1b[0m\u2028"
    assert only_arguments(block(invoke("f", param("s", value)))) == {"s": value}


def test_whitespace_around_a_string_value_is_not_stripped():
    assert only_arguments(block(invoke("f", param("s", "\n  padded  \n")))) == {
        "s": "\n  padded  \n"
    }


def test_other_dsml_tags_inside_a_value_are_part_of_the_value():
    value = '</｜DSML｜invoke></｜DSML｜tool_calls><｜DSML｜invoke name="g">'
    assert only_arguments(block(invoke("f", param("s", value)))) == {"s": value}


def test_json_values_are_decoded():
    text = block(
        invoke("f", param("n", "3.5", "false"), param("o", '{"k": [null, true]}', "false"))
    )
    assert only_arguments(text) == {"n": 3.5, "o": {"k": [None, True]}}


def test_invalid_json_without_a_schema_falls_back_to_the_raw_string():
    assert only_arguments(block(invoke("f", param("a", "Beijing", "false")))) == {"a": "Beijing"}


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("s", "Beijing", "Beijing"),
        ("i", "+7", 7),
        ("n", ".5", 0.5),
        ("b", "True", True),
        ("a", "['x', 'y']", ["x", "y"]),
        ("o", "{'k': None, 'on': False}", {"k": None, "on": False}),
        ("maybe", "None", None),
        ("i", "seven", "seven"),  # nothing fits: the raw string, for the registry to reject
    ],
)
def test_invalid_json_is_read_by_the_schema_type(name, raw, value):
    text = block(invoke("f", param(name, raw, "false")))
    arguments = only_arguments(text, tools=[TYPED])
    assert arguments == {name: value} and type(arguments[name]) is type(value)


def test_a_malformed_schema_never_makes_parsing_raise():
    odd = ToolSpec(name="f", parameters={"properties": {"a": {"type": 5, "anyOf": "x"}}})
    assert only_arguments(block(invoke("f", param("a", "nope", "false"))), tools=[odd]) == {
        "a": "nope"
    }


def test_several_invokes_give_parallel_calls_in_order():
    text = block(invoke("a", param("x", "1")), invoke("b"), invoke("a", param("x", "2")))
    parsed = parse_completion(text)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("a", {"x": "1"}),
        ("b", {}),
        ("a", {"x": "2"}),
    ]


def test_call_ids_are_deterministic_and_unique_even_for_identical_calls():
    text = block(invoke("a", param("x", "1")), invoke("a", param("x", "1")))
    ids = [c.id for c in parse_completion(text).tool_calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert ids == [c.id for c in parse_completion(text).tool_calls]


def test_unknown_tool_names_are_parsed_for_the_registry_to_report():
    parsed = parse_completion(block(invoke("no_such_tool", param("a", "1"))), tools=[TYPED])
    assert [c.name for c in parsed.tool_calls] == ["no_such_tool"] and parsed.errors == []


# ---------------------------------------------------------------- reasoning


def test_thinking_mode_splits_reasoning_at_think_end():
    parsed = parse_completion(
        "I should call f.</think>Calling." + render_tool_calls([]), thinking=True
    )
    assert parsed.reasoning == "I should call f." and parsed.content == "Calling."


def test_leading_think_block_is_reasoning_without_thinking_mode():
    parsed = parse_completion("<think>hmm</think>Answer")
    assert parsed.reasoning == "hmm" and parsed.content == "Answer"


def test_dsml_inside_reasoning_is_not_a_call():
    text = "maybe " + block(invoke("wrong")) + "</think>\n\n" + block(invoke("right"))
    parsed = parse_completion(text, thinking=True)
    assert [c.name for c in parsed.tool_calls] == ["right"]
    assert "wrong" in parsed.reasoning and parsed.content == "" and parsed.errors == []


def test_a_block_opened_inside_unclosed_reasoning_ends_the_reasoning():
    parsed = parse_completion("still thinking " + block(invoke("f")) + "\n", thinking=True)
    assert [c.name for c in parsed.tool_calls] == ["f"] and parsed.errors == []
    assert parsed.content == "" and parsed.reasoning == "still thinking "


def test_a_block_quoted_inside_reasoning_that_goes_on_stays_reasoning():
    text = "I could write " + block(invoke("f")) + " but I will not."
    parsed = parse_completion(text, thinking=True)
    assert parsed.tool_calls == [] and parsed.reasoning == text and parsed.errors == []


def test_reasoning_left_open_after_a_quoted_block_is_all_reasoning():
    parsed = parse_completion("still thinking " + block(invoke("f")) + " hmm", thinking=True)
    assert parsed.content == "" and parsed.tool_calls == [] and parsed.errors == []
    assert parsed.reasoning.startswith("still thinking")


def test_think_end_inside_a_value_does_not_end_the_block():
    assert only_arguments(block(invoke("f", param("s", "a</think>b")))) == {"s": "a</think>b"}


def test_reasoning_is_none_without_think_and_empty_when_thinking_wrote_none():
    assert parse_completion("hi").reasoning is None
    assert parse_completion("</think>hi", thinking=True).reasoning == ""


# ---------------------------------------------------------------- cut-off output


def test_output_cut_inside_a_parameter_is_incomplete_and_invents_no_call():
    text = 'Hi\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="a">'
    parsed = parse_completion(text + "partial val")
    assert parsed.incomplete and parsed.tool_calls == [] and parsed.content == "Hi"
    assert 'ended inside invoke "f"' in parsed.errors[0]


def test_output_cut_inside_a_tag_is_incomplete():
    parsed = parse_completion(block(invoke("f"))[:-8])
    assert parsed.incomplete and parsed.tool_calls == [] and parsed.errors


def test_output_cut_before_the_block_tag_finished_is_incomplete():
    parsed = parse_completion("Hi <｜DSML｜tool_ca")
    assert parsed.incomplete and parsed.content == "Hi" and parsed.errors


def test_a_cut_off_block_returns_no_call_even_from_invokes_closed_before_the_cut():
    text = "<｜DSML｜tool_calls>\n" + invoke("done", param("a", "1")) + "\n"
    text += '<｜DSML｜invoke name="cut">\n' + param("b", "2")
    parsed = parse_completion(text)
    assert parsed.incomplete and parsed.tool_calls == []
    assert 'invoke "cut"' in parsed.errors[-1] and "1 had closed" in parsed.errors[-1]


# ---------------------------------------------------------------- malformed blocks


def test_invoke_without_a_name_is_an_error():
    parsed = parse_completion(block("<｜DSML｜invoke>" + param("a", "1") + "</｜DSML｜invoke>"))
    assert parsed.tool_calls == [] and "no name attribute" in parsed.errors[0]
    assert '<｜DSML｜invoke name="TOOL">' in parsed.errors[0]  # the right form is shown


def test_parameter_without_a_name_is_an_error():
    text = block(invoke("f", "<｜DSML｜parameter>1</｜DSML｜parameter>"))
    parsed = parse_completion(text)
    assert parsed.tool_calls == [] and 'invoke "f"' in parsed.errors[0]


def test_duplicate_parameter_names_are_an_error():
    parsed = parse_completion(block(invoke("f", param("a", "1"), param("a", "2"))))
    assert parsed.tool_calls == [] and 'parameter "a" is given twice' in parsed.errors[0]


def test_stray_text_inside_an_invoke_drops_that_call_only():
    text = block(invoke("bad", "oops", param("a", "1")), invoke("good"))
    parsed = parse_completion(text)
    assert [c.name for c in parsed.tool_calls] == ["good"]
    assert len(parsed.errors) == 1 and "'oops'" in parsed.errors[0]


def test_stray_text_between_invokes_is_reported_but_calls_are_kept():
    parsed = parse_completion(block(invoke("a"), "and then", invoke("b")))
    assert [c.name for c in parsed.tool_calls] == ["a", "b"]
    assert "stray text 'and then'" in parsed.errors[0]


def test_missing_invoke_end_is_closed_by_the_block_end():
    text = '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n' + param("a", "1") + "\n"
    parsed = parse_completion(text + "</｜DSML｜tool_calls>")
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("f", {"a": "1"})]
    assert parsed.errors == [] and not parsed.incomplete


def test_missing_invoke_end_is_closed_by_the_next_invoke():
    text = block('<｜DSML｜invoke name="a">\n' + param("x", "1"), invoke("b", param("y", "2")))
    parsed = parse_completion(text)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("a", {"x": "1"}), ("b", {"y": "2"})]


def test_bare_invoke_is_a_call_when_tools_were_declared():
    parsed = parse_completion("Sure.\n\n" + invoke("f", param("a", "1")), tools=[TYPED])
    assert parsed.content == "Sure." and [c.name for c in parsed.tool_calls] == ["f"]


def test_bare_invoke_without_declared_tools_is_text():
    text = "Sure. " + invoke("f", param("a", "1"))
    parsed = parse_completion(text)
    assert parsed.tool_calls == [] and parsed.content.startswith("Sure. <｜DSML｜invoke")


def test_quoted_marker_in_prose_stays_content():
    text = "The prefix <｜DSML｜invoke is reserved."
    parsed = parse_completion(text, tools=[TYPED])
    assert parsed.content == text and parsed.tool_calls == [] and not parsed.incomplete


def test_nested_invoke_closes_the_outer_one_and_the_extra_end_is_reported():
    inner = invoke("inner")
    text = block('<｜DSML｜invoke name="outer">\n' + inner + "\n</｜DSML｜invoke>")
    parsed = parse_completion(text)
    assert [c.name for c in parsed.tool_calls] == ["outer", "inner"]
    assert len(parsed.errors) == 1 and "closes no invoke" in parsed.errors[0]


def test_unknown_and_malformed_tags_are_errors():
    text = block(invoke("f", '<｜DSML｜argument name="a">1</｜DSML｜argument>'))
    assert "unknown tag" in parse_completion(text).errors[0]
    text = block(invoke("f", '<｜DSML｜parameter name="a<b">1</｜DSML｜parameter>'))
    parsed = parse_completion(text)
    assert parsed.tool_calls == [] and 'invoke "f" was not called' in parsed.errors[0]


def test_repeated_attributes_are_rejected_like_duplicate_parameters():
    text = block('<｜DSML｜invoke name="read_file" name="run_shell">\n</｜DSML｜invoke>')
    parsed = parse_completion(text)
    assert parsed.tool_calls == [] and "'name' is given twice" in parsed.errors[0]
    text = block(invoke("f", '<｜DSML｜parameter name="a" name="b">1</｜DSML｜parameter>'))
    parsed = parse_completion(text)
    assert parsed.tool_calls == [] and "twice" in parsed.errors[0]


def test_text_after_the_block_is_content():
    parsed = parse_completion(block(invoke("f")) + "\nDone!" + EOS)
    assert len(parsed.tool_calls) == 1 and parsed.errors == [] and parsed.content == "\nDone!"


def test_several_blocks_in_one_turn_give_all_their_calls():
    parsed = parse_completion(block(invoke("a")) + "\n\n" + block(invoke("b")))
    assert [c.name for c in parsed.tool_calls] == ["a", "b"] and parsed.errors == []
    assert parsed.content == ""


# ---------------------------------------------------------------- dialects and recoveries


def test_v32_function_calls_blocks_are_read():
    text = block(invoke("f", param("a", "1"))).replace("tool_calls", "function_calls")
    assert [c.name for c in parse_completion(text).tool_calls] == ["f"]


def test_v41_spaced_tags_are_read_even_mixed_with_v4_tags():
    text = (
        '\n\n<｜DSML｜ calls>\n<｜DSML｜ invoke name="f">\n'
        '<｜DSML｜ parameter name="a" string="false">[1]</｜DSML｜ parameter>\n'
        '</｜DSML｜ invoke>\n<｜DSML｜invoke name="g">\n\n</｜DSML｜invoke>\n</｜DSML｜ calls>'
    )
    parsed = parse_completion(text)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("f", {"a": [1]}), ("g", {})]


def test_a_json_object_as_the_invoke_body_gives_the_arguments():
    text = block('<｜DSML｜invoke name="f">\n{"s": "a<b", "i": 2}\n</｜DSML｜invoke>')
    assert only_arguments(text) == {"s": "a<b", "i": 2}


def test_an_undeclared_arguments_wrapper_is_unwrapped_by_the_schema():
    wrapped = param("arguments", '{"s": "x", "i": 1}', string="false")
    text = block(invoke("f", wrapped))
    parsed = parse_completion(text, tools=[TYPED])
    assert parsed.tool_calls[0].arguments == {"s": "x", "i": 1}
    # without a schema saying so, the wrapper is an ordinary parameter
    assert parse_completion(text).tool_calls[0].arguments == {"arguments": {"s": "x", "i": 1}}


def test_a_declared_input_parameter_is_not_unwrapped():
    spec = ToolSpec(name="f", parameters={"type": "object", "properties": {"input": {}}})
    text = block(invoke("f", param("input", '{"a": 1}', string="false")))
    assert parse_completion(text, tools=[spec]).tool_calls[0].arguments == {"input": {"a": 1}}


def test_a_missing_block_end_is_accepted_when_the_model_ended_its_turn():
    text = '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n</｜DSML｜invoke>\n'
    assert [c.name for c in parse_completion(text + EOS).tool_calls] == ["f"]
    assert [c.name for c in parse_completion(text, ended=True).tool_calls] == ["f"]
    assert parse_completion(text).incomplete


def test_a_block_after_four_newlines_is_read():
    parsed = parse_completion("Hi\n\n\n\n" + block(invoke("f")))
    assert parsed.content == "Hi" and len(parsed.tool_calls) == 1
