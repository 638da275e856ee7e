"""Parsing time is linear in the input: growth between 1x and 4x input, not absolute times.

Each case measures CPU time of the same shape at n and 4n and checks the ratio with generous
slack (a quadratic parser gives 16, a linear one about 4); the machine may be busy, so the
best of three runs counts. One absolute bound guards the common case: a 1 MB block.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from agentcore.dsml import StreamParser, parse_completion, render_tool_calls
from agentcore.messages import ToolCall, ToolSpec

TOOLS = [ToolSpec(name="f")]


def _best(run: Callable[[], object]) -> float:
    times = []
    for _ in range(3):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def _invokes(n: int) -> str:
    one = '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="a" string="true">{}</｜DSML｜parameter>\n</｜DSML｜invoke>'
    return "<｜DSML｜tool_calls>\n" + "\n".join(one.format(i) for i in range(n)) + "\n</｜DSML｜tool_calls>"


def _streamed(text: str, size: int = 4) -> None:
    parser = StreamParser(tools=TOOLS)
    for i in range(0, len(text), size):
        parser.feed(text[i : i + size])
    parser.close()


SHAPES: dict[str, tuple[Callable[[int], str], Callable[[str], object], int]] = {
    "invokes": (_invokes, parse_completion, 2_500),
    "nested_invokes": (lambda n: "<｜DSML｜tool_calls>" + '<｜DSML｜invoke name="f">' * n,
                       parse_completion, 5_000),
    "nested_blocks": (lambda n: "<｜DSML｜tool_calls>" * n, parse_completion, 10_000),
    "lone_angles": (lambda n: "<" * n, parse_completion, 50_000),
    "never_closing_tag_streamed": (lambda n: '<｜DSML｜invoke name="' + "a" * n, _streamed, 25_000),
    "never_closing_value_streamed": (
        lambda n: '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="a">'
        + "b<" * n, _streamed, 12_500),
    "whitespace_flood_streamed": (lambda n: "a" + " " * n, _streamed, 25_000),
    "reasoning_streamed": (lambda n: "<think>" + "x<｜" * n, _streamed, 10_000),
}  # fmt: skip


@pytest.mark.parametrize("shape", list(SHAPES))
def test_parse_time_grows_linearly_with_input(shape):
    make, run, n = SHAPES[shape]
    small, large = make(n), make(4 * n)
    ratio = _best(lambda: run(large)) / max(_best(lambda: run(small)), 1e-3)
    assert ratio < 9, f"{shape}: 4x the input took {ratio:.1f}x the time"


def test_a_one_megabyte_block_parses_well_under_a_second():
    value = "x < y && z > w\n" * 70_000
    block = render_tool_calls([ToolCall(id="c", name="f", arguments={"a": value})])
    assert len(block.encode()) > 1_000_000
    assert _best(lambda: parse_completion(block)) < 0.5
    many = _invokes(10_000)  # a megabyte of small invokes: the costly kind of block
    assert len(many.encode()) > 1_000_000
    assert _best(lambda: parse_completion(many)) < 2.0
