"""DeepSeek-V2 / V2-Lite chat: the official template's text, detection, and its stop token."""

import pytest

from agentcore.engine.model.chat import DeepSeekV2, chat_format_for_template, chat_format_named
from agentcore.engine.model.gguf import load_gguf
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.messages import (
    AssistantMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)
from agentcore.testing.synthetic_deepseek2 import PRESETS, write_synthetic_deepseek2

# DeepSeek-V2-Lite-Chat's chat_template (tokenizer_config.json), as GGUF files carry it.
V2_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = write_synthetic_deepseek2(tmp_path_factory.mktemp("v2") / "v2.gguf", **PRESETS["v2lite"])
    return Tokenizer.from_gguf(load_gguf(path))


def text(tok, ids):
    return tok.decode(ids)


def test_renders_what_the_v2_template_writes(tokenizer):
    fmt = chat_format_named("deepseek-v2", tokenizer)
    msgs = [SystemMessage(content="Be brief."), UserMessage(content="Hi"),
            AssistantMessage(content="Hello!"), UserMessage(content="Sum 2+2")]  # fmt: skip
    ids = [t for seg in fmt.render(msgs, []) for t in seg] + fmt.generation_prompt(msgs)
    bos, eos = tokenizer.decode([tokenizer.bos_id]), tokenizer.decode([tokenizer.eos_id])
    # The template's own rendering of these messages, by hand:
    want = f"{bos}Be brief.\n\nUser: Hi\n\nAssistant: Hello!{eos}User: Sum 2+2\n\nAssistant:"
    assert text(tokenizer, ids) == want
    assert tokenizer.eos_id in fmt.stop_ids


def test_is_detected_from_the_v2_template(tokenizer):
    assert isinstance(chat_format_for_template(V2_TEMPLATE, tokenizer), DeepSeekV2)


def test_tools_are_taught_in_the_system_prompt_and_results_come_back_as_user_turns(tokenizer):
    fmt = DeepSeekV2(tokenizer)
    spec = ToolSpec(name="read_file", description="Read a file.", parameters={"type": "object", "properties": {}})
    call = ToolCall(id="c0", name="read_file", arguments={"path": "a.py"})
    msgs = [SystemMessage(content="sys"), UserMessage(content="go"),
            AssistantMessage(content="", tool_calls=[call]),
            ToolMessage(call_id="c0", name="read_file", content="print(1)")]  # fmt: skip
    out = text(tokenizer, [t for seg in fmt.render(msgs, [spec]) for t in seg] + fmt.generation_prompt(msgs))
    assert "read_file" in out.split("User: go")[0]  # the tool list is in the system turn
    assert "User: " in out.split("Assistant: ")[-1] and "print(1)" in out
    assert out.endswith("\n\nAssistant:")
