"""@tool schemas, Tool.call and ToolRegistry.run: tool output is data, never an exception."""

from __future__ import annotations

import json
import threading
import time
from typing import Literal, Optional

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel

from agentcore.errors import ToolError
from agentcore.messages import ToolCall
from agentcore.tools import Tool, ToolRegistry, tool
from agentcore.tools.capping import approx_tokens


class Address(BaseModel):
    """A postal address."""

    street: str
    zip_code: int = 0


class TreeNode(BaseModel):
    value: int
    children: list[TreeNode] = []


@tool(timeout=5)
def get_weather(
    city: str,
    unit: Literal["celsius", "fahrenheit"] = "celsius",
    days: Optional[int] = None,  # noqa: UP045 - Optional is part of what is under test
) -> str:
    """Current weather for a city.

    Args:
        city: City name, e.g. Taipei.
        unit: Temperature unit.
    """
    return f"{city}: 21 {unit} for {days} days"


def params(t: Tool) -> dict:
    return t.spec.parameters


def call(name: str, call_id: str = "c1", **arguments) -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments=arguments)


# ---------------------------------------------------------------------------- schemas


def test_schema_keys_follow_fixed_order_and_properties_follow_signature():
    assert list(params(get_weather)) == ["type", "properties", "required", "additionalProperties"]
    assert list(params(get_weather)["properties"]) == ["city", "unit", "days"]
    assert params(get_weather)["required"] == ["city"]


