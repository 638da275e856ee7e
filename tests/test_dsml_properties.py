"""Properties: rendered calls parse back exactly; streaming agrees with whole parsing."""

import json
import re
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from agentcore.dsml import (
    EOS,
    Reasoning,
    StreamParser,
    ToolCallsComplete,
    ToolCallsStarted,
    Visible,
    completion_of,
    parse_completion,
    render_tool_calls,
)
from agentcore.messages import ToolCall

# The EOS text ends generation wherever it appears, so no value can hold it. Nothing else is
# excluded: markup, entities and even the closing parameter tag (which the renderer writes
# as a JSON string, since a raw value cannot hold it) must come back byte-exact.
FRAGMENTS = [
    "<", ">", "&", "&amp;", "&&", "]]>", "<![CDATA[", '"', "'", "\n", "\r\n", " ", "\t",
    "｜DSML｜", '<｜DSML｜invoke name="x">', "</｜DSML｜invoke>", "</｜DSML｜tool_calls>",
    "<｜DSML｜parameter", "</｜DSML｜parameter>", "</DSML|parameter>", "</｜DSML｜parame",
    "<think>", "</think>", '{"a": 1}', "42", "null",
]  # fmt: skip

# Markup that splits a completion; visible text must never carry one of these.
MARKERS = re.compile(r"<think>|</think>|</?[｜|]?DSML[｜|]")

raw_text = (
    st.lists(st.one_of(st.text(), st.sampled_from(FRAGMENTS)), max_size=6)
    .map("".join)
    .filter(lambda s: EOS not in s)
)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | raw_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(raw_text, inner, max_size=3),
    max_leaves=8,
)
calls = st.lists(
    st.builds(
        lambda name, arguments: ToolCall(id="unused", name=name, arguments=arguments),
        names,
        st.dictionaries(names, raw_text | json_values, max_size=4),
    ),
    min_size=1,
    max_size=3,
)
# Content as a model writes it before a block: no markup, no trailing whitespace.
content = st.text().filter(lambda s: not MARKERS.search(s) and EOS not in s and s == s.rstrip())
reasoning = st.text().filter(lambda s: "</think>" not in s and EOS not in s)

noise = st.one_of(
    st.text(max_size=5),
    st.sampled_from(
        FRAGMENTS
        + [
            "<｜DSML｜tool_calls>", '<|DSML|invoke name="f">', "</DSML｜tool_calls>",
            '<DSML｜parameter name="a" string="false">', "</|DSML|invoke>", "<｜DSML｜invoke>",
            EOS, "<｜end▁of", "▁sentence｜>", "<｜DS",
        ]
    ),
)  # fmt: skip


@st.composite
def messy(draw) -> str:
    """A well-formed completion, then cut short and corrupted by a few random edits."""
    text = draw(st.sampled_from(["", "<think>", "</think>"])) + draw(content)
    text += render_tool_calls(draw(calls)) + draw(st.sampled_from(["", EOS, " tail"]))
    text = text[: draw(st.integers(0, len(text)))] if draw(st.booleans()) else text
    for _ in range(draw(st.integers(0, 3))):
        at, removed = draw(st.integers(0, len(text))), draw(st.integers(0, 8))
        text = text[:at] + draw(noise) + text[at + removed :]
    return text


def typed(calls_: list[ToolCall]) -> str:
    """Names and arguments with their JSON types (so "5" differs from 5, and 1 from True)."""
    return json.dumps([[c.name, c.arguments] for c in calls_], ensure_ascii=False)


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted({min(c, len(text)) for c in cuts}), len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


def stream(chunks: list[str], thinking: bool) -> list:
    parser = StreamParser(thinking=thinking)
    return [e for chunk in chunks for e in parser.feed(chunk)] + parser.close()


@settings(deadline=None)
@given(calls)
def test_rendered_calls_parse_back_to_the_same_names_and_arguments(calls_):
    parsed = parse_completion(render_tool_calls(calls_))
    assert parsed.errors == [] and not parsed.incomplete and parsed.content == ""
    assert typed(parsed.tool_calls) == typed(calls_)


@settings(deadline=None)
@given(content, calls)
def test_content_followed_by_rendered_calls_parses_back_exactly(content_, calls_):
    parsed = parse_completion(content_ + render_tool_calls(calls_) + EOS)
    assert parsed.content == content_ and parsed.errors == []
    assert typed(parsed.tool_calls) == typed(calls_)


@settings(deadline=None)
@given(st.booleans(), reasoning, content, calls, st.data())
def test_streaming_in_any_split_agrees_with_parsing(thinking, thought, content_, calls_, data):
    text = (thought + "</think>" if thinking else "") + content_ + render_tool_calls(calls_) + EOS
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=25))
    events = stream(split(text, cuts), thinking)
    parsed = parse_completion(text, thinking=thinking)
    assert "".join(e.text for e in events if isinstance(e, Visible)) == parsed.content == content_
    assert [type(e) for e in events if isinstance(e, ToolCallsStarted | ToolCallsComplete)] == [
        ToolCallsStarted,
        ToolCallsComplete,
    ]
    if thinking:
        assert "".join(e.text for e in events if isinstance(e, Reasoning)) == thought


@settings(deadline=None)
@given(st.booleans(), messy(), st.data())
def test_any_text_parses_without_raising_and_streams_the_same_result(thinking, text, data):
    parsed = parse_completion(text, thinking=thinking)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=25))
    parser = StreamParser(thinking=thinking)
    events = [e for chunk in split(text, cuts) for e in parser.feed(chunk)] + parser.close()
    assert completion_of(parser, events, None) == parsed
    shown = "".join(e.text for e in events if isinstance(e, Visible))
    assert shown == parsed.content
    assert "<think>" not in shown and "</think>" not in shown
    thought = "".join(e.text for e in events if isinstance(e, Reasoning))
    assert thought == (parsed.reasoning or "")
    signalled = [type(e) for e in events if isinstance(e, ToolCallsStarted | ToolCallsComplete)]
    pairs = [ToolCallsStarted, ToolCallsComplete] * (len(signalled) // 2)
    assert signalled in (pairs, [*pairs, ToolCallsStarted])
    assert parser.block_complete == (ToolCallsComplete in signalled)
    assert not (parsed.incomplete and parsed.tool_calls)  # a cut-off block yields no call
