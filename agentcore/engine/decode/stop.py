"""Stop detection over a generation's token ids and decoded text.

Invariant: ``StopChecker`` never emits text that a stop string could still match: it holds
back the longest tail that is a prefix of some stop string, and on a match emits exactly the
text before it (plus the stop string itself when that stop asks to be included).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["StopChecker", "StopString"]


@dataclass(frozen=True)
class StopString:
    """A string that ends generation; ``include`` keeps it in the output (a closing tag)."""

    text: str
    include: bool = False


class StopChecker:
    """Watches a generation's token ids and decoded text for its stop conditions.

    Feed each token with ``push(text, token_id)`` and emit what it returns; once ``stopped``,
    ``matched`` is the stop token id or the ``StopString`` that ended it. When generation
    ends for another reason (length), ``flush()`` returns the text still held back.
    """

    def __init__(
        self, stop_ids: Iterable[int] = (), stops: Iterable[str | StopString] = ()
    ) -> None:
        self.stop_ids = frozenset(stop_ids)
        self.stops = tuple(s if isinstance(s, StopString) else StopString(s) for s in stops)
        if any(not s.text for s in self.stops):
            raise ValueError("stop strings must be non-empty")
        self.stopped = False
        self.matched: int | StopString | None = None
        self._held = ""

    def push(self, text: str, token_id: int | None = None) -> str:
        """The part of ``text`` (and of earlier held text) that is now safe to emit."""
        if self.stopped:
            return ""
        if token_id is not None and token_id in self.stop_ids:
            # The stop token's own text (an end-of-turn marker) is never output.
            self.stopped, self.matched = True, token_id
            return self.flush()
        buf = self._held + text
        hit = self._first_match(buf)
        if hit is not None:
            start, stop = hit
            self.stopped, self.matched, self._held = True, stop, ""
            return buf[: start + len(stop.text)] if stop.include else buf[:start]
        hold = max((_partial_suffix(buf, s.text) for s in self.stops), default=0)
        self._held = buf[len(buf) - hold :]
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out

    def _first_match(self, buf: str) -> tuple[int, StopString] | None:
        """The earliest occurrence of any stop string (the longest one on a tie)."""
        best: tuple[int, StopString] | None = None
        for s in self.stops:
            i = buf.find(s.text)
            if i >= 0 and (best is None or (i, -len(s.text)) < (best[0], -len(best[1].text))):
                best = (i, s)
        return best


def _partial_suffix(buf: str, stop: str) -> int:
    """Length of the longest tail of ``buf`` that is a proper prefix of ``stop``."""
    for k in range(min(len(stop) - 1, len(buf)), 0, -1):
        if buf.endswith(stop[:k]):
            return k
    return 0