def test_schema_is_byte_identical_for_identical_definitions():
    def twin(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
        """Twin."""
        return city

    first, second = tool(twin), tool(twin)
    assert json.dumps(first.spec.function_object()) == json.dumps(second.spec.function_object())


def test_literal_becomes_string_enum():
    assert params(get_weather)["properties"]["unit"] == {
        "type": "string",
        "description": "Temperature unit.",
        "enum": ["celsius", "fahrenheit"],
        "default": "celsius",
    }


def test_optional_is_nullable_with_null_default():
    assert params(get_weather)["properties"]["days"] == {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "default": None,
    }


def test_defaults_are_shown_and_make_parameters_optional():
    @tool
    def search(query: str, limit: int = 10, exact: bool = False) -> str:
        return query

    props = params(search)["properties"]
    assert props["limit"]["default"] == 10 and props["exact"]["default"] is False
    assert params(search)["required"] == ["query"]


def test_nested_model_is_inlined_so_schema_is_self_contained():
    @tool
    def ship(to: Address) -> str:
        return to.street

    schema = params(ship)
    assert "$defs" not in schema and "$ref" not in json.dumps(schema)
    assert schema["properties"]["to"] == {
        "type": "object",
        "description": "A postal address.",
        "properties": {"street": {"type": "string"}, "zip_code": {"type": "integer", "default": 0}},
        "required": ["street"],
    }


def test_recursive_model_keeps_its_definitions():
    @tool
    def total(tree: TreeNode) -> int:
        return tree.value

    schema = params(total)
    assert schema["properties"]["tree"] == {"$ref": "#/$defs/TreeNode"}
    assert schema["$defs"]["TreeNode"]["properties"]["children"]["items"] == {
        "$ref": "#/$defs/TreeNode"
    }


def test_list_and_dict_parameters():
    @tool
    def tag(names: list[str], weights: dict[str, float]) -> str:
        return ""

    props = params(tag)["properties"]
    assert props["names"] == {"type": "array", "items": {"type": "string"}}
    assert props["weights"] == {"type": "object", "additionalProperties": {"type": "number"}}


def test_args_section_describes_parameters_and_is_left_out_of_the_description():
    assert get_weather.spec.description == "Current weather for a city."
    assert params(get_weather)["properties"]["city"]["description"] == "City name, e.g. Taipei."


def test_multi_line_arg_descriptions_are_joined():
    @tool
    def grep(pattern: str) -> str:
        """Search files.

        Args:
            pattern: A regular expression,
                matched per line.
        """
        return pattern

    assert params(grep)["properties"]["pattern"]["description"] == (
        "A regular expression, matched per line."
    )


class Listing(BaseModel):
    title: str
    default: Address


def test_properties_named_like_keywords_are_kept_and_walked_as_properties():
    @tool
    def publish(title: str, listing: Listing) -> str:
        return title

    schema = params(publish)
    assert schema["properties"]["title"] == {"type": "string"}
    listing = schema["properties"]["listing"]["properties"]
    assert listing["title"] == {"type": "string"}
    assert listing["default"]["properties"]["street"] == {"type": "string"}
    assert json.dumps(schema).count('"title":') == 2  # the two properties; no title keywords


def test_explicit_name_and_description_override_the_function():
    @tool(name="weather_now", description="Weather, now.")
    def anything(city: str) -> str:
        """Docstring that is not used."""
        return city

    assert anything.name == anything.spec.name == "weather_now"
    assert anything.spec.description == "Weather, now."


def bad_varargs(*cities: str) -> str:
    return ""


def bad_kwargs(**options: str) -> str:
    return ""


def bad_unannotated(city) -> str:
    return city


def bad_docstring(city: str) -> str:
    """Weather.

    Args:
        town: Renamed long ago.
    """
    return city


@pytest.mark.parametrize(
    ("fn", "options", "message"),
    [
        (bad_varargs, {}, "declare each argument"),
        (bad_kwargs, {}, "declare each argument"),
        (bad_unannotated, {}, "no type annotation"),
        (bad_docstring, {}, "documents town"),
        (lambda city: city, {}, "ASCII identifier"),
        (get_weather.fn, {"name": "get-weather"}, "ASCII identifier"),
        (get_weather.fn, {"timeout": 0}, "timeout must be a positive"),
        (get_weather.fn, {"max_output_tokens": 0}, "max_output_tokens"),
    ],
    ids=["varargs", "kwargs", "unannotated", "stale-docstring", "lambda", "name", "timeout", "cap"],
)
def test_invalid_definitions_raise_tool_error_at_decoration(fn, options, message):
    with pytest.raises(ToolError, match=message):
        tool(**options)(fn)


def test_decorated_function_stays_directly_callable():
    assert get_weather("Oslo", "fahrenheit") == "Oslo: 21 fahrenheit for None days"


# ---------------------------------------------------------------------------- calls


@pytest.mark.anyio
async def test_sync_tool_returns_its_result():
    result = await get_weather.call({"city": "Taipei"}, call_id="c1")
    assert (result.content, result.is_error, result.call_id) == (
        "Taipei: 21 celsius for None days",
        False,
        "c1",
    )


@pytest.mark.anyio
async def test_async_tool_returns_its_result():
    @tool
    async def double(n: int) -> int:
        await anyio.lowlevel.checkpoint()
        return n * 2

    result = await double.call({"n": 21}, call_id="c1")
    assert (result.content, result.is_error) == ("42", False)


@pytest.mark.anyio
async def test_numbers_sent_as_strings_are_coerced():
    @tool
    def kind(n: int) -> str:
        return type(n).__name__

    assert (await kind.call({"n": "3"}, call_id="c1")).content == "int"


@pytest.mark.anyio
async def test_a_list_sent_as_a_json_string_is_decoded():
    @tool
    def count(items: list[int]) -> int:
        return len(items)

    assert (await count.call({"items": "[1, 2, 3]"}, call_id="c1")).content == "3"


@pytest.mark.anyio
async def test_nested_model_argument_arrives_as_a_model_instance():
    @tool
    def ship(to: Address) -> str:
        return type(to).__name__

    assert (await ship.call({"to": {"street": "Main"}}, call_id="c1")).content == "Address"


@pytest.mark.anyio
async def test_missing_argument_is_an_error_naming_it_and_listing_parameters():
    result = await get_weather.call({"unit": "celsius"}, call_id="c1")
    assert result.is_error
    assert "- city: missing required argument" in result.content
    assert "- city: string (required)" in result.content
    assert '- unit: "celsius" | "fahrenheit" (default "celsius")' in result.content


@pytest.mark.anyio
async def test_extra_argument_is_an_error_naming_it():
    result = await get_weather.call({"city": "Oslo", "country": "NO"}, call_id="c1")
    assert result.is_error
    assert "- country: unexpected argument" in result.content


@pytest.mark.anyio
async def test_wrong_type_is_an_error_naming_field_expectation_and_input():
    result = await get_weather.call({"city": "Oslo", "unit": "kelvin"}, call_id="c1")
    assert result.is_error
    assert "- unit: Input should be 'celsius' or 'fahrenheit' (got 'kelvin')" in result.content


@pytest.mark.anyio
async def test_exception_in_tool_is_an_error_with_type_and_message_without_traceback():
    @tool
    def divide(a: int, b: int) -> float:
        return a / b

    result = await divide.call({"a": 1, "b": 0}, call_id="c1")
    assert result.is_error
    assert result.content.startswith("ZeroDivisionError: division by zero (at test_tools.py:")
    assert "Traceback" not in result.content


@pytest.mark.anyio
async def test_sync_tool_past_its_timeout_is_an_error_and_returns_promptly():
    release = threading.Event()

    @tool(timeout=0.3)
    def hang() -> str:
        release.wait(30)
        return "late"

    start = time.monotonic()
    result = await hang.call({}, call_id="c1")
    release.set()
    assert time.monotonic() - start < 2
    assert result.is_error and "timed out after 0.3s" in result.content


@pytest.mark.anyio
async def test_async_tool_past_its_timeout_is_an_error_and_returns_promptly():
    @tool(timeout=0.3)
    async def hang() -> str:
        await anyio.sleep(30)
        return "late"

    start = time.monotonic()
    result = await hang.call({}, call_id="c1")
    assert time.monotonic() - start < 2
    assert result.is_error and "timed out after 0.3s" in result.content


@pytest.mark.anyio
async def test_binary_result_is_decoded_without_nuls_and_flagged():
    @tool
    def dump() -> bytes:
        return b"head\x00\xff\xfetail"

    result = await dump.call({}, call_id="c1")
    assert not result.is_error
    assert result.content.startswith("[binary output: 11 bytes;")
    assert "\x00" not in result.content
    assert result.content.endswith("head\ufffd\ufffdtail")


@pytest.mark.anyio
async def test_structured_results_become_json():
    @tool
    def lookup() -> dict:
        return {"address": Address(street="Main"), "city": "台北"}

    result = await lookup.call({}, call_id="c1")
    assert json.loads(result.content) == {
        "address": {"street": "Main", "zip_code": 0},
        "city": "台北",
    }
    assert "台北" in result.content


# ---------------------------------------------------------------------------- registry


def test_registry_keeps_registration_order():
    @tool
    def alpha() -> str:
        return ""

    registry = ToolRegistry([get_weather, alpha])
    assert registry.names == ["get_weather", "alpha"]
    assert [s.name for s in registry.specs] == ["get_weather", "alpha"]
    assert "alpha" in registry and "beta" not in registry
    assert registry.get("alpha") is alpha and registry.get("beta") is None


def test_registry_wraps_plain_functions():
    def plain(x: int) -> int:
        return x

    assert ToolRegistry([plain]).get("plain").spec.parameters["required"] == ["x"]


def test_registry_refuses_duplicate_names():
    with pytest.raises(ToolError, match="two tools are named 'get_weather'"):
        ToolRegistry([get_weather, tool(name="get_weather")(get_weather.fn)])


@pytest.mark.anyio
async def test_unknown_tool_is_an_error_listing_available_tools(tmp_path):
    registry = ToolRegistry([get_weather], workspace=tmp_path)
    [result] = await registry.run([call("get_wether", city="Oslo")])
    assert result.is_error and result.name == "get_wether"
    assert "Available tools: get_weather." in result.content
    assert "Did you mean 'get_weather'?" in result.content


@pytest.mark.anyio
async def test_calls_of_one_block_run_concurrently_and_return_in_call_order(tmp_path):
    @tool
    async def nap(seconds: float, label: str) -> str:
        await anyio.sleep(seconds)
        return label

    @tool
    def block(seconds: float, label: str) -> str:
        time.sleep(seconds)
        return label

    registry = ToolRegistry([nap, block], workspace=tmp_path)
    calls = [
        call("nap", "a", seconds=1.0, label="first"),
        call("block", "b", seconds=0.8, label="second"),
        call("nap", "c", seconds=0.6, label="third"),
    ]
    start = time.monotonic()
    results = await registry.run(calls)
    assert time.monotonic() - start < 1.8  # the sum would be 2.4 s
    assert [(r.call_id, r.content) for r in results] == [
        ("a", "first"),
        ("b", "second"),
        ("c", "third"),
    ]


@pytest.mark.anyio
async def test_large_output_is_capped_and_spilled_in_full(tmp_path):
    text = "".join(f"line {i:06d} " + "x" * 37 + "\n" for i in range(5000))
    assert len(text) == 250_000

    @tool
    def big() -> str:
        return text

    registry = ToolRegistry([big], workspace=tmp_path, default_max_output_tokens=2000)
    [result] = await registry.run([call("big")])
    assert result.truncated and not result.is_error
    assert approx_tokens(result.content) <= 2000
    assert f"saved to {result.spill_path}" in result.content
    assert (tmp_path / result.spill_path).read_text() == text


@pytest.mark.anyio
async def test_tool_max_output_tokens_overrides_the_registry_default(tmp_path):
    @tool(max_output_tokens=100)
    def chatty() -> str:
        return "word " * 1000

    registry = ToolRegistry([chatty], workspace=tmp_path, default_max_output_tokens=8192)
    [result] = await registry.run([call("chatty")])
    assert result.truncated and approx_tokens(result.content) <= 100


@pytest.mark.anyio
async def test_max_output_chars_caps_every_result(tmp_path):
    registry = ToolRegistry([get_weather], workspace=tmp_path, max_output_chars=400)
    [result] = await registry.run([call("get_weather", city="Oslo" * 500)])
    assert result.truncated and len(result.content) <= 400
    assert (tmp_path / result.spill_path).read_text().startswith("OsloOslo")


@pytest.mark.anyio
async def test_a_failing_token_counter_becomes_an_error_result(tmp_path):
    def broken(text: str) -> int:
        raise RuntimeError("tokenizer not loaded")

    registry = ToolRegistry([get_weather], workspace=tmp_path, count_tokens=broken)
    [result] = await registry.run([call("get_weather", city="Oslo")])
    assert result.is_error and "RuntimeError: tokenizer not loaded" in result.content


@pytest.mark.anyio
async def test_cancellation_propagates_out_of_run(tmp_path):
    @tool(timeout=30)
    async def hang() -> str:
        await anyio.sleep(30)
        return "late"

    registry = ToolRegistry([hang], workspace=tmp_path)
    start = time.monotonic()
    with anyio.move_on_after(0.2) as scope:
        await registry.run([call("hang")])
    assert scope.cancelled_caught
    assert time.monotonic() - start < 2
