"""Tools: ``@tool`` turns a typed function into a ``Tool``; ``ToolRegistry`` runs a block of calls.

Invariants:
- Tool output is data (DESIGN.md invariant 4). ``Tool.call`` and ``ToolRegistry.run`` never
  raise for anything a tool or a model does: invalid arguments, unknown names, exceptions
  and timeouts become ``ToolMessage(is_error=True)`` the model can read and act on. Only
  cancellation propagates. Invalid tool *definitions* raise ``ToolError`` at decoration.
- Every result the registry returns is capped (``capping.cap_output``); what was cut is
  spilled to ``<workspace>/.agentcore/spill/`` and the marker says where.
- A tool's JSON schema is byte-stable: it is rendered into the prompt, where any change
  invalidates every cached prefix after it. Keys follow one fixed order, properties follow
  the signature, pydantic's "title" keys are dropped.
- The calls of one block run concurrently; results come back in call order.

A sync tool runs in a daemon thread of its own. When it overruns its timeout the thread is
abandoned, not killed (Python cannot kill a thread); it runs on until it returns, but it
never keeps the interpreter from exiting. Tools that can hang should be async or run a
subprocess, as ``run_shell`` does.

Only a real cancellation of the caller (and KeyboardInterrupt) propagates out of a call: a
``CancelledError`` a tool raises by itself, an exception whose ``__str__`` raises, or a
result that cannot be rendered is an error result like any other failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
import json
import math
import re
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast, get_args, get_origin, get_type_hints, overload

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from agentcore.errors import AgentCoreError, ToolError
from agentcore.messages import ToolCall, ToolMessage, ToolSpec
from agentcore.tools.capping import TokenCounter, approx_tokens, cap_output

__all__ = ["Tool", "ToolRegistry", "text_from_bytes", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

# Canonical key order inside every schema object; unknown keys follow, sorted.
_KEY_ORDER = (
    "type", "description", "enum", "const", "format", "items", "prefixItems", "properties",
    "required", "additionalProperties", "anyOf", "oneOf", "allOf", "$ref", "minimum",
    "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "uniqueItems", "default", "$defs",
)  # fmt: skip
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains", "propertyNames")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAP_KEYS = ("properties", "$defs", "patternProperties")

# Validation errors where a model sent a JSON document as a string for a structured value.
_STRUCTURED_TYPE_ERRORS = {
    "list_type", "dict_type", "model_type", "model_attributes_type", "tuple_type",
    "set_type", "frozen_set_type",
}  # fmt: skip
_DOC_SECTIONS = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns|Return|Yields|Raises|Examples?|Notes?):\s*$"
)
_DOC_ARG = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


@dataclass(frozen=True, eq=False)
class Tool:
    """A callable the model may invoke, with the spec it is shown and its limits.

    Build one with ``@tool``. Calling the Tool directly calls the wrapped function.
    """

    name: str
    spec: ToolSpec
    timeout: float
    max_output_tokens: int | None
    fn: Callable[..., Any]
    # Validates and coerces a call's arguments; fields are aliased to the parameter names.
    arguments_model: type[BaseModel] = field(repr=False)
    is_async: bool = field(repr=False, default=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    async def call(self, arguments: dict[str, Any], *, call_id: str) -> ToolMessage:
        """Run the tool once; every failure comes back as an error ToolMessage."""

        def error(content: str) -> ToolMessage:
            return ToolMessage(call_id=call_id, name=self.name, content=content, is_error=True)

        try:
            kwargs = self._validate(arguments)
        except ValidationError as exc:
            return error(self._describe_invalid(exc))

        result: Any = None
        try:
            with anyio.move_on_after(self.timeout) as scope:
                if self.is_async:
                    result = await self.fn(**kwargs)
                else:
                    result = await _run_in_daemon_thread(partial(self.fn, **kwargs), self.name)
                if inspect.isawaitable(result):
                    result = await result
        except anyio.get_cancelled_exc_class() as exc:
            # Ours (the caller is being cancelled) propagates; a stray one the tool raised
            # by itself is just another failure of the tool.
            await _reraise_if_really_cancelled(exc)
            return error(_describe_exception(exc))
        except KeyboardInterrupt:
            raise
        # A tool is arbitrary code; whatever it raises is a result for the model to read.
        except BaseException as exc:  # noqa: BLE001
            return error(_describe_exception(exc))
        if scope.cancelled_caught:
            return error(
                f"ToolTimeout: {self.name} timed out after {self.timeout:g}s; its result was "
                "abandoned. Retry with a smaller request, or do the work in smaller steps."
            )
        try:
            content = _render(result)
        except Exception as exc:  # noqa: BLE001 - e.g. an object whose __str__ raises
            return error(f"{self.name} returned a result that cannot be shown as text: "
                         f"{_describe_exception(exc)}")  # fmt: skip
        return ToolMessage(call_id=call_id, name=self.name, content=content)

    def _validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Return keyword arguments for ``fn``; lax, so "3" is accepted where an int is due."""
        try:
            parsed = self.arguments_model.model_validate(arguments)
        except ValidationError as exc:
            # Models often send an array or object as a JSON string; decode those and retry.
            repaired = dict(arguments)
            for err in exc.errors():
                key = err["loc"][0] if len(err["loc"]) == 1 else None
                if err["type"] in _STRUCTURED_TYPE_ERRORS and isinstance(repaired.get(key), str):
                    try:
                        repaired[key] = json.loads(repaired[key])
                    except ValueError:
                        raise exc from None
            if repaired == arguments:
                raise
            parsed = self.arguments_model.model_validate(repaired)
        # getattr, not model_dump: nested BaseModel arguments must stay model instances.
        return {
            info.alias: getattr(parsed, name)
            for name, info in type(parsed).model_fields.items()
            if info.alias is not None
        }

    def _describe_invalid(self, exc: ValidationError) -> str:
        lines = [f"Invalid arguments for tool {self.name}:"]
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "(arguments)"
            if err["type"] == "missing":
                lines.append(f"- {where}: missing required argument")
            elif err["type"] == "extra_forbidden":
                lines.append(f"- {where}: unexpected argument (not a parameter of this tool)")
            else:
                lines.append(f"- {where}: {err['msg']} (got {_short_repr(err.get('input'))})")
        lines.append(f"Parameters of {self.name}:")
        lines.append(_parameters_text(self.spec.parameters))
        return "\n".join(lines)


