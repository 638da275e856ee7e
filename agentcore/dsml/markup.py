"""DSML markup: the special strings, the three dialects, and a bounded tag scanner.

The scanner decides, at a ``<``, whether the text there is a complete DSML tag, cannot be
one, or may still become one when more text arrives. It looks at most ``MAX_TAG``
characters ahead, so a tag that never closes costs a bounded amount per look, and the
stream parser that calls it stays linear in its input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DSML = "｜DSML｜"
EOS = "<｜end▁of▁sentence｜>"
THINK_START = "<think>"
THINK_END = "</think>"
TOOL_RESULT_START = "<tool_result>"
TOOL_RESULT_END = "</tool_result>"

MAX_TAG = 512  # longer than any tag a model writes (names are short); beyond it: not a tag


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one DeepSeek generation spells its tags (the part after ``｜DSML｜``)."""

    name: str
    block: str
    invoke: str
    parameter: str

    def tag(self, kind: str, *, closing: bool = False) -> str:
        return f"<{'/' if closing else ''}{DSML}{getattr(self, kind)}>"


V32 = Dialect("v3.2", "function_calls", "invoke", "parameter")
V4 = Dialect("v4", "tool_calls", "invoke", "parameter")
V41 = Dialect("v4.1", " calls", " invoke", " parameter")
DIALECTS = {d.name: d for d in (V32, V4, V41)}

TOOL_CALLS_START = V4.tag("block")
TOOL_CALLS_END = V4.tag("block", closing=True)
INVOKE_END = V4.tag("invoke", closing=True)
PARAMETER_END = V4.tag("parameter", closing=True)

# Tag names as the scanner reports them: the V4.1 space is dropped, so "calls" is V4.1's block.
BLOCK_NAMES = frozenset({"tool_calls", "function_calls", "calls"})
KNOWN_NAMES = BLOCK_NAMES | {"invoke", "parameter"}


@dataclass(frozen=True, slots=True)
class Tag:
    text: str
    closing: bool
    name: str
    attrs: tuple[tuple[str, str], ...]

    def attr(self, key: str, default: str = "") -> str:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    def duplicate_attrs(self) -> list[str]:
        if len(self.attrs) < 2:
            return []
        keys = [k for k, _ in self.attrs]
        if len(set(keys)) == len(keys):
            return []
        return sorted({k for k in keys if keys.count(k) > 1})


PARTIAL = "partial"  # scan_tag: the text may still become a tag

_WS = r"[ \t\r\n]"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*+"
_ATTR = rf'{_WS}++{_NAME}{_WS}*+={_WS}*+"[^"<>]*+"'
_TAG = re.compile(rf"<(/?)[｜|]?DSML[｜|] ?({_NAME})((?:{_ATTR})*+){_WS}*+>")
_ATTR_ONE = re.compile(rf'({_NAME}){_WS}*=(?:{_WS})*"([^"<>]*)"')


def _prefix_pattern(atoms: list[str]) -> str:
    """A pattern matching every prefix of the concatenation of ``atoms``: a(b(c)?)?)?."""
    pattern = ""
    for atom in reversed(atoms):
        pattern = f"(?:{atom}{pattern})?"
    return pattern


# Any proper prefix of a tag, up to the end of the text.
_TAG_PREFIX = re.compile(
    "<"
    + _prefix_pattern(
        [
            "/?",
            "[｜|]?",
            "D",
            "S",
            "M",
            "L",
            "[｜|]",
            " ?",
            _NAME,
            rf'(?:{_ATTR})*+(?:{_WS}++(?:{_NAME}(?:{_WS}*+(?:={_WS}*+(?:"[^"<>]*+)?)?)?)?)?',
        ]
    )
    + r"\Z"
)

PARAMETER_CLOSE = re.compile(r"</[｜|]?DSML[｜|] ?parameter[ \t]*>")
_PARAMETER_CLOSE_PREFIX = re.compile(
    "<"
    + _prefix_pattern(
        ["/", "[｜|]?", "D", "S", "M", "L", "[｜|]", " ?", *"parameter", "[ \t]*+"]
    )
    + r"\Z"
)


def scan_tag(text: str, at: int) -> Tag | str | None:
    """The DSML tag starting at ``text[at]`` (a ``<``); PARTIAL if the text ends before it
    can be told; None if it is not one."""
    end = min(len(text), at + MAX_TAG)
    m = _TAG.match(text, at, end)
    if m:
        attrs = tuple(_ATTR_ONE.findall(m[3])) if m[3] else ()
        return Tag(m.group(), bool(m[1]), m[2], attrs)
    if end == len(text) and end - at < MAX_TAG and _TAG_PREFIX.match(text, at):
        return PARTIAL
    return None


def parameter_close_hold(text: str, start: int) -> int:
    """Where the suffix of ``text[start:]`` that may grow into a parameter closing tag begins."""
    at = text.rfind("<", max(start, len(text) - 32))
    if at >= 0 and _PARAMETER_CLOSE_PREFIX.match(text, at):
        return at
    return len(text)


def is_cut_tag(text: str) -> bool:
    """Text that stopped inside a DSML tag (past its ``DSML｜``): the rest of a cut-off block."""
    return scan_tag(text, 0) == PARTIAL and re.match(r"</?[｜|]?DSML[｜|]", text) is not None
