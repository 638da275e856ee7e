"""The JSON value grammar of constrained tool calls: for a parameter's JSON schema, a matcher
(``ValueNode``) that steps one character at a time and says whether the text so far is a prefix
of a value of the schema's type, whether it may end there, and whether it is inside a string
body (where a whole token of plain characters changes nothing). ``constrain.py`` masks the
vocabulary with it; the shapes it admits are that module's invariants.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from typing import Any, Protocol, cast

# ---------------------------------------------------------------------------- schemas


def fixed_values(schema: Any) -> list[Any] | None:
    """The values a schema allows when they are a finite set (enum, const, boolean, null)."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return [schema["const"]]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return list(schema["enum"])
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(alternatives, list):
        values = [fixed_values(a) for a in alternatives]
        return None if any(v is None for v in values) else [x for v in values for x in v]
    kinds = _types(schema)
    if kinds and set(kinds) <= {"boolean", "null"}:
        return [v for k in kinds for v in ((True, False) if k == "boolean" else (None,))]
    return None


def admits_string(schema: Any) -> bool:
    """Whether any string is valid: such a value is written raw, with string="true"."""
    if not isinstance(schema, dict):
        return True
    if "enum" in schema or "const" in schema:
        return False
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(alternatives, list):
        return any(admits_string(a) for a in alternatives)
    kinds = _types(schema)
    return "string" in kinds or not kinds and "properties" not in schema and "items" not in schema


def _types(schema: dict[str, Any]) -> list[str]:
    kinds = schema.get("type")
    return [kinds] if isinstance(kinds, str) else list(kinds or ())


def json_node(schema: Any) -> ValueNode:
    if not isinstance(schema, dict):
        return _ANY
    fixed = fixed_values(schema)
    if fixed is not None:
        return _Literals(tuple(dict.fromkeys(json.dumps(v, ensure_ascii=False) for v in fixed)))
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(alternatives, list):
        return _union([json_node(a) for a in alternatives])
    kinds = _types(schema) or (["object"] if "properties" in schema else [])
    if not kinds:
        return _ANY
    return _union([_typed_node(kind, schema) for kind in kinds])


def _typed_node(kind: str, schema: dict[str, Any]) -> ValueNode:
    if kind == "string":
        return _STRING
    if kind in ("integer", "number"):
        low, above = schema.get("minimum"), schema.get("exclusiveMinimum")
        nonnegative = _at_least(low, 0) or _at_least(above, 0)
        positive = kind == "integer" and (_at_least(low, 1) or _at_least(above, 0))
        return _Number(kind == "integer", signed=not nonnegative, nonzero=positive)
    if kind == "boolean":
        return _Literals(("true", "false"))
    if kind == "null":
        return _Literals(("null",))
    if kind == "array":
        return _Array(json_node(schema.get("items", {})))
    if kind == "object":
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            additional: ValueNode | None = json_node(extra)
        else:
            # Declared properties and nothing else, unless the object is free-form.
            additional = None if properties or extra is False else _ANY
        return _Object(
            {k: json_node(v) for k, v in properties.items()},
            frozenset(schema.get("required") or ()),
            additional,
        )
    return _ANY


def _at_least(bound: Any, value: float) -> bool:
    return isinstance(bound, int | float) and not isinstance(bound, bool) and bound >= value


# ---------------------------------------------------------------------------- JSON matchers


class ValueNode(Protocol):
    """A JSON grammar as a character automaton with hashable, immutable states."""

    def start(self) -> Hashable: ...
    def step(self, state: Hashable, ch: str) -> Hashable | None: ...  # None: rejected
    def accepting(self, state: Hashable) -> bool: ...
    def in_string(self, state: Hashable) -> bool: ...  # inside a string body
    def finish(self, state: Hashable) -> str: ...  # the shortest text that completes the value


class _Literals:
    """One of a fixed set of texts."""

    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options
        self._prefixes = {o[:k] for o in options for k in range(len(o) + 1)}

    def start(self) -> str:
        return ""

    def step(self, state: str, ch: str) -> str | None:
        written = state + ch
        return written if written in self._prefixes else None

    def accepting(self, state: str) -> bool:
        return state in self.options

    def in_string(self, state: str) -> bool:
        return False

    def finish(self, state: str) -> str:
        return min((o for o in self.options if o.startswith(state)), key=len)[len(state) :]


_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")


