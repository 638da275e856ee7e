"""ToolCallConstraint over SmolLM2's real vocabulary, driven by random and adversarial "models".

A model here is a policy: at an ``Allowed`` step it takes a random allowed token, or the
lowest or highest allowed id (adversarial: long runs of "!", never a closing tag); at a free
step it writes ordinary text, and in "auto" turns then opens a tool_calls block itself.
Whatever it does, the turn must end ``done`` within a bounded number of steps, and the text
must parse into one call to a registered tool with schema-valid arguments.
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import pytest
from pydantic import BaseModel, Field

from agentcore.dsml import TOOL_CALLS_START, parse_completion
from agentcore.engine.decode.constrain import Allowed, Forced, ToolCallConstraint
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.tools import tool

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer: Tokenizer) -> Tokenizer:
    return smollm2_tokenizer


# ---------------------------------------------------------------------------- tools


@tool
def read_file(
    path: str,
    start_line: Annotated[int, Field(ge=1)] = 1,
    end_line: Annotated[int, Field(ge=1)] | None = None,
) -> str:
    """Read a file."""
    return ""


@tool
def search(
    query: str,
    max_results: int,
    case_sensitive: bool = False,
    mode: Literal["regex", "literal"] = "literal",
    tags: list[str] | None = None,
) -> str:
    """Search the workspace."""
    return ""


@tool
def configure(level: Literal["low", "high"], enabled: bool, weight: float = 1.0) -> str:
    """Set the level."""
    return ""


@tool
def ping() -> str:
    """No arguments."""
    return ""


class Point(BaseModel):
    x: int
    y: float
    label: str | None = None


@tool
def plot(
    points: list[Point],
    scale: dict[str, float],
    size: int | None,
    origin: Point,
    grid: list[list[bool]],
    offset: Annotated[float, Field(ge=0)] = 0.0,
) -> str:
    """JSON values of every shape."""
    return ""


TOOLS = {t.name: t for t in (read_file, search, configure, ping)}
SPECS = [t.spec for t in TOOLS.values()]
EPISODES = 200
MAX_STEPS = 600  # > 5 parameters x (64 value tokens + name choices) + forced steps


# ---------------------------------------------------------------------------- driving


def lowest(rng: np.random.Generator, mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def highest(rng: np.random.Generator, mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[-1])


def uniform(rng: np.random.Generator, mask: np.ndarray) -> int:
    return int(rng.choice(np.flatnonzero(mask)))


POLICIES = (uniform, lowest, highest)


@dataclass
class Episode:
    text: str = ""
    kinds: list[str] = field(default_factory=list)  # per step: forced | allowed | free
    seconds: list[float] = field(default_factory=list)  # time in next() per step
    done: bool = False


def drive(
    constraint: ToolCallConstraint,
    tok: Tokenizer,
    rng: np.random.Generator,
    pick: Callable[[np.random.Generator, np.ndarray], int],
    free: Callable[[int], int],
    max_steps: int = MAX_STEPS,
) -> Episode:
    """One turn as the engine runs it: Forced ids are appended, Allowed steps take
    ``pick(rng, mask)``, free steps take ``free(step)``; text is decoded incrementally."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    episode = Episode()
    for step in range(max_steps):
        t0 = time.perf_counter()
        nxt = constraint.next(episode.text)
        episode.seconds.append(time.perf_counter() - t0)
        if constraint.done:
            episode.done = True
            return episode
        if isinstance(nxt, Forced):
            assert nxt.ids and tok.decode(nxt.ids) == nxt.text
            ids, kind = nxt.ids, "forced"
        elif isinstance(nxt, Allowed):
            check_mask(nxt.mask, tok)
            ids, kind = [pick(rng, nxt.mask)], "allowed"
        else:
            ids, kind = [free(step)], "free"
        episode.kinds.append(kind)
        episode.text += "".join(decoder.decode(tok.token_bytes(i)) for i in ids)
    return episode


def check_mask(mask: np.ndarray, tok: Tokenizer) -> None:
    assert mask.dtype == bool and mask.shape == (tok.vocab_size,)
    assert mask.any()
    assert not mask[list(tok.special_ids.values())].any(), "a control token is allowed"
    assert not mask.flags.writeable


@pytest.fixture(scope="module")
def prose(tok) -> np.ndarray:
    """Ids of ordinary prose tokens (letters, digits, spaces, light punctuation)."""
    plain = re.compile(r"[ A-Za-z0-9.,!?']+")
    return np.array(
        [i for i in range(tok.vocab_size) if plain.fullmatch(tok.decode([i]))], dtype=np.int64
    )


