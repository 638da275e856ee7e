"""StreamParser: what it shows, holds back and signals while tokens arrive."""

from agentcore.dsml import (
    EOS,
    Reasoning,
    StreamParser,
    ToolCallsComplete,
    ToolCallsStarted,
    Visible,
    parse_completion,
)
from agentcore.messages import ToolSpec

COMPLETION = (
    "Plan: call f.</think>Sure, 1 < 2 && <b>bold</b>.\n\n"
    "<｜DSML｜tool_calls>\n"
    '<｜DSML｜invoke name="f">\n'
    '<｜DSML｜parameter name="a" string="true">x</think><think></｜DSML｜parameter>\n'
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>" + EOS
)


def run(chunks, thinking=False):
    stream = StreamParser(thinking=thinking)
    events = [e for chunk in chunks for e in stream.feed(chunk)]
    return stream, events + stream.close()


def visible(events):
    return "".join(e.text for e in events if isinstance(e, Visible))


def signals(events):
    return [type(e).__name__ for e in events if isinstance(e, ToolCallsStarted | ToolCallsComplete)]


def test_one_character_at_a_time_gives_the_parsed_content_and_reasoning():
    _, events = run(COMPLETION, thinking=True)
    parsed = parse_completion(COMPLETION, thinking=True)
    assert visible(events) == parsed.content == "Sure, 1 < 2 && <b>bold</b>."
    assert "".join(e.text for e in events if isinstance(e, Reasoning)) == parsed.reasoning
    assert signals(events) == ["ToolCallsStarted", "ToolCallsComplete"]


def test_markup_never_reaches_visible_text():
    _, events = run(COMPLETION, thinking=True)
    for event in events:
        if isinstance(event, Visible):
            assert "DSML" not in event.text and "think>" not in event.text


def test_a_possible_tag_is_held_until_it_is_decided():
    stream = StreamParser()
    assert stream.feed("Hi <｜DS") == [Visible("Hi")]
    assert stream.feed("ML｜tool_calls>") == []  # an opener waits for what follows it
    assert stream.feed("\n<｜DSML｜inv") == []
    assert stream.feed('oke name="f">') == [ToolCallsStarted()]


def test_an_opener_quoted_in_prose_is_released_as_text_however_it_is_cut():
    tools = [ToolSpec(name="x", description="", parameters={"type": "object", "properties": {}})]
    cases = [
        ("Open with <｜DSML｜tool_calls> then invokes.", None),
        ('Write <｜DSML｜invoke name="x"> to call.', tools),
        ("End with </｜DSML｜tool_calls> ok", None),  # a closing tag before any block
        ("Close with </｜DSML｜invoke> then stop.", tools),
        ("Say <|DSML|function_calls>\n\n  and more", None),
    ]
    for text, declared in cases:
        for cut in range(len(text) + 1):
            stream = StreamParser(tools=declared)
            events = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.close(ended=True)
            assert all(isinstance(e, Visible) for e in events), (text, cut, events)
            assert "".join(e.text for e in events) == text, (text, cut)
            assert parse_completion(text, tools=declared).content == text


def test_an_opener_the_turn_ends_right_after_is_text_and_a_cut_one_is_incomplete():
    ended = parse_completion("Hi <｜DSML｜tool_calls>\n" + EOS)
    assert ended.content == "Hi <｜DSML｜tool_calls>\n" and not ended.incomplete
    cut = parse_completion("Hi <｜DSML｜tool_calls>\n")
    assert cut.content == "Hi" and cut.incomplete and cut.tool_calls == []


def test_a_marker_cut_off_by_the_end_of_the_turn_is_text():
    assert parse_completion("The prefix is <｜DSML｜invoke" + EOS).content == "The prefix is <｜DSML｜invoke"
    cut = parse_completion("The prefix is <｜DSML｜invoke")
    assert cut.content == "The prefix is" and cut.incomplete


def test_a_held_prefix_is_released_when_it_is_not_a_tag():
    stream = StreamParser()
    assert stream.feed("a <thi") == [Visible("a")]
    assert stream.feed("s> b") == [Visible(" <this> b")]


def test_a_prefix_still_held_at_the_end_is_released_by_close():
    stream = StreamParser()
    stream.feed("1 <")
    assert stream.close() == [Visible(" <")]


def test_whitespace_before_the_block_is_never_shown():
    _, events = run(["Done.", "\n", "\n", "<｜DSML｜tool_calls>"])
    assert visible(events) == "Done."


def test_trailing_whitespace_without_a_block_is_released_at_close():
    _, events = run(["Done.", "\n"])
    assert visible(events) == "Done.\n"


def test_complete_is_signalled_when_the_closing_tag_arrives():
    stream = StreamParser()
    stream.feed('<｜DSML｜tool_calls><｜DSML｜invoke name="f"></｜DSML｜invoke></｜DSML｜tool_')
    assert stream.feed("calls>") == [ToolCallsComplete()]


def test_a_closing_tag_inside_a_value_does_not_complete_the_block():
    stream = StreamParser()
    events = stream.feed(
        '<｜DSML｜tool_calls><｜DSML｜invoke name="f"><｜DSML｜parameter name="a">'
    )
    assert stream.feed("</｜DSML｜tool_calls>") == [] and events == [ToolCallsStarted()]


def test_reasoning_streams_as_reasoning_events():
    _, events = run(["<think>a", "b</thi", "nk>c"])
    assert events == [Reasoning("a"), Reasoning("b"), Visible("c")]


def test_text_after_eos_is_ignored():
    _, events = run(["ok<｜end▁of", "▁sentence｜>more"])
    assert visible(events) == "ok"


def test_text_is_everything_fed():
    stream, _ = run(["ab", "<think>", "c" + EOS, "tail"])
    assert stream.text == "ab<think>c" + EOS + "tail"


def test_block_complete_is_set_when_the_block_closes_outside_a_value():
    stream = StreamParser()
    stream.feed('<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="a">')
    stream.feed("x </｜DSML｜tool_calls> y")  # inside the value: part of it
    assert not stream.block_complete
    events = stream.feed("</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>")
    assert stream.block_complete and ToolCallsComplete() in events


def test_block_complete_is_not_set_by_a_block_quoted_in_reasoning():
    stream = StreamParser(thinking=True)
    stream.feed('<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n</｜DSML｜invoke>\n')
    stream.feed("</｜DSML｜tool_calls>")
    assert not stream.block_complete  # it is a call only if the reasoning ends here
    stream.close()
    assert stream.block_complete


def test_a_bare_invoke_starts_a_block_only_when_tools_are_declared():
    text = 'ok <｜DSML｜invoke name="f">\n\n</｜DSML｜invoke>'
    assert StreamParser(tools=[ToolSpec(name="f")]).feed(text)[1] == ToolCallsStarted()
    assert StreamParser().feed(text) == [Visible(text)]


def test_stray_closing_markup_after_a_block_is_not_shown():
    stream = StreamParser()
    events = stream.feed("<｜DSML｜tool_calls></｜DSML｜tool_calls>a</｜DSML｜tool_calls>b")
    assert [e for e in events + stream.close() if isinstance(e, Visible)] == [Visible("ab")]
