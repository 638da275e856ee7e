"""A generated corpus of DSML shapes real models write, mutated: the parser's properties.

Each shape is a completion built from known calls and known prose, then varied in dialect,
bar spelling, whitespace, missing or extra tags, nesting, cut points, unicode and reasoning.
Properties, for every shape:
- a shape that parses to calls leaks no markup into visible content;
- prose that is not DSML is never lost;
- streaming, however the text is cut, gives exactly what parsing the whole gives;
- a shape whose calls are known gives exactly those calls; a cut-off one gives none.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from itertools import pairwise

import pytest

from agentcore.dsml import (
    EOS,
    Reasoning,
    StreamParser,
    Visible,
    completion_of,
    parse_completion,
)
from agentcore.dsml.markup import KNOWN_NAMES, Tag, scan_tag
from agentcore.messages import ToolSpec

TOOLS = [
    ToolSpec(
        name="get_weather",
        parameters={
            "type": "object",
            "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
        },
    ),
    ToolSpec(name="now"),
    ToolSpec(
        name="search",
        parameters={
            "type": "object",
            "properties": {"query": {"type": "string"}, "filters": {"type": "object"}},
        },
    ),
]
VALUES = [
    "Beijing", "臺北 天氣", "a < b && c > d", "line1\nline2\r\n", " padded ", "🙂‍↔️ emoji",
    "שלום עולם", "zero\u200bwidth", 'say "hi"', "<b>bold</b>", "&amp; stays", "</think>",
    "x</｜DSML｜invoke>y", "",
]  # fmt: skip
PROSE = [
    "Let me check.", "好的，我查一下。", "The prefix <｜DSML｜invoke is reserved.",
    "Use a < b and c > d.", "Done: 100% <ok>", "Über-naïve café",
]  # fmt: skip
DIALECTS = {
    "v3.2": ("function_calls", "invoke", "parameter"),
    "v4": ("tool_calls", "invoke", "parameter"),
    "v4.1": (" calls", " invoke", " parameter"),
}
BARS = {"full": ("｜", "｜"), "ascii": ("|", "|"), "dropped": ("", "｜")}


@dataclass
class Shape:
    text: str
    thinking: bool
    expected: list | None  # the calls as [name, arguments], or None when not fixed
    prose: list[str]  # visible prose that must come back
    cut: bool = False


def _calls(rng: random.Random) -> list[list]:
    out = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["get_weather", "now", "search"])
        if kind == "get_weather":
            args = {"location": rng.choice(VALUES), "days": rng.randint(0, 9)}
        elif kind == "now":
            args = {}
        else:
            args = {"query": rng.choice(VALUES), "filters": {"lang": ["zh", "en"], "safe": True}}
        out.append([kind, args])
    return out


class _Writer:
    def __init__(self, rng: random.Random, dialect: str, bars: str) -> None:
        self.rng, self.names, self.bars = rng, DIALECTS[dialect], bars

    def tag(self, kind: int, closing: bool = False, attrs: str = "") -> str:
        bars = self.bars if self.bars != "mixed" else self.rng.choice(list(BARS))
        first, second = BARS[bars]
        return f"<{'/' if closing else ''}{first}DSML{second}{self.names[kind]}{attrs}>"

    def invoke(self, name: str, args: dict, sep: str, *, end: bool = True, body: str = "") -> str:
        parts = [self.tag(1, attrs=f' name="{name}"')]
        if body == "json":
            parts.append(json.dumps(args, ensure_ascii=False))
        elif body == "wrapper" and args:
            parts.append(self.parameter("arguments", args))
        else:
            parts += [self.parameter(k, v) for k, v in args.items()]
        if end:
            parts.append(self.tag(1, closing=True))
        return sep.join(parts)

    def parameter(self, key: str, value) -> str:
        kind = "true" if isinstance(value, str) else "false"
        raw = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        opening = self.tag(2, attrs=f' name="{key}" string="{kind}"')
        return f"{opening}{raw}{self.tag(2, closing=True)}"

    def block(self, calls: list[list], sep: str, *, end: bool = True, **kw) -> str:
        body = [self.invoke(n, a, sep, **kw) for n, a in calls]
        tail = [self.tag(0, closing=True)] if end else []
        return sep.join([self.tag(0), *body, *tail])


MUTATIONS = [
    "plain", "missing_invoke_end", "bare", "missing_block_end_eos", "missing_block_end",
    "stray_close", "json_body", "wrapper", "think_unclosed", "think_quoted", "think_closed",
    "cut", "nested", "two_blocks", "dialect_mix", "duplicate_attr", "text_after",
]  # fmt: skip


def _shape(rng: random.Random, mutation: str) -> Shape:
    dialect = rng.choice(list(DIALECTS))
    w = _Writer(rng, dialect, rng.choice([*BARS, "mixed"]))
    calls = _calls(rng)
    sep = rng.choice(["\n", "", "\n\n", " \n", "\t"])
    gap = rng.choice(["\n\n", "", "\n\n\n\n", " "])
    prose = rng.choice(PROSE)
    text, expected, thinking, kept = None, calls, False, [prose]
    if mutation == "plain":
        text = prose + gap + w.block(calls, sep)
    elif mutation == "missing_invoke_end":
        invokes = [w.invoke(n, a, sep, end=False) for n, a in calls]
        text = prose + gap + sep.join([w.tag(0), *invokes, w.tag(0, closing=True)])
    elif mutation == "bare":
        text = prose + gap + "\n".join(w.invoke(n, a, sep) for n, a in calls)
    elif mutation == "missing_block_end_eos":
        text = prose + gap + w.block(calls, sep, end=False) + sep + EOS
    elif mutation == "missing_block_end":
        text, expected = prose + gap + w.block(calls, sep, end=False), []
    elif mutation == "stray_close":
        text = prose + gap + w.block(calls, sep) + w.tag(0, True) + w.tag(1, True)
    elif mutation == "json_body":
        text = prose + gap + w.block(calls, sep, body="json")
        if "DSML" in json.dumps(calls, ensure_ascii=False):
            expected = None  # a JSON body is read between tags: it cannot hold a DSML tag
    elif mutation == "wrapper":
        text = prose + gap + w.block(calls, sep, body="wrapper")
    elif mutation == "think_unclosed":
        thinking, kept = True, []
        text = prose + " " + w.block(calls, sep) + rng.choice(["", "\n", EOS])
    elif mutation == "think_quoted":
        thinking, kept, expected = True, [], []
        text = prose + " " + w.block(calls, sep) + " so I won't."
    elif mutation == "think_closed":
        thinking, kept = True, [prose]
        quoted = w.block(_calls(rng), sep)
        text = "thinking " + quoted + " no.</think>" + prose + gap + w.block(calls, sep)
    elif mutation == "cut":
        whole = prose + gap + w.block(calls, sep)
        start = len(prose) + len(gap) + 1
        at = rng.randint(start, len(whole) - 1)
        return Shape(whole[:at], False, [], [prose.rstrip()] if gap.strip() == "" else [], cut=True)
    elif mutation == "nested":
        inner = w.invoke(*calls[0], sep)
        outer = w.tag(1, attrs=' name="now"') + sep + inner + sep + w.tag(1, True)
        text, expected = prose + gap + sep.join([w.tag(0), outer, w.tag(0, True)]), None
    elif mutation == "two_blocks":
        more = _calls(rng)
        text = prose + gap + w.block(calls, sep) + "\n\n" + w.block(more, sep)
        expected = calls + more
    elif mutation == "dialect_mix":
        other = _Writer(rng, rng.choice(list(DIALECTS)), w.bars)
        body = [other.invoke(n, a, sep) for n, a in calls]
        text = prose + gap + sep.join([w.tag(0), *body, w.tag(0, True)])
    elif mutation == "duplicate_attr":
        name = calls[0][0]
        dup = w.tag(1, attrs=f' name="{name}" name="search"') + sep + w.tag(1, True)
        text, expected = prose + gap + sep.join([w.tag(0), dup, w.tag(0, True)]), []
    elif mutation == "text_after":
        after = rng.choice(PROSE)
        text, kept = prose + gap + w.block(calls, sep) + "\n" + after, [prose, after]
    assert text is not None
    return Shape(text, thinking, expected, kept)


def corpus(size: int = 680, seed: int = 20260930) -> list[Shape]:
    rng = random.Random(seed)
    return [_shape(rng, MUTATIONS[i % len(MUTATIONS)]) for i in range(size)]


CORPUS = corpus()


def _parse(shape: Shape):
    return parse_completion(shape.text, thinking=shape.thinking, tools=TOOLS)


def _streamed(shape: Shape, cuts: list[int]):
    parser = StreamParser(thinking=shape.thinking, tools=TOOLS)
    bounds = [0, *sorted(set(cuts)), len(shape.text)]
    events = [e for a, b in pairwise(bounds) for e in parser.feed(shape.text[a:b])]
    events += parser.close()
    return completion_of(parser, events, TOOLS), events


def _typed(calls) -> str:
    return json.dumps([[c.name, c.arguments] for c in calls], ensure_ascii=False)


def _markup_in(text: str) -> list[str]:
    found = [m for m in ("<think>", "</think>") if m in text]
    for i, ch in enumerate(text):
        if ch == "<":
            tag = scan_tag(text, i)
            if isinstance(tag, Tag) and tag.name in KNOWN_NAMES:
                found.append(tag.text)
    return found


def test_the_corpus_has_at_least_500_shapes_of_every_mutation():
    assert len(CORPUS) >= 500
    assert len({s.text for s in CORPUS}) >= 500


@pytest.mark.parametrize("part", range(4))
def test_a_shape_parsed_as_calls_leaks_no_markup_into_content(part):
    for shape in CORPUS[part::4]:
        parsed = _parse(shape)
        if parsed.tool_calls:
            assert _markup_in(parsed.content) == [], shape.text


@pytest.mark.parametrize("part", range(4))
def test_prose_that_is_not_dsml_is_never_lost(part):
    for shape in CORPUS[part::4]:
        parsed = _parse(shape)
        for prose in shape.prose:
            assert prose.rstrip() in parsed.content, (shape.text, parsed.content)


@pytest.mark.parametrize("part", range(4))
def test_known_calls_come_back_and_cut_shapes_invent_none(part):
    for shape in CORPUS[part::4]:
        parsed = _parse(shape)
        if shape.cut:
            assert parsed.tool_calls == [], shape.text
        elif shape.expected is not None:
            assert _typed(parsed.tool_calls) == json.dumps(shape.expected, ensure_ascii=False), (
                shape.text,
                parsed.errors,
            )
        assert not (parsed.incomplete and parsed.tool_calls)


@pytest.mark.parametrize("part", range(4))
def test_streaming_in_any_cut_equals_parsing_the_whole(part):
    rng = random.Random(part)
    for shape in CORPUS[part::4]:
        whole = _parse(shape).model_dump()
        n = len(shape.text)
        for cuts in (
            [rng.randint(0, n) for _ in range(rng.randint(1, 12))],
            list(range(0, n, 4)),
            list(range(n)) if n < 400 else list(range(0, n, 3)),
        ):
            streamed, events = _streamed(shape, cuts)
            assert streamed.model_dump() == whole, shape.text
            visible = "".join(e.text for e in events if isinstance(e, Visible))
            thought = "".join(e.text for e in events if isinstance(e, Reasoning))
            assert visible == whole["content"] and thought == (whole["reasoning"] or "")


def _golden_turns():
    """Assistant turns as DeepSeek's own encoders wrote them (chat mode), with their calls."""
    from pathlib import Path

    root = Path(__file__).parent / "data" / "dsml"
    for dialect in ("v4", "v4.1"):
        data = json.loads((root / f"{dialect}.json").read_text(encoding="utf-8"))
        for case in data["cases"]:
            if case["options"]["thinking"]:
                continue
            turns = [t.split(EOS)[0] + EOS for t in case["prompt"].split("<｜Assistant｜></think>")[1:]]
            assistants = [m for m in case["messages"] if m["role"] == "assistant"]
            yield from (
                (dialect, turn, [[c["name"], c.get("arguments", {})] for c in m.get("tool_calls", [])])
                for turn, m in zip(turns, assistants, strict=False)
            )


def test_turns_written_by_the_official_encoders_parse_back_in_any_chunking():
    rng = random.Random(263)
    turns = list(_golden_turns())
    assert sum(1 for _, _, calls in turns if calls) >= 6
    for dialect, turn, calls in turns:
        shape = Shape(turn, False, calls, [])
        parsed = _parse(shape)
        assert _typed(parsed.tool_calls) == json.dumps(calls, ensure_ascii=False), (dialect, turn)
        for _ in range(263 // 8):
            cuts = [rng.randint(0, len(turn)) for _ in range(rng.randint(1, 40))]
            assert _streamed(shape, cuts)[0] == parsed