def writer(prose: np.ndarray, rng: np.random.Generator, script: list[int]) -> Callable[[int], int]:
    """A free-text policy: ``script`` token by token, then random prose."""
    queue = list(script)
    return lambda step: queue.pop(0) if queue else int(rng.choice(prose))


def never(step: int) -> int:
    raise AssertionError("a constrained turn asked the model for free text")


def the_call(episode: Episode, tools: dict[str, Any] = TOOLS):
    """The single call the episode's text parses into, checked against its tool's schema."""
    assert episode.done, f"not done after {len(episode.kinds)} steps: {episode.text[-300:]!r}"
    parsed = parse_completion(episode.text, tools=[t.spec for t in tools.values()])
    assert not parsed.errors and not parsed.incomplete, (parsed.errors, episode.text)
    assert len(parsed.tool_calls) == 1, episode.text
    call = parsed.tool_calls[0]
    assert call.name in tools
    schema = tools[call.name].spec.parameters
    properties = schema.get("properties", {})
    assert set(schema.get("required", ())) <= set(call.arguments), episode.text
    assert list(call.arguments) == [p for p in properties if p in call.arguments], "schema order"
    for name, value in call.arguments.items():
        assert conforms(value, properties[name]), (name, value, episode.text)
        if properties[name].get("type") == "string" and "enum" not in properties[name]:
            assert value and not set(value) & set("<\r\n"), "a raw value is one line of text"
    tools[call.name].arguments_model.model_validate(call.arguments)
    return call


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """JSON-schema type check with Python types (an int is not a bool, nor a bool an int)."""
    if "enum" in schema:
        return value in schema["enum"] and type(value) in {type(v) for v in schema["enum"]}
    if "anyOf" in schema:
        return any(conforms(value, alternative) for alternative in schema["anyOf"])
    kind = schema.get("type")
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "array":
        return isinstance(value, list) and all(conforms(v, schema.get("items", {})) for v in value)
    if kind == "object":
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", {})
        return isinstance(value, dict) and all(
            conforms(v, properties.get(k, extra if isinstance(extra, dict) else {}))
            for k, v in value.items()
        )
    return kind is None


# ---------------------------------------------------------------------------- specifications


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.__name__)
def test_required_always_ends_in_one_valid_call(tok, policy):
    names = set()
    for seed in range(EPISODES):
        rng = np.random.default_rng(seed)
        episode = drive(ToolCallConstraint(tok, SPECS, "required"), tok, rng, policy, never)
        names.add(the_call(episode).name)
    if policy is uniform:
        assert names == set(TOOLS), "a random model reaches every tool"


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.__name__)
def test_named_tool_choice_always_calls_that_tool(tok, policy):
    for seed in range(EPISODES):
        name = list(TOOLS)[seed % len(TOOLS)]
        rng = np.random.default_rng(seed)
        constraint = ToolCallConstraint(tok, SPECS, {"name": name})
        assert the_call(drive(constraint, tok, rng, policy, never)).name == name


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.__name__)
def test_auto_takes_over_once_the_model_opens_a_block(tok, prose, policy):
    for seed in range(EPISODES):
        rng = np.random.default_rng(seed)
        opening = (TOOL_CALLS_START, "<|DSML|tool_calls>")[seed % 2]
        content = [int(i) for i in rng.choice(prose, size=seed % 12)]
        free = writer(prose, rng, content + tok.encode(opening))
        episode = drive(ToolCallConstraint(tok, SPECS, "auto"), tok, rng, policy, free)
        the_call(episode)
        kinds = episode.kinds
        constrained = next(k for k, kind in enumerate(kinds) if kind != "free")
        assert "free" not in kinds[constrained:], "constrained for good once the block began"
        assert parse_completion(episode.text).content == tok.decode(content).rstrip()


def test_auto_leaves_ordinary_text_alone(tok):
    texts = [
        "Sure! Here is the plan: read a < b, then x<y and <b>bold</b>.",
        "<think>maybe a tool?</think>No tool is needed: 3 < 4 and <div> is HTML.",
    ]
    constraint = ToolCallConstraint(tok, SPECS, "auto")
    for text in texts:
        for end in range(len(text) + 1):
            assert constraint.next(text[:end]) is None
        assert not constraint.done


def test_auto_commits_at_two_characters_of_the_opening(tok):
    constraint = ToolCallConstraint(tok, SPECS, "auto")
    assert constraint.next("Let me check.\n\n<") is None
    forced = constraint.next("Let me check.\n\n<｜")
    assert isinstance(forced, Forced)
    assert forced.text == 'DSML｜tool_calls>\n<｜DSML｜invoke name="'


