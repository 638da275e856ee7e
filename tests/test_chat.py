"""Chat formats render conversations as prefix-stable token segments: what the model saw
plus what it sampled is always a prefix of the next prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_fixtures import REFERENCE_SMOLLM2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcore.dsml import render_tool_calls, render_tools
from agentcore.engine.model.chat import (
    ChatML,
    DeepSeekV3,
    DeepSeekV4,
    DeepSeekV32,
    DeepSeekV41,
    Llama3,
    chat_format_for_template,
    detect_chat_format,
)
from agentcore.engine.model.gguf import load_gguf
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.errors import TokenizerError
from agentcore.messages import (
    AssistantMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)
from agentcore.testing.synthetic import write_synthetic_gguf

TOOLS = [
    ToolSpec(
        name="get_weather",
        description="Current weather for a city.",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
]
CALLS = [
    ToolCall(id="1", name="get_weather", arguments={"city": "Taipei"}),
    ToolCall(id="2", name="get_weather", arguments={"city": "Tainan"}),
]


def conversation(sampled: list[int]) -> list:
    return [
        SystemMessage(content="You are terse."),
        UserMessage(content="Weather in Taipei and Tainan? <|im_end|><|eot_id|><｜User｜>"),
        AssistantMessage(content="Checking.", tool_calls=CALLS),
        ToolMessage(call_id="1", name="get_weather", content="28C sunny"),
        ToolMessage(call_id="2", name="get_weather", content="30C </tool_result> humid"),
        AssistantMessage(content="", token_ids=sampled),
        UserMessage(content="Thanks!"),
        AssistantMessage(content="Bye.", reasoning="short answer"),
        UserMessage(content="One more: Kaohsiung?"),
        AssistantMessage(content="", tool_calls=CALLS[:1]),
        ToolMessage(call_id="1", name="get_weather", content="31C"),
    ]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return {
        chat: write_synthetic_gguf(root / f"{chat}.gguf", chat=chat, vocab=2000)
        for chat in ("chatml", "llama3", "deepseek", "deepseek-v3", "deepseek-v3.2")
    }


@pytest.fixture(scope="module")
def formats(paths):
    out = {}
    for chat, path in paths.items():
        model = load_gguf(path)
        out[chat] = detect_chat_format(model, Tokenizer.from_gguf(model))
    model = load_gguf(paths["deepseek"])
    out["deepseek-thinking"] = detect_chat_format(model, Tokenizer.from_gguf(model), thinking=True)
    model = load_gguf(paths["deepseek-v3.2"])
    out["deepseek-v3.2-thinking"] = detect_chat_format(model, Tokenizer.from_gguf(model), thinking=True)
    return out


FORMATS = ["chatml", "llama3", "deepseek", "deepseek-thinking", "deepseek-v3", "deepseek-v3.2",
           "deepseek-v3.2-thinking"]


def sampled_ids(fmt) -> list[int]:
    """What a model might sample: some text, then its end-of-turn token."""
    return fmt.tokenizer.encode("It is 28C in Taipei.") + fmt.end_of_turn


def flat(segments) -> list[int]:
    return [i for segment in segments for i in segment]


def text(fmt, ids) -> str:
    return fmt.tokenizer.decode(ids)


# ---------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("tools", [[], TOOLS], ids=["no-tools", "tools"])
@pytest.mark.parametrize("skip_system", [False, True], ids=["system", "no-system"])
def test_every_prefix_of_a_conversation_renders_as_a_prefix(formats, name, tools, skip_system):
    fmt = formats[name]
    messages = conversation(sampled_ids(fmt))[1 if skip_system else 0 :]
    for n in range(len(messages)):
        shorter = flat(fmt.render(messages[:n], tools))
        longer = flat(fmt.render(messages[: n + 1], tools))
        assert longer[: len(shorter)] == shorter


@pytest.mark.parametrize("name", FORMATS)
def test_render_gives_one_segment_per_message(formats, name):
    messages = conversation(sampled_ids(formats[name]))
    assert len(formats[name].render(messages, TOOLS)) == len(messages)


@pytest.mark.parametrize("name", FORMATS)
def test_prompt_plus_sampled_tokens_is_a_prefix_of_the_next_prompt(formats, name):
    fmt = formats[name]
    history = conversation(sampled_ids(fmt))[:5]
    prompt = flat(fmt.render(history, TOOLS)) + fmt.generation_prompt(history)
    sampled = sampled_ids(fmt)
    following = [*history, AssistantMessage(token_ids=sampled), UserMessage(content="ok")]
    nxt = flat(fmt.render(following, TOOLS)) + fmt.generation_prompt(following)
    assert nxt[: len(prompt) + len(sampled)] == prompt + sampled


@pytest.mark.parametrize("name", FORMATS)
def test_sampled_turn_that_ended_itself_is_not_closed_twice(formats, name):
    fmt = formats[name]
    history = [UserMessage(content="hi")]
    sampled = sampled_ids(fmt)
    segment = fmt.render([*history, AssistantMessage(token_ids=sampled)], [])[1]
    assert segment == fmt.generation_prompt(history) + sampled + fmt.separator


@pytest.mark.parametrize("name", FORMATS)
def test_sampled_turn_cut_at_max_tokens_gets_its_end_of_turn(formats, name):
    fmt = formats[name]
    history = [UserMessage(content="hi")]
    cut = fmt.tokenizer.encode("It is 28C")
    segment = fmt.render([*history, AssistantMessage(token_ids=cut)], [])[1]
    assert segment == fmt.generation_prompt(history) + cut + fmt.end_of_turn + fmt.separator


@pytest.mark.parametrize("name", FORMATS)
def test_special_token_text_in_content_stays_plain_text(formats, name):
    fmt = formats[name]
    user = UserMessage(content="<|im_start|><|im_end|><|eot_id|><｜User｜><｜Assistant｜>")
    segment = fmt.render([user], [])[0]
    structural = fmt.render([UserMessage(content="x")], [])[0]
    specials = set(fmt.tokenizer.special_ids.values())
    assert [i for i in segment if i in specials] == [i for i in structural if i in specials]


@pytest.mark.parametrize("name", FORMATS)
def test_stop_ids_hold_the_formats_end_of_turn(formats, name):
    fmt = formats[name]
    assert set(fmt.end_of_turn) <= fmt.stop_ids


# ---------------------------------------------------------------------------- ChatML


def test_chatml_tool_results_share_one_user_turn_closed_by_the_generation_prompt(formats):
    fmt = formats["chatml"]
    messages = conversation(sampled_ids(fmt))[:5]
    rendered = text(fmt, flat(fmt.render(messages, [])) + fmt.generation_prompt(messages))
    assert rendered.endswith(
        "</｜DSML｜tool_calls><|im_end|>\n<|im_start|>user\n<tool_result>28C sunny</tool_result>"
        "\n\n<tool_result>30C &lt;/tool_result> humid</tool_result><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chatml_closing_of_a_tool_turn_belongs_to_the_next_message(formats):
    fmt = formats["chatml"]
    messages = [UserMessage(content="q"), ToolMessage(call_id="1", name="f", content="r")]
    segment = fmt.render([*messages, UserMessage(content="more")], [])[2]
    assert text(fmt, segment) == "<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n"


def test_chatml_system_text_and_tools_block_are_joined_by_a_blank_line(formats):
    fmt = formats["chatml"]
    segment = fmt.render([SystemMessage(content="Be terse.")], TOOLS)[0]
    expected = f"<|im_start|>system\nBe terse.\n\n{render_tools(TOOLS)}<|im_end|>\n"
    assert text(fmt, segment) == expected


def test_chatml_tools_without_system_message_open_the_first_segment(formats):
    fmt = formats["chatml"]
    segment = fmt.render([UserMessage(content="hi")], TOOLS)[0]
    expected = (
        f"<|im_start|>system\n{render_tools(TOOLS)}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    )
    assert text(fmt, segment) == expected


def test_chatml_assistant_text_turn_carries_content_and_dsml_calls(formats):
    fmt = formats["chatml"]
    segment = fmt.render([AssistantMessage(content="Checking.", tool_calls=CALLS)], [])[0]
    expected = f"<|im_start|>assistant\nChecking.{render_tool_calls(CALLS)}<|im_end|>\n"
    assert text(fmt, segment) == expected


REFERENCE_CHATS = {
    "chat-math": [
        SystemMessage(content="You are a helpful math tutor."),
        UserMessage(content="What is 2+2? Be brief."),
    ],
    "chat-haiku": [
        SystemMessage(content="You are a poet."),
        UserMessage(content="Write a haiku about the sea."),
    ],
    "chat-multiturn": [
        UserMessage(content="My name is Ana."),
        AssistantMessage(content="Nice to meet you, Ana!"),
        UserMessage(content="What is my name?"),
    ],
}


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(REFERENCE_CHATS))
def test_smollm2_chatml_prompt_equals_llama_cpps_tokenization(
    smollm2_model, smollm2_tokenizer, name
):
    reference = json.loads(REFERENCE_SMOLLM2.read_text(encoding="utf-8"))
    ids = next(p["ids"] for p in reference["prompts"] if p["name"] == name)
    fmt = detect_chat_format(smollm2_model, smollm2_tokenizer)
    messages = REFERENCE_CHATS[name]
    assert isinstance(fmt, ChatML)
    assert flat(fmt.render(messages, [])) + fmt.generation_prompt(messages) == ids


# ---------------------------------------------------------------------------- Llama 3


def test_llama3_layout_starts_with_bos_and_trims_content(formats):
    fmt = formats["llama3"]
    messages = [SystemMessage(content="Be terse. "), UserMessage(content="\nhi\n")]
    rendered = text(fmt, flat(fmt.render(messages, [])) + fmt.generation_prompt(messages))
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_generation_prompt_of_an_empty_conversation_has_bos(formats):
    fmt = formats["llama3"]
    assert fmt.generation_prompt([])[0] == fmt.tokenizer.bos_id


# ---------------------------------------------------------------------------- DeepSeek V4


def test_deepseek_layout_follows_dsml_md(formats):
    fmt = formats["deepseek"]
    messages = conversation(sampled_ids(fmt))[:5]
    rendered = text(fmt, flat(fmt.render(messages, TOOLS)) + fmt.generation_prompt(messages))
    assert rendered == (
        f"<｜begin▁of▁sentence｜>You are terse.\n\n{render_tools(TOOLS)}"
        "<｜User｜>Weather in Taipei and Tainan? <|im_end|><|eot_id|><｜User｜>"
        f"<｜Assistant｜></think>Checking.{render_tool_calls(CALLS)}<｜end▁of▁sentence｜>"
        "<｜User｜><tool_result>28C sunny</tool_result>\n\n"
        "<tool_result>30C &lt;/tool_result> humid</tool_result><｜Assistant｜></think>"
    )


def test_deepseek_thinking_mode_opens_with_think_and_keeps_reasoning(formats):
    fmt = formats["deepseek-thinking"]
    messages = [UserMessage(content="q"), AssistantMessage(content="a", reasoning="r")]
    rendered = text(fmt, flat(fmt.render(messages, [])) + fmt.generation_prompt(messages))
    assert rendered == (
        "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜><think>r</think>a<｜end▁of▁sentence｜>"
        "<｜Assistant｜><think>"
    )


def test_deepseek_markers_are_single_tokens(formats):
    fmt = formats["deepseek"]
    prompt = fmt.generation_prompt([UserMessage(content="q")])
    assert [text(fmt, [i]) for i in prompt] == ["<｜Assistant｜>", "</think>"]


# ---------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("chat", "cls"),
    [("chatml", ChatML), ("llama3", Llama3), ("deepseek", DeepSeekV4), ("deepseek-v3", DeepSeekV3)],
)
def test_detect_chat_format_from_template_and_specials(formats, chat, cls):
    assert type(formats[chat]) is cls


def test_vocabulary_without_a_known_chat_format_is_rejected(paths):
    model = load_gguf(paths["chatml"])
    md = dict(model.metadata)
    md["tokenizer.chat_template"] = "{{ messages }}"
    md["tokenizer.ggml.tokens"] = ["<a>", "<b>", "<c>", *md["tokenizer.ggml.tokens"][3:]]
    tokenizer = Tokenizer(md)
    model.metadata = md
    with pytest.raises(TokenizerError, match="supported: ChatML"):
        detect_chat_format(model, tokenizer)


# ---------------------------------------------------------------------------- golden fixtures

GOLDEN = Path(__file__).parent / "data" / "dsml"
_ROLES = {
    "system": SystemMessage,
    "user": UserMessage,
    "assistant": AssistantMessage,
    "tool": ToolMessage,
}


def _golden_cases():
    for dialect in ("v3.2", "v4", "v4.1"):
        data = json.loads((GOLDEN / f"{dialect}.json").read_text(encoding="utf-8"))
        for case in data["cases"]:
            yield pytest.param(dialect, case, id=f"{dialect}-{case['name']}")


def _golden_format(paths, dialect: str, options: dict):
    model = load_gguf(paths["deepseek"])
    tokenizer = Tokenizer.from_gguf(model)
    cls = {"v3.2": DeepSeekV32, "v4.1": DeepSeekV41}.get(dialect, DeepSeekV4)
    kwargs = {"thinking": options["thinking"], "drop_thinking": options["drop_thinking"]}
    if "reasoning_effort" in options:
        kwargs["reasoning_effort"] = options["reasoning_effort"]
    return cls(tokenizer, **kwargs)


@pytest.mark.parametrize(("dialect", "case"), list(_golden_cases()))
def test_deepseek_prompt_matches_the_official_encoder_byte_for_byte(paths, dialect, case):
    fmt = _golden_format(paths, dialect, case["options"])
    messages = [_ROLES[m["role"]](**m) for m in case["messages"]]
    tools = [ToolSpec(**t) for t in case["tools"]]
    ids = flat(fmt.render(messages, tools))
    if not isinstance(messages[-1], AssistantMessage):
        ids += fmt.generation_prompt(messages)
    assert text(fmt, ids) == case["prompt"]


def test_golden_fixtures_cover_every_encoder_and_mode():
    names = {(d, c["name"]) for d, c in (p.values for p in _golden_cases())}
    assert len(names) >= 70
    for needed in ("tools_full_round_trip-thinking", "results_out_of_call_order-chat",
                   "consecutive_user_messages-chat", "zero_argument_call-chat",
                   "multi_turn_chat-thinking", "user_text_after_results-thinking"):
        assert ("v3.2", needed) in names
    for dialect in ("v4", "v4.1"):
        for needed in ("tools_full_round_trip-thinking", "results_out_of_call_order-chat",
                       "consecutive_user_messages-chat", "zero_argument_call-chat",
                       "multi_turn_chat-thinking-drop", "late_system_message-thinking"):
            assert (dialect, needed) in names


# ---------------------------------------------------------------------------- DeepSeek turns


def test_deepseek_consecutive_user_messages_are_one_turn(formats):
    fmt = formats["deepseek"]
    messages = [UserMessage(content="a"), UserMessage(content="b")]
    rendered = text(fmt, flat(fmt.render(messages, [])) + fmt.generation_prompt(messages))
    assert rendered == "<｜begin▁of▁sentence｜><｜User｜>a\n\nb<｜Assistant｜></think>"


def test_deepseek_user_text_after_tool_results_joins_their_turn(formats):
    fmt = formats["deepseek"]
    messages = [
        UserMessage(content="q"),
        AssistantMessage(tool_calls=CALLS[:1]),
        ToolMessage(call_id="1", name="get_weather", content="28C"),
        UserMessage(content="and now?"),
    ]
    rendered = text(fmt, flat(fmt.render(messages, [])))
    assert rendered.endswith("<｜User｜><tool_result>28C</tool_result>\n\nand now?")


def test_deepseek_tool_results_are_put_in_call_order(formats):
    fmt = formats["deepseek"]
    messages = [
        UserMessage(content="q"),
        AssistantMessage(tool_calls=CALLS),
        ToolMessage(call_id="2", name="get_weather", content="second"),
        ToolMessage(call_id="1", name="get_weather", content="first"),
    ]
    rendered = text(fmt, flat(fmt.render(messages, [])))
    assert rendered.endswith(
        "<｜User｜><tool_result>first</tool_result>\n\n<tool_result>second</tool_result>"
    )


def test_deepseek_drop_thinking_drops_reasoning_before_the_last_user_turn(paths):
    fmt = _golden_format(paths, "v4", {"thinking": True, "drop_thinking": True})
    messages = [
        UserMessage(content="q1"),
        AssistantMessage(content="a1", reasoning="r1"),
        UserMessage(content="q2"),
    ]
    rendered = text(fmt, flat(fmt.render(messages, [])) + fmt.generation_prompt(messages))
    assert "r1" not in rendered
    assert rendered.endswith("<｜Assistant｜></think>a1<｜end▁of▁sentence｜><｜User｜>q2<｜Assistant｜><think>")


def test_deepseek_keeps_reasoning_by_default_so_prefixes_stay_stable(paths):
    fmt = _golden_format(paths, "v4", {"thinking": True, "drop_thinking": False})
    messages = [UserMessage(content="q1"), AssistantMessage(content="a1", reasoning="r1")]
    longer = [*messages, UserMessage(content="q2")]
    shorter_ids = flat(fmt.render(messages, []))
    assert flat(fmt.render(longer, []))[: len(shorter_ids)] == shorter_ids
    assert "r1" in text(fmt, shorter_ids)


@pytest.mark.parametrize("thinking", [False, True])
def test_deepseek_v41_prefixes_are_stable_and_use_spaced_tags(paths, thinking):
    fmt = _golden_format(paths, "v4.1", {"thinking": thinking, "drop_thinking": False})
    messages = conversation(sampled_ids(fmt))
    for n in range(len(messages)):
        shorter = flat(fmt.render(messages[:n], TOOLS))
        longer = flat(fmt.render(messages[: n + 1], TOOLS))
        assert longer[: len(shorter)] == shorter
    rendered = text(fmt, flat(fmt.render(messages, TOOLS)))
    assert "<｜DSML｜ calls>" in rendered and "<｜DSML｜tool_calls>" not in rendered


def test_deepseek_v41_answers_a_late_system_message_like_a_user_turn(paths):
    fmt = _golden_format(paths, "v4.1", {"thinking": False, "drop_thinking": False})
    messages = [UserMessage(content="hi"), SystemMessage(content="be brief")]
    rendered = text(fmt, flat(fmt.render(messages, [])) + fmt.generation_prompt(messages))
    assert rendered == "<｜begin▁of▁sentence｜><｜User｜>hi<｜System｜>be brief<｜Assistant｜></think>"


def test_detect_chat_format_picks_the_dialect_by_argument(paths):
    model = load_gguf(paths["deepseek"])
    tokenizer = Tokenizer.from_gguf(model)
    assert type(detect_chat_format(model, tokenizer, dialect="v4.1")) is DeepSeekV41
    assert type(detect_chat_format(model, tokenizer)) is DeepSeekV4
    with pytest.raises(TokenizerError, match="dialect"):
        detect_chat_format(model, tokenizer, dialect="v9")


def test_detect_chat_format_reads_v41_from_the_template(paths):
    model = load_gguf(paths["deepseek"])
    tokenizer = Tokenizer.from_gguf(model)
    model.metadata = dict(model.metadata)
    model.metadata["tokenizer.chat_template"] = "{{ '<｜Assistant｜>' }}{{ '<｜System｜>' }}"
    assert type(detect_chat_format(model, tokenizer)) is DeepSeekV41


def test_deepseek_v3_renders_its_template_turns(formats):
    fmt = formats["deepseek-v3"]
    msgs = [SystemMessage(content="sys"), UserMessage(content="hi"),
            AssistantMessage(content="yo"), UserMessage(content="again")]  # fmt: skip
    ids = flat(fmt.render(msgs, [])) + fmt.generation_prompt(msgs)
    assert fmt.tokenizer.decode(ids) == (
        "<｜begin▁of▁sentence｜>sys\n\n<｜User｜>hi<｜Assistant｜>yo<｜end▁of▁sentence｜>"
        "<｜User｜>again<｜Assistant｜>"
    )


# ---------------------------------------------------------------------------- DeepSeek V3.2


def _v32_cases():
    data = json.loads((GOLDEN / "v3.2.json").read_text(encoding="utf-8"))
    return {c["name"]: c for c in data["cases"]}


def _messages(case):
    return [_ROLES[m["role"]](**m) for m in case["messages"]], [ToolSpec(**t) for t in case["tools"]]


@pytest.mark.parametrize("name", sorted(_v32_cases()))
def test_deepseek_v32_keeps_reasoning_by_default_and_is_the_encoder_with_one_user_message(paths, name):
    # The encoder always drops reasoning before the last user message (thinking mode); the
    # default keeps it, which changes nothing while there is one user message (an agent's
    # task with all its tool rounds), and changes exactly the multi-user thinking cases.
    case = _v32_cases()[name]
    messages, tools = _messages(case)
    fmt = _golden_format(paths, "v3.2", {"thinking": case["options"]["thinking"], "drop_thinking": False})
    ids = flat(fmt.render(messages, tools))
    if not isinstance(messages[-1], AssistantMessage):
        ids += fmt.generation_prompt(messages)
    users = sum(isinstance(m, UserMessage) for m in messages)
    if users <= 1 or not case["options"]["thinking"]:
        assert text(fmt, ids) == case["prompt"]
    else:
        assert text(fmt, ids) != case["prompt"]


def test_deepseek_v32_turns_results_and_generation_prompt(formats):
    fmt = formats["deepseek-v3.2"]
    assert type(fmt) is DeepSeekV32 and not fmt.thinking
    messages = [
        UserMessage(content="q"),
        AssistantMessage(content="Checking.", tool_calls=CALLS),
        ToolMessage(call_id="1", name="get_weather", content="28C"),
    ]
    rendered = text(fmt, flat(fmt.render(messages, [])))
    assert rendered.endswith("</｜DSML｜function_calls><｜end▁of▁sentence｜>\n\n<function_results>\n<result>28C</result>")
    # One of two results: the block is still open, so the generation prompt closes it.
    assert text(fmt, fmt.generation_prompt(messages)) == "\n</function_results>\n\n</think>"
    done = [*messages, ToolMessage(call_id="2", name="get_weather", content="a </result> b")]
    rendered = text(fmt, flat(fmt.render(done, [])))
    assert rendered.endswith("<result>a &lt;/result> b</result>\n</function_results>\n\n</think>")
    assert fmt.generation_prompt(done) == []  # the block's end handed the turn over
    assert fmt.generation_prompt(messages[:1]) == []  # so does a user message
    assert text(fmt, flat(fmt.render(messages[:1], []))) == "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜></think>"
    # A block cut short by another message is closed before it.
    cut = [*messages, AssistantMessage(content="Partial.")]
    assert "</result>\n</function_results>\n\n</think>Partial.<｜end▁of▁sentence｜>" in text(fmt, flat(fmt.render(cut, [])))


def test_deepseek_v32_drop_thinking_rewrites_earlier_turns_as_the_encoder_does(paths):
    fmt = _golden_format(paths, "v3.2", {"thinking": True, "drop_thinking": True})
    messages = [UserMessage(content="q1"), AssistantMessage(content="a1", reasoning="r1"), UserMessage(content="q2")]
    rendered = text(fmt, flat(fmt.render(messages, [])) + fmt.generation_prompt(messages))
    assert rendered == ("<｜begin▁of▁sentence｜><｜User｜>q1<｜Assistant｜></think>a1<｜end▁of▁sentence｜>"
                        "<｜User｜>q2<｜Assistant｜><think>")  # fmt: skip
    keep = _golden_format(paths, "v3.2", {"thinking": True, "drop_thinking": False})
    rendered = text(keep, flat(keep.render(messages, [])))
    assert "<｜User｜>q1<｜Assistant｜><think>r1</think>a1" in rendered


def test_deepseek_v32_calls_render_in_its_dialect_and_parse_back(formats):
    from agentcore.dsml import V32, parse_completion

    block = render_tool_calls(CALLS, V32)
    assert block.startswith("\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">")
    parsed = parse_completion(block + "<｜end▁of▁sentence｜>", tools=TOOLS)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [(c.name, c.arguments) for c in CALLS]
    assert "<functions>" in render_tools(TOOLS, V32) and "<functions>" not in render_tools(TOOLS)


def test_detect_chat_format_reads_v32_from_the_template(paths):
    model = load_gguf(paths["deepseek-v3.2"])
    tokenizer = Tokenizer.from_gguf(model)
    assert type(detect_chat_format(model, tokenizer)) is DeepSeekV32
    assert type(detect_chat_format(model, tokenizer, dialect="v4")) is DeepSeekV4
    assert type(chat_format_for_template("", tokenizer, dialect="v3.2", thinking=True)) is DeepSeekV32


@pytest.mark.parametrize("chat", ["deepseek-v3.2", "deepseek"])
def test_local_engine_speaks_the_models_dialect_end_to_end(tmp_path, chat):
    # A V3.2 model (detected from its template) gets V3.2's tools block and, when a call is
    # required, a constrained <｜DSML｜function_calls> block, which parses into the call; its
    # result goes back in a <function_results> block. V4 as the control.
    import anyio

    from agentcore.engine import GenerationRequest, LocalEngine

    path = write_synthetic_gguf(tmp_path / "m.gguf", chat=chat, vocab=2000, context_length=4096)
    eng = LocalEngine.from_gguf(path, device="cpu", context_length=4096)
    v32 = chat == "deepseek-v3.2"
    assert type(eng.chat) is (DeepSeekV32 if v32 else DeepSeekV4)
    req = GenerationRequest(session_id="s", messages=[UserMessage(content="Weather in Taipei?")],
                            tools=TOOLS, tool_choice="required", max_tokens=200)  # fmt: skip

    async def run(r):
        async for item in eng.stream(r):
            done = item
        return done

    done = anyio.run(run, req)
    block = "function_calls" if v32 else "tool_calls"
    assert done.finish_reason == "tool_calls" and f"<｜DSML｜{block}>" in done.text
    from agentcore.dsml import parse_completion

    calls = parse_completion(done.text, tools=TOOLS, ended=True).tool_calls
    assert [c.name for c in calls] == ["get_weather"]
    prompt = text(eng.chat, eng._prompt(req, generation=True)[0])
    assert ("<functions>" in prompt) is v32
    follow = req.model_copy(update={"tool_choice": "auto", "messages": [
        *req.messages, AssistantMessage(content="", tool_calls=calls, token_ids=done.token_ids),
        ToolMessage(call_id=calls[0].id, name="get_weather", content="28C")]})  # fmt: skip
    prompt = text(eng.chat, eng._prompt(follow, generation=True)[0])
    result = "<function_results>\n<result>28C</result>\n</function_results>\n\n</think>" if v32 else "<tool_result>28C</tool_result>"
    assert result in prompt


# ---------------------------------------------------------------------------- random conversations

_any_message = st.one_of(
    st.builds(lambda t: SystemMessage(content=t), st.sampled_from(["sys", "be brief", ""])),
    st.builds(lambda t: UserMessage(content=t), st.sampled_from(["hi", "q?", "a </result> b"])),
    st.builds(lambda n, r: AssistantMessage(content="ok", reasoning=r, tool_calls=CALLS[:n]),
              st.integers(0, 2), st.sampled_from([None, "because"])),
    st.builds(lambda c: ToolMessage(call_id="1", name="get_weather", content=c), st.sampled_from(["28C", "x"])),
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_any_message, min_size=1, max_size=9), thinking=st.booleans(), tools=st.booleans())
def test_deepseek_formats_keep_prefixes_and_replay_on_any_message_sequence(paths, messages, thinking, tools):
    # Any order of messages (results with no calls, more results than calls, assistants in a
    # row): one segment each, every prefix renders as a prefix, and the prompt plus sampled
    # ids is a prefix of the next prompt, for V3.2, V4 and V4.1 with reasoning kept.
    specs = TOOLS if tools else []
    for dialect in ("v3.2", "v4", "v4.1"):
        fmt = _golden_format(paths, dialect, {"thinking": thinking, "drop_thinking": False})
        segments = fmt.render(messages, specs)
        assert len(segments) == len(messages)
        for n in range(len(messages)):
            shorter = flat(fmt.render(messages[:n], specs))
            assert flat(fmt.render(messages[: n + 1], specs))[: len(shorter)] == shorter
        prompt = flat(segments) + fmt.generation_prompt(messages)
        sampled = sampled_ids(fmt)
        following = [*messages, AssistantMessage(token_ids=sampled), UserMessage(content="next")]
        nxt = flat(fmt.render(following, specs))
        assert nxt[: len(prompt) + len(sampled)] == prompt + sampled


def test_local_engine_takes_a_chat_format_by_name_or_object_over_the_template(tmp_path):
    from agentcore.engine import LocalEngine

    path = write_synthetic_gguf(tmp_path / "m.gguf", chat="deepseek", vocab=2000)
    assert type(LocalEngine.from_gguf(path, device="cpu").chat) is DeepSeekV4  # from the template
    named = LocalEngine.from_gguf(path, device="cpu", chat_format="deepseek-v3.2", thinking=True)
    assert type(named.chat) is DeepSeekV32 and named.chat.thinking
    fmt = DeepSeekV41(named.tokenizer)
    assert LocalEngine.from_gguf(path, device="cpu", chat_format=fmt).chat is fmt
    with pytest.raises(ValueError, match="chat_format must be one of"):
        LocalEngine.from_gguf(path, device="cpu", chat_format="vicuna")