@overload
def tool(fn: F, /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    timeout: float = 30.0,
    max_output_tokens: int | None = None,
    description: str | None = None,
) -> Callable[[F], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float = 30.0,
    max_output_tokens: int | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a Tool from a typed function; use bare (``@tool``) or with options.

    The description is the docstring up to its first Google-style section (or
    ``description``); each parameter's description comes from the ``Args:`` section.
    Raises ToolError when the function cannot be described to a model.
    """

    def build(fn: Callable[..., Any]) -> Tool:
        return _build_tool(fn, name, timeout, max_output_tokens, description)

    return build if fn is None else build(fn)


def _build_tool(
    fn: Callable[..., Any],
    name: str | None,
    timeout: float,
    max_output_tokens: int | None,
    description: str | None,
) -> Tool:
    if not callable(fn):
        raise ToolError(f"@tool needs a function, got {fn!r}")
    tool_name = name if name is not None else getattr(fn, "__name__", "")
    where = f"tool {tool_name!r} ({getattr(fn, '__qualname__', fn)!r})"
    if not (isinstance(tool_name, str) and tool_name.isidentifier() and tool_name.isascii()):
        raise ToolError(
            f"{where}: the name must be an ASCII identifier like 'get_weather'; "
            "pass @tool(name=...)"
        )
    if isinstance(timeout, bool) or not (
        isinstance(timeout, int | float) and 0 < timeout < math.inf
    ):
        raise ToolError(f"{where}: timeout must be a positive number of seconds, got {timeout!r}")
    if max_output_tokens is not None and (
        isinstance(max_output_tokens, bool)
        or not isinstance(max_output_tokens, int)
        or max_output_tokens <= 0
    ):
        raise ToolError(
            f"{where}: max_output_tokens must be a positive int or None, got {max_output_tokens!r}"
        )
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise ToolError(f"{where}: generators cannot be tools; return the whole result instead")

    summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    arguments_model = _arguments_model(fn, tool_name, where, arg_docs)
    spec = ToolSpec(
        name=tool_name,
        description=description if description is not None else summary,
        parameters=_schema_of(arguments_model, where),
    )
    return Tool(
        name=tool_name,
        spec=spec,
        timeout=float(timeout),
        max_output_tokens=max_output_tokens,
        fn=fn,
        arguments_model=arguments_model,
        is_async=inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__),
    )


def _arguments_model(
    fn: Callable[..., Any], tool_name: str, where: str, arg_docs: dict[str, str]
) -> type[BaseModel]:
    try:
        signature = inspect.signature(fn)
        hints = get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ToolError(f"{where}: cannot read its signature and type hints: {exc}") from exc

    unknown = sorted(set(arg_docs) - set(signature.parameters))
    if unknown:
        raise ToolError(
            f"{where}: the docstring's Args section documents {', '.join(unknown)}, "
            "which the function does not take; fix the docstring"
        )

    fields: dict[str, Any] = {}
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolError(
                f"{where}: *{param.name} / **{param.name} cannot be described to a model; "
                "declare each argument explicitly"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolError(f"{where}: parameter {param.name!r} is positional-only; drop the '/'")
        if param.name not in hints:
            raise ToolError(
                f"{where}: parameter {param.name!r} has no type annotation; "
                "annotate it (e.g. 'city: str') so the model knows what to send"
            )
        hint = hints[param.name]
        default = ... if param.default is param.empty else param.default
        doc = arg_docs.get(param.name)
        if _has_description(hint):
            doc = None
        # Internal field names avoid clashes with BaseModel attributes ("json", "model_*").
        fields[f"p{index}"] = (hint, Field(default, alias=param.name, description=doc))

    try:
        return create_model(
            f"{tool_name}_arguments",
            __config__=ConfigDict(extra="forbid", coerce_numbers_to_str=True),
            **fields,
        )
    except Exception as exc:  # pydantic raises several types for unsupported annotations
        raise ToolError(f"{where}: its parameters cannot be validated: {exc}") from exc


def _has_description(hint: Any) -> bool:
    return get_origin(hint) is Annotated and any(
        isinstance(meta, FieldInfo) and meta.description for meta in get_args(hint)[1:]
    )


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (summary, {parameter: description})."""
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    entry_indent: int | None = None
    for line in doc.splitlines():
        header = _DOC_SECTIONS.match(line)
        if header:
            section, current, entry_indent = header.group(1), None, None
            continue
        if section is None:
            summary.append(line)
            continue
        if section not in ("Args", "Arguments", "Parameters", "Params") or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if entry_indent is None:
            entry_indent = indent
        entry = _DOC_ARG.match(line.strip())
        if indent <= entry_indent and entry:
            current = entry.group(1)
            args[current] = entry.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
    return "\n".join(summary).strip(), args


def _schema_of(model: type[BaseModel], where: str) -> dict[str, Any]:
    try:
        schema = model.model_json_schema(by_alias=True)
    except Exception as exc:  # PydanticInvalidForJsonSchema and friends
        raise ToolError(f"{where}: its parameters have no JSON schema: {exc}") from exc
    schema.pop("title", None)
    defs = schema.pop("$defs", {})
    try:
        inlined = _inline_refs(schema, defs, ())
    except _RecursiveModel:
        # A recursive model cannot be inlined; keep $defs so the schema stays self-contained.
        return _canonical({**schema, "$defs": defs})
    return _canonical(inlined)


class _RecursiveModel(Exception):
    """A "$ref" points back into its own definition."""


def _inline_refs(schema: dict[str, Any], defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    """Replace local "$ref"s with their definitions (siblings such as description win)."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in seen:
            raise _RecursiveModel(name)
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        return {**_inline_refs(defs[name], defs, (*seen, name)), **siblings}
    return _map_subschemas(schema, lambda sub: _inline_refs(sub, defs, seen))


def _canonical(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop "title" keywords and put keys in one fixed order, recursively."""
    rank = {key: i for i, key in enumerate(_KEY_ORDER)}
    ordered = {
        key: schema[key]
        for key in sorted(schema, key=lambda k: (rank.get(k, len(rank)), k))
        if key != "title"
    }
    return _map_subschemas(ordered, _canonical)


def _map_subschemas(schema: dict[str, Any], fn: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Apply ``fn`` to each direct subschema; data keywords ("default", "enum") are left as is.

    Walking by keyword, not by every nested dict, keeps a property *named* "title" or
    "default" from being mistaken for a keyword. Mapping order (properties in signature
    order) is preserved.
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA_KEYS and isinstance(value, dict):
            value = fn(value)
        elif key in _SUBSCHEMA_LIST_KEYS:
            value = [fn(v) if isinstance(v, dict) else v for v in value]
        elif key in _SUBSCHEMA_MAP_KEYS:
            value = {name: fn(sub) for name, sub in value.items()}
        out[key] = value
    return out


def _parameters_text(schema: dict[str, Any]) -> str:
    """One line per parameter, from the schema the model was shown: name, type, default."""
    required = set(schema.get("required", ()))
    lines = []
    for name, sub in schema.get("properties", {}).items():
        text = f"- {name}: {_type_text(sub)}"
        if name in required:
            text += " (required)"
        elif "default" in sub:
            text += f" (default {json.dumps(sub['default'], ensure_ascii=False)})"
        lines.append(text)
    return "\n".join(lines) or "(this tool takes no arguments)"


def _type_text(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(_type_text(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return f"array of {_type_text(schema['items'])}"
    return str(schema.get("type", "any"))


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _run_in_daemon_thread(fn: Callable[[], Any], name: str) -> Any:
    """Run ``fn`` in a fresh daemon thread; cancelling the wait abandons the thread.

    Not anyio's worker pool: its threads are not daemons, so one hung sync tool would keep
    the interpreter from exiting.
    """
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task
            outcome.append((False, exc))
        # The event loop may be gone by now; then nobody waits for this result any more.
        with contextlib.suppress(Exception):
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=target, name=f"agentcore tool {name}", daemon=True).start()
    await done.wait()
    ok, value = outcome[0]
    if ok:
        return value
    raise value


async def _reraise_if_really_cancelled(exc: BaseException) -> None:
    """Re-raise ``exc`` when the caller is being cancelled; return when a tool made it up.

    Under trio only trio itself can create ``Cancelled``. Under asyncio a tool can raise
    ``CancelledError`` on its own; a real cancellation shows in ``Task.cancelling()``, and
    an anyio cancel scope delivers its cancellation again at the next checkpoint.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not asyncio
        raise exc from None
    if task is not None and task.cancelling():
        raise exc
    await anyio.lowlevel.checkpoint()


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception as exc:  # noqa: BLE001 - a hostile __str__ must not lose a result
        return f"<unprintable: str() raised {type(exc).__name__}>"


def _describe_exception(exc: BaseException) -> str:
    """``Type: message``, plus where it was raised for errors not written for the model."""
    text = f"{type(exc).__name__}: {_safe_str(exc)}"
    if isinstance(exc, AgentCoreError):
        return text
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text


def text_from_bytes(data: bytes) -> str:
    """Decode output bytes for the model: UTF-8, and a note when they were not text.

    Invalid UTF-8 becomes U+FFFD and NUL bytes are dropped (they break prompt rendering).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        return text
    cleaned = data.decode("utf-8", errors="replace").replace("\x00", "")
    return (
        f"[binary output: {len(data):,} bytes; invalid UTF-8 shown as U+FFFD, NUL bytes removed]\n"
        + cleaned
    )


def _render(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, bytes | bytearray | memoryview):
        return text_from_bytes(bytes(result))
    return json.dumps(to_jsonable_python(result, fallback=str), ensure_ascii=False)


class ToolRegistry:
    """The tools one agent may call, in registration order, and how to run a block of calls.

    ``count_tokens`` measures output against the caps; pass the engine's exact tokenizer.
    The default (``approx_tokens``) is a conservative estimate that needs no network.
    """

    def __init__(
        self,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        workspace: str | Path = ".",
        default_max_output_tokens: int = 8192,
        max_output_chars: int | None = None,
        count_tokens: TokenCounter | None = None,
    ) -> None:
        self.workspace = Path(workspace).resolve()
        self.default_max_output_tokens = default_max_output_tokens
        self.max_output_chars = max_output_chars
        self.count_tokens: TokenCounter = count_tokens or approx_tokens
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.add(item)

    @property
    def spill_dir(self) -> Path:
        return self.workspace / ".agentcore" / "spill"

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def add(self, item: Tool | Callable[..., Any]) -> Tool:
        """Register a Tool (a plain function is wrapped with ``@tool`` defaults)."""
        new = item if isinstance(item, Tool) else tool(item)
        if new.name in self._tools:
            raise ToolError(f"two tools are named {new.name!r}; rename one with @tool(name=...)")
        self._tools[new.name] = new
        return new

    async def run(self, calls: Sequence[ToolCall]) -> list[ToolMessage]:
        """Run one block of calls concurrently; results in call order, each one capped."""
        results: list[ToolMessage | None] = [None] * len(calls)
        # Capping runs in threads (multi-MB counts and spill writes would stall the loop),
        # on its own limiter so abandoned hung tool threads can never starve it.
        limiter = anyio.CapacityLimiter(4)

        async def run_one(index: int, call: ToolCall) -> None:
            results[index] = await self._run_one(call, limiter)

        async with anyio.create_task_group() as group:
            for index, call in enumerate(calls):
                group.start_soon(run_one, index, call)
        return cast(list[ToolMessage], results)

    async def _run_one(self, call: ToolCall, limiter: anyio.CapacityLimiter) -> ToolMessage:
        target = self._tools.get(call.name)
        try:
            if target is None:
                message = ToolMessage(
                    call_id=call.id, name=call.name, content=self._unknown(call.name), is_error=True
                )
            else:
                message = await target.call(call.arguments, call_id=call.id)
            max_tokens = (
                target.max_output_tokens
                if target is not None and target.max_output_tokens is not None
                else self.default_max_output_tokens
            )
            capped = await anyio.to_thread.run_sync(
                partial(
                    cap_output,
                    message.content,
                    max_tokens=max_tokens,
                    max_chars=self.max_output_chars,
                    count_tokens=self.count_tokens,
                    spill_dir=self.spill_dir,
                    relative_to=self.workspace,
                ),
                limiter=limiter,
            )
        # A bug in a token counter or in agentcore itself must not stop the loop either.
        except Exception as exc:  # noqa: BLE001
            return ToolMessage(
                call_id=call.id,
                name=call.name,
                content=f"agentcore could not produce this result: {_describe_exception(exc)}",
                is_error=True,
            )
        return message.model_copy(
            update={"content": capped.text, "truncated": capped.truncated,
                    "spill_path": capped.spill_path}
        )  # fmt: skip

    def _unknown(self, name: str) -> str:
        available = ", ".join(self._tools) or "(none)"
        text = f"Unknown tool {name!r}. Available tools: {available}."
        close = difflib.get_close_matches(name, self._tools, n=1)
        return f"{text} Did you mean {close[0]!r}?" if close else text