def test_none_never_constrains(tok, prose):
    for seed in range(EPISODES):
        rng = np.random.default_rng(seed)
        free = writer(prose, rng, tok.encode(TOOL_CALLS_START + '\n<｜DSML｜invoke name="'))
        constraint = ToolCallConstraint(tok, SPECS, "none")
        episode = drive(constraint, tok, rng, uniform, free, max_steps=40)
        assert set(episode.kinds) == {"free"} and not episode.done


def test_required_forces_the_opening_on_the_first_step(tok):
    first = ToolCallConstraint(tok, SPECS, "required").next("")
    assert isinstance(first, Forced)
    assert first.text == TOOL_CALLS_START + '\n<｜DSML｜invoke name="'


def test_a_fixed_tool_is_forced_up_to_its_first_value(tok):
    first = ToolCallConstraint(tok, SPECS, {"name": "read_file"}).next("")
    assert isinstance(first, Forced)
    assert first.text == (
        TOOL_CALLS_START
        + '\n<｜DSML｜invoke name="read_file">\n<｜DSML｜parameter name="path" string="true">'
    )


def test_a_tool_without_parameters_is_forced_whole(tok):
    constraint = ToolCallConstraint(tok, [TOOLS["ping"].spec], "required")
    first = constraint.next("")
    assert isinstance(first, Forced)
    assert constraint.next(first.text) is None and constraint.done
    assert parse_completion(first.text).tool_calls[0].name == "ping"


def test_tool_names_are_chosen_by_prefix(tok):
    constraint = ToolCallConstraint(tok, SPECS, "required")
    opening = constraint.next("").text
    allowed = constraint.next(opening)
    assert isinstance(allowed, Allowed)
    texts = {tok.decode([i]) for i in np.flatnonzero(allowed.mask)}
    assert {"read", "search", "ping"} <= texts
    assert all(any(f'{n}">'.startswith(t) for n in TOOLS) for t in texts)
    forced = constraint.next(opening + "conf")
    assert isinstance(forced, Forced) and forced.text.startswith('igure">\n')


def test_string_flag_follows_the_schema_type(tok):
    seen = set()
    for seed in range(60):
        rng = np.random.default_rng(seed)
        text = drive(ToolCallConstraint(tok, SPECS, "required"), tok, rng, uniform, never).text
        call = the_call(Episode(text, done=True))
        properties = TOOLS[call.name].spec.parameters["properties"]
        for name, flag in re.findall(r'parameter name="(\w+)" string="(true|false)"', text):
            admits_string = properties[name].get("type") == "string" or "enum" in properties[name]
            assert (flag == "true") == admits_string, (name, flag)
            seen.add(flag)
    assert seen == {"true", "false"}


def test_optional_parameters_are_sometimes_written_and_sometimes_skipped(tok):
    written = []
    for seed in range(EPISODES):
        rng = np.random.default_rng(seed)
        constraint = ToolCallConstraint(tok, SPECS, {"name": "search"})
        written.append(set(the_call(drive(constraint, tok, rng, uniform, never)).arguments))
    for optional in ("case_sensitive", "mode", "tags"):
        assert any(optional in w for w in written) and any(optional not in w for w in written)


def test_raw_string_values_stop_at_the_token_cap(tok):
    constraint = ToolCallConstraint(tok, SPECS, {"name": "read_file"}, max_value_tokens=5)
    episode = drive(constraint, tok, np.random.default_rng(0), lowest, never)
    # forced up to the path value, five sampled tokens that never close it, forced close
    assert episode.kinds[:7] == ["forced"] + ["allowed"] * 5 + ["forced"]
    assert the_call(episode).arguments["path"]


def test_json_values_of_every_shape_parse_to_their_type(tok):
    for seed in range(EPISODES):
        rng = np.random.default_rng(seed)
        constraint = ToolCallConstraint(tok, [plot.spec], "required", max_value_tokens=24)
        episode = drive(constraint, tok, rng, POLICIES[seed % len(POLICIES)], never)
        call = the_call(episode, {"plot": plot})
        assert "origin" in call.arguments and "grid" in call.arguments