class _Number:
    """A JSON number (integer: no fraction or exponent). States: "" start, "-", "0" a leading
    zero, "I" integer digits, "." point, "F" fraction digits, "E" e, "S" exponent sign, "X"
    exponent digits."""

    def __init__(self, integer: bool, *, signed: bool, nonzero: bool) -> None:
        self.integer, self.signed, self.nonzero = integer, signed, nonzero

    def start(self) -> str:
        return ""

    def step(self, state: str, ch: str) -> str | None:
        if state in ("", "-"):
            if ch == "-" and state == "" and self.signed:
                return "-"
            if ch == "0":
                return None if self.nonzero else "0"
            return "I" if ch in _DIGITS else None
        if ch in _DIGITS:
            return {"I": "I", ".": "F", "F": "F", "E": "X", "S": "X", "X": "X"}.get(state)
        if self.integer:
            return None
        if ch == "." and state in ("0", "I"):
            return "."
        if ch in "eE" and state in ("0", "I", "F"):
            return "E"
        return "S" if ch in "+-" and state == "E" else None

    def accepting(self, state: str) -> bool:
        return state in ("0", "I", "F", "X")

    def in_string(self, state: str) -> bool:
        return False

    def finish(self, state: str) -> str:
        if state == "":
            return "1" if self.nonzero else "0"
        return "" if self.accepting(state) else "0" if state != "-" else "1"


class _String:
    """A JSON string without "<" (it could begin the closing tag). States: "O" before the
    quote, "B" body, "\\" after a backslash, "U0".."U3" hex digits of \\u read, "C" closed."""

    def start(self) -> str:
        return "O"

    def step(self, state: str, ch: str) -> str | None:
        if state == "B":
            if ch == '"':
                return "C"
            if ch == "\\":
                return "\\"
            return None if ch == "<" or ch < " " else "B"
        if state == "O":
            return "B" if ch == '"' else None
        if state == "\\":
            return "B" if ch in '"\\/bfnrt' else "U0" if ch == "u" else None
        if state[0] == "U" and ch in _HEX:
            return "B" if state == "U3" else f"U{int(state[1]) + 1}"
        return None

    def accepting(self, state: str) -> bool:
        return state == "C"

    def in_string(self, state: str) -> bool:
        return state == "B"

    def finish(self, state: str) -> str:
        if state[0] == "U":
            return "0" * (4 - int(state[1])) + '"'
        return {"O": '""', "B": '"', "\\": '\\"', "C": ""}[state]


class _Array:
    """``[item, item]``. States: ("[",), ("F",) after "[", ("I", item state), ("C",) after
    ",", ("CS",) after ", ", ("D",) closed."""

    def __init__(self, item: ValueNode) -> None:
        self.item = item

    def start(self) -> tuple:
        return ("[",)

    def step(self, state: tuple, ch: str) -> tuple | None:
        phase = state[0]
        if phase == "I":
            inner = self.item.step(state[1], ch)
            if inner is not None:
                return ("I", inner)
            if not self.item.accepting(state[1]):
                return None
            return ("C",) if ch == "," else ("D",) if ch == "]" else None
        if phase == "[":
            return ("F",) if ch == "[" else None
        if phase == "F" and ch == "]":
            return ("D",)
        if phase == "C" and ch == " ":
            return ("CS",)
        if phase in ("F", "C", "CS"):
            inner = self.item.step(self.item.start(), ch)
            return None if inner is None else ("I", inner)
        return None

    def accepting(self, state: tuple) -> bool:
        return state[0] == "D"

    def in_string(self, state: tuple) -> bool:
        return state[0] == "I" and self.item.in_string(state[1])

    def finish(self, state: tuple) -> str:
        phase = state[0]
        if phase == "I":
            return self.item.finish(state[1]) + "]"
        if phase in ("C", "CS"):
            return self.item.finish(self.item.start()) + "]"
        return {"[": "[]", "F": "]", "D": ""}[phase]


