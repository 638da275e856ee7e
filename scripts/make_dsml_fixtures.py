"""Write tests/data/dsml/{v3.2,v4,v4.1}.json: DeepSeek's own encoders' prompts for a set of
conversations, the golden fixtures tests/test_chat.py checks agentcore byte for byte against.

The encoders are DeepSeek's code and are not part of agentcore: pass paths to copies of them.

    python scripts/make_dsml_fixtures.py --v32 PATH/encoding_dsv32.py --v4 PATH/encoding_dsv4.py \\
        --v41 PATH/encoding.py

- ``--v32``: ``encoding/encoding_dsv32.py`` of DeepSeek-V3.2 (vLLM vendors it as
  ``vllm/tokenizers/deepseek_v32_encoding.py``, with the blank lines of its tools template
  removed: use DeepSeek's). Its thinking mode always drops the reasoning before the last user
  message (its ``drop_thinking`` changes nothing it writes), so every V3.2 case says
  ``drop_thinking: true``; conversations it refuses (an assistant turn after the last user
  message with neither reasoning nor calls, in thinking mode) are left out.
- ``--v4``: ``encoding_dsv4.py`` (shipped with DeepSeek-V4; vLLM vendors it as
  ``vllm/tokenizers/deepseek_v4_encoding.py``).
- ``--v41``: ``encoding/encoding.py`` of DeepSeek-V4.1-Flash (vendored by SGLang and vLLM as
  ``encoding_dsv41.py`` / ``deepseek_v41_encoding.py``).

JSON schema (version 1), one file per dialect:
{"schema": 1, "encoder": "<file name>", "encoder_sha256": "<hex>", "dialect": "v3.2" | "v4" | "v4.1",
 "cases": [{"name": str,
            "messages": [agentcore message dicts (SystemMessage/UserMessage/...)],
            "tools": [ToolSpec dicts],
            "options": {"thinking": bool, "drop_thinking": bool, "reasoning_effort": ...},
            "prompt": "<the encoder's output>"}]}

Conversations are written in agentcore's message types and translated to the encoders'
OpenAI-style input here. Tools go on the first message, which the encoders require to be a
system message: without a SystemMessage, an empty one is put first (agentcore renders tools
without a system message that way).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from agentcore.messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather for a location.",
    parameters={
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
)
CLOCK = ToolSpec(name="now", description="The time; no arguments.")
SEARCH = ToolSpec(
    name="search",
    description="Search the web.",
    parameters={
        "type": "object",
        "properties": {"query": {"type": "string"}, "top_k": {"type": "integer"},
                       "filters": {"type": "object"}},
    },
)
TOOLS = [WEATHER, CLOCK, SEARCH]

CALL_A = ToolCall(id="call_a", name="get_weather", arguments={"location": "Beijing", "unit": "celsius"})
CALL_B = ToolCall(id="call_b", name="now")
CALL_C = ToolCall(
    id="call_c",
    name="search",
    arguments={"query": "臺北 天氣 <b>&</b>", "top_k": 3,
               "filters": {"lang": ["zh", "en"], "safe": True, "since": None}},
)


def cases() -> list[dict[str, Any]]:
    system = SystemMessage(content="You are a helpful assistant.")
    ask = UserMessage(content="What's the weather in Beijing, the time, and news on Taipei?")
    calls = AssistantMessage(
        content="Let me check.", reasoning="Three lookups; run them together.",
        tool_calls=[CALL_A, CALL_B, CALL_C],
    )
    results = [
        ToolMessage(call_id="call_a", name="get_weather", content='{"temp": 22, "sky": "clear"}'),
        ToolMessage(call_id="call_b", name="now", content="2026-09-30T10:00:00Z"),
        ToolMessage(call_id="call_c", name="search", content="1. Typhoon warning lifted\n2. ..."),
    ]
    answer = AssistantMessage(content="Beijing: 22°C and clear. It is 10:00 UTC.",
                              reasoning="All results are in.")
    chat = [
        UserMessage(content="hello"),
        AssistantMessage(content="Hello! How can I help?", reasoning="A greeting."),
        UserMessage(content="1+1=?"),
        AssistantMessage(content="2", reasoning="Simple arithmetic."),
        UserMessage(content="and 2+2?"),
    ]
    out: list[tuple[str, list[Message], list[ToolSpec]]] = [
        ("system_and_user", [system, UserMessage(content="Hi")], []),
        ("user_only", [UserMessage(content="Hi there")], []),
        ("tools_full_round_trip", [system, ask, calls, *results, answer], TOOLS),
        ("tools_ending_in_results", [system, ask, calls, *results], TOOLS),
        ("tools_without_system_message", [ask, calls, *results], TOOLS),
        ("results_out_of_call_order", [system, ask, calls, results[2], results[0], results[1]], TOOLS),
        ("user_text_after_results",
         [system, ask, calls, *results, UserMessage(content="Also: is it windy?")], TOOLS),
        ("consecutive_user_messages",
         [system, UserMessage(content="First part."), UserMessage(content="Second part.")], []),
        ("zero_argument_call",
         [system, UserMessage(content="Time?"), AssistantMessage(tool_calls=[CALL_B]),
          results[1], AssistantMessage(content="10:00 UTC.")], TOOLS),
        ("multi_turn_chat", chat, []),
        ("multi_turn_chat_finished", [*chat, AssistantMessage(content="4", reasoning="Easy.")], []),
        ("late_system_message",
         [system, UserMessage(content="Hi"), AssistantMessage(content="Hello."),
          SystemMessage(content="Be brief from now on."), UserMessage(content="Why is the sky blue?")],
         []),
    ]
    options = [{"thinking": False, "drop_thinking": False}, {"thinking": True, "drop_thinking": False}]
    built = []
    for name, messages, tools in out:
        for option in options:
            built.append(_case(f"{name}-{'thinking' if option['thinking'] else 'chat'}",
                               messages, tools, option))
    built.append(_case("multi_turn_chat-thinking-drop", chat, [],
                       {"thinking": True, "drop_thinking": True}))
    built.append(_case("tools_full_round_trip-thinking-drop", [system, ask, calls, *results, answer],
                       TOOLS, {"thinking": True, "drop_thinking": True}))
    return built


def _case(name, messages, tools, options) -> dict[str, Any]:
    return {
        "name": name,
        "messages": [m.model_dump(exclude_defaults=True) | {"role": m.role} for m in messages],
        "tools": [t.model_dump() for t in tools],
        "options": dict(options),
    }


def _openai(case: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in case["messages"]:
        role = m["role"]
        if role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.get("content", "")}
            if m.get("reasoning") is not None:
                msg["reasoning_content"] = m["reasoning"]
            if m.get("tool_calls"):
                msg["tool_calls"] = [
                    {"id": c["id"], "type": "function",
                     "function": {"name": c["name"],
                                  "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)}}
                    for c in m["tool_calls"]
                ]
            out.append(msg)
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": m["call_id"], "content": m["content"]})
        else:
            out.append({"role": role, "content": m["content"]})
    if case["tools"]:
        if out[0]["role"] != "system":
            out.insert(0, {"role": "system", "content": ""})
        out[0]["tools"] = [
            {"type": "function", "function": ToolSpec(**t).function_object()} for t in case["tools"]
        ]
    return out


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"encoder_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(encoder: Path, dialect: str, out: Path, extra: list[dict[str, Any]]) -> int:
    module = _load(encoder)
    built = cases() + extra
    if dialect == "v3.2":
        built = [c for c in built if not c["name"].endswith("-drop")]
        for case in built:
            case["options"] = {**case["options"], "drop_thinking": True}
    kept = []
    for case in built:
        options = case["options"]
        kwargs: dict[str, Any] = {"drop_thinking": options["drop_thinking"]}
        if "reasoning_effort" in options:
            kwargs["reasoning_effort"] = options["reasoning_effort"]
        try:
            case["prompt"] = module.encode_messages(
                _openai(case), thinking_mode="thinking" if options["thinking"] else "chat", **kwargs
            )
        except AssertionError as exc:
            print(f"{dialect}: {case['name']} left out: the encoder refuses it ({exc})")
            continue
        kept.append(case)
    built = kept
    data = {
        "schema": 1,
        "encoder": encoder.name,
        "encoder_sha256": hashlib.sha256(encoder.read_bytes()).hexdigest(),
        "dialect": dialect,
        "cases": built,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return len(built)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v32", type=Path, help="path to DeepSeek-V3.2's encoding/encoding_dsv32.py")
    parser.add_argument("--v4", type=Path, help="path to encoding_dsv4.py")
    parser.add_argument("--v41", type=Path, help="path to DeepSeek-V4.1's encoding/encoding.py")
    parser.add_argument("--out", type=Path, default=Path("tests/data/dsml"))
    args = parser.parse_args()
    system = SystemMessage(content="You are a helpful assistant.")
    efforts = [
        _case(f"reasoning_effort_{e}-thinking", [system, UserMessage(content="Prove it.")], [],
              {"thinking": True, "drop_thinking": False, "reasoning_effort": e})
        for e in ("low", "max", 30)
    ]
    if args.v32:
        print("v3.2:", write(args.v32, "v3.2", args.out / "v3.2.json", []), "cases")
    if args.v4:
        print("v4:", write(args.v4, "v4", args.out / "v4.json", []), "cases")
    if args.v41:
        print("v4.1:", write(args.v41, "v4.1", args.out / "v4.1.json", efforts), "cases")


if __name__ == "__main__":
    main()