def test_an_optional_parameter_can_be_chosen_without_a_fullwidth_bar_token(tok):
    constraint = ToolCallConstraint(tok, SPECS, {"name": "read_file"})
    text = constraint.next("").text + "a.txt<"
    text += constraint.next(text).text  # closes the path; what follows is a choice
    assert text.endswith("</｜DSML｜parameter>\n<")  # every option starts with "<"
    after = constraint.next(text)
    assert isinstance(after, Allowed)
    assert {tok.decode([i]) for i in np.flatnonzero(after.mask)} == {"|", "/"}
    step = constraint.next(text + "|")  # SmolLM2 has no token for "｜": ASCII bars pick one
    assert isinstance(step, Forced) and step.text == 'DSML|parameter name="'


def test_closing_the_invoke_is_forced_in_canonical_spelling(tok):
    constraint = ToolCallConstraint(tok, SPECS, {"name": "read_file"})
    text = constraint.next("").text + "a.txt<"
    text += constraint.next(text).text
    step = constraint.next(text + "/")
    assert isinstance(step, Forced) and step.text == "｜DSML｜invoke>\n</｜DSML｜tool_calls>"


def test_masks_cover_every_logit_of_a_padded_vocabulary(tok):
    constraint = ToolCallConstraint(tok, SPECS, "required", vocab_size=tok.vocab_size + 64)
    names = constraint.next(constraint.next("").text)
    assert names.mask.shape == (tok.vocab_size + 64,) and not names.mask[tok.vocab_size :].any()


def test_thinking_keeps_the_block_out_of_reasoning(tok):
    auto = ToolCallConstraint(tok, SPECS, "auto", thinking=True)
    assert auto.next("let me write <｜DSML｜tool_calls>") is None
    assert isinstance(auto.next("let me write <｜DSML｜tool_calls></think>\n\n<｜"), Forced)

    required = ToolCallConstraint(tok, SPECS, "required", thinking=True)
    assert required.next("I should read the file") is None
    forced = required.next("I should read the file</think>")
    assert isinstance(forced, Forced) and forced.text.startswith(TOOL_CALLS_START)


def test_unknown_tool_choice_is_refused(tok):
    with pytest.raises(ValueError, match="not a tool here"):
        ToolCallConstraint(tok, SPECS, {"name": "delete_everything"})
    with pytest.raises(ValueError, match="tool_choice must be"):
        ToolCallConstraint(tok, SPECS, "always")


def test_constrained_steps_take_under_five_ms(tok):
    seconds: dict[str, list[float]] = {"forced": [], "allowed": []}
    for seed in range(EPISODES):
        rng = np.random.default_rng(seed)
        constraint = ToolCallConstraint(tok, SPECS, "required")
        episode = drive(constraint, tok, rng, POLICIES[seed % 3], never)
        for kind, s in zip(episode.kinds, episode.seconds):
            seconds[kind].append(s)
    for kind, values in seconds.items():
        ms = np.array(values) * 1000
        print(f"{kind}: {len(ms)} steps, mean {ms.mean():.3f} ms, p99 "
              f"{np.percentile(ms, 99):.3f} ms, max {ms.max():.3f} ms")  # fmt: skip
        assert ms.mean() < 5.0


@pytest.mark.parametrize("dialect", ["v3.2", "v4.1"])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.__name__)
def test_the_block_is_written_in_the_models_dialect(tok, prose, policy, dialect):
    # A V3.2 model's block is <｜DSML｜function_calls>, a V4.1 model's has the spaced tags: the
    # constraint (given the chat format's dialect) writes the model's own, required or taken
    # over once the model opens one, and every one parses into one valid call in that dialect.
    from agentcore.dsml import DIALECTS

    d = DIALECTS[dialect]
    opening, closing = f"<｜DSML｜{d.block}>", f"</｜DSML｜{d.block}>"
    for seed in range(EPISODES // 2):
        rng = np.random.default_rng(seed)
        episode = drive(ToolCallConstraint(tok, SPECS, "required", dialect=d), tok, rng, policy, never)
        the_call(episode)
        assert episode.text.startswith(opening + "\n") and episode.text.endswith(closing)
        assert f"<｜DSML｜{d.invoke} name=" in episode.text and "tool_calls" not in episode.text
        free = writer(prose, rng, tok.encode("Let me look. " + opening))
        episode = drive(ToolCallConstraint(tok, SPECS, "auto", dialect=d), tok, rng, policy, free)
        the_call(episode)
        assert episode.text.endswith(closing)
    # The V4 opening is plain text to a V3.2 model's constraint: nothing is taken over.
    constraint = ToolCallConstraint(tok, SPECS, "auto", dialect=DIALECTS["v3.2"])
    assert constraint.next("<｜DSML｜tool_calls>\n") is None