class _Object:
    """``{"key": value, …}`` over declared properties (each at most once, required ones
    before "}") and, if ``additional``, any other key. States: ("{",), ("F", used) after "{",
    ("K", used, key text, key state), ("V0", used, key) after ":", ("VS", used, key) after
    ": ", ("V", used, key, value state), ("C", used) after ",", ("CS", used), ("D",)."""

    def __init__(
        self, properties: dict[str, ValueNode], required: frozenset[str], additional: ValueNode | None
    ) -> None:
        self.properties, self.required, self.additional = properties, required, additional
        self._keys: dict[frozenset[str], ValueNode] = {}

    def start(self) -> tuple:
        return ("{",)

    def step(self, state: tuple, ch: str) -> tuple | None:
        phase = state[0]
        if phase == "{":
            return ("F", frozenset()) if ch == "{" else None
        if phase == "K":
            _, used, text, inner = state
            keys = self._key_node(used)
            after = keys.step(inner, ch)
            if after is not None:
                return ("K", used, text + ch, after)
            if ch != ":" or not keys.accepting(inner):
                return None
            key = json.loads(text)
            return None if key in used else ("V0", used | {key}, key)
        if phase in ("V0", "VS", "V"):
            value = self._value_node(state[2])
            if phase == "V0" and ch == " ":
                return ("VS", state[1], state[2])
            if phase != "V":
                after = value.step(value.start(), ch)
                return None if after is None else ("V", state[1], state[2], after)
            after = value.step(state[3], ch)
            if after is not None:
                return ("V", state[1], state[2], after)
            if not value.accepting(state[3]):
                return None
            return self._after_value(state[1], ch)
        if phase == "F" and ch == "}":
            return ("D",) if self.required <= state[1] else None
        if phase == "C" and ch == " ":
            return ("CS", state[1])
        if phase in ("F", "C", "CS"):
            keys = self._key_node(state[1])
            after = keys.step(keys.start(), ch)
            return None if after is None else ("K", state[1], ch, after)
        return None

    def _after_value(self, used: frozenset[str], ch: str) -> tuple | None:
        if ch == "}":
            return ("D",) if self.required <= used else None
        more = self.additional is not None or any(k not in used for k in self.properties)
        return ("C", used) if ch == "," and more else None

    def _key_node(self, used: frozenset[str]) -> ValueNode:
        node = self._keys.get(used)
        if node is None:
            names = tuple(
                json.dumps(k, ensure_ascii=False) for k in self.properties if k not in used
            )
            alternatives: list[ValueNode] = [_Literals(names)]
            if self.additional is not None:
                alternatives.append(_STRING)
            node = self._keys[used] = _union(alternatives)
        return node

    def _value_node(self, key: str) -> ValueNode:
        node = self.properties.get(key, self.additional)
        assert node is not None  # the key node only admits declared keys otherwise
        return node

    def accepting(self, state: tuple) -> bool:
        return state[0] == "D"

    def in_string(self, state: tuple) -> bool:
        phase = state[0]
        if phase == "K":
            return self._key_node(state[1]).in_string(state[3])
        return phase == "V" and self._value_node(state[2]).in_string(state[3])

    def finish(self, state: tuple) -> str:
        phase = state[0]
        if phase == "{":
            return "{" + self._fill(frozenset(), first=True) + "}"
        if phase == "D":
            return ""
        used = state[1]
        if phase == "F":
            return self._fill(used, first=True) + "}"
        if phase in ("C", "CS"):
            if self.required <= used:  # a key must follow the comma: the first one free
                free = [k for k in self.properties if k not in used]
                if free:
                    return self._pair(free[0]) + "}"
                extra = cast(ValueNode, self.additional)
                return '"": ' + extra.finish(extra.start()) + "}"
            return self._fill(used, first=True) + "}"
        if phase == "K":
            rest = self._key_node(used).finish(state[3])
            key = json.loads(state[2] + rest)
            value = self._value_node(key)
            tail = ": " + value.finish(value.start())
            return rest + tail + self._fill(used | {key}, first=False) + "}"
        value = self._value_node(state[2])
        now = value.finish(value.start()) if phase in ("V0", "VS") else value.finish(state[3])
        return now + self._fill(used, first=False) + "}"

    def _fill(self, used: frozenset[str], *, first: bool) -> str:
        pairs = [self._pair(k) for k in self.properties if k in self.required and k not in used]
        text = ", ".join(pairs)
        return text if first or not text else ", " + text

    def _pair(self, key: str) -> str:
        value = self.properties[key]
        return f"{json.dumps(key, ensure_ascii=False)}: {value.finish(value.start())}"


class _Union:
    """Any of several grammars: the state holds every alternative still alive."""

    def __init__(self, alternatives: Sequence[ValueNode]) -> None:
        self.alternatives = tuple(alternatives)

    def start(self) -> tuple:
        return tuple((i, a.start()) for i, a in enumerate(self.alternatives))

    def step(self, state: tuple, ch: str) -> tuple | None:
        alive = []
        for i, inner in state:
            after = self.alternatives[i].step(inner, ch)
            if after is not None:
                alive.append((i, after))
        return tuple(alive) or None

    def accepting(self, state: tuple) -> bool:
        return any(self.alternatives[i].accepting(inner) for i, inner in state)

    def in_string(self, state: tuple) -> bool:
        return all(self.alternatives[i].in_string(inner) for i, inner in state)

    def finish(self, state: tuple) -> str:
        return min((self.alternatives[i].finish(inner) for i, inner in state), key=len)


def _union(nodes: Sequence[ValueNode]) -> ValueNode:
    """One node for several; fixed texts merge into one ``_Literals``."""
    texts = [o for n in nodes if isinstance(n, _Literals) for o in n.options]
    others = [n for n in nodes if not isinstance(n, _Literals)]
    if texts or not others:
        others.append(_Literals(tuple(dict.fromkeys(texts))))
    return others[0] if len(others) == 1 else _Union(others)


class _AnyJson(_Union):
    """Any JSON value (a schema that says nothing, an array's untyped items)."""

    def __init__(self) -> None:
        super().__init__(
            (
                _STRING,
                _Number(False, signed=True, nonzero=False),
                _Literals(("true", "false", "null")),
                _Array(self),
                _Object({}, frozenset(), self),
            )
        )


_STRING = _String()
_ANY = _AnyJson()
