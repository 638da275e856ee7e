"""Next-token choice and stop detection.

Job: turn a logits vector into one token id (greedy or sampled), and decide where a
generation ends (stop token ids, stop strings over the decoded text stream).

Invariants:
- Sampling follows llama.cpp's chain and semantics: repetition penalty (divide positive
  logits, multiply negative ones, once per distinct recent id), then top-k, top-p, min-p
  over the untempered distribution, then temperature, then one draw. A token removed by a
  filter is never drawn; the most likely token always survives the filters.
- ``sampling is None`` or ``temperature <= 0`` is greedy; the same seed gives the same draws.
- ``StopChecker`` never emits text that a stop string could still match: it holds back the
  longest tail that is a prefix of some stop string, and on a match emits exactly the text
  before it (plus the stop string itself when that stop asks to be included).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from agentcore.engine.base import Sampling

__all__ = ["StopChecker", "StopString", "sample"]

# top-p sorts only the most likely tokens first and widens the window only when they do not
# reach the mass asked for: a full sort of a 150K vocabulary would cost milliseconds per token.
_TOP_P_WINDOW = 256


def sample(
    logits: np.ndarray,
    sampling: Sampling | None,
    rng: np.random.Generator,
    recent_ids: Sequence[int] = (),
) -> int:
    """One token id drawn from ``logits`` (vocab,) under ``sampling``."""
    if sampling is None:
        return int(np.argmax(logits))
    x = np.array(logits, dtype=np.float64)
    if sampling.repetition_penalty != 1.0 and len(recent_ids):
        seen = np.unique(np.asarray(recent_ids, dtype=np.int64))
        v = x[seen]
        x[seen] = np.where(v > 0, v / sampling.repetition_penalty, v * sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return int(np.argmax(x))
    ids = np.arange(len(x))
    if 0 < sampling.top_k < len(ids):
        ids = np.argpartition(-x, sampling.top_k - 1)[: sampling.top_k]
    if sampling.top_p < 1.0:
        ids = _top_p(x, ids, sampling.top_p)
    if sampling.min_p > 0.0:
        # p >= min_p * p_max  <=>  logit >= max_logit + log(min_p)
        ids = ids[x[ids] >= x[ids].max() + np.log(sampling.min_p)]
    z = x[ids] / sampling.temperature
    p = np.exp(z - z.max())
    cdf = np.cumsum(p)
    # side="right": a token whose probability underflowed to 0 adds no width to the cdf,
    # so no draw lands on it.
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(ids[min(i, len(ids) - 1)])


def _top_p(x: np.ndarray, ids: np.ndarray, top_p: float) -> np.ndarray:
    """The smallest set of most likely ``ids`` whose probability mass reaches ``top_p``."""
    z = x[ids]
    p = np.exp(z - z.max())
    p /= p.sum()
    n = _TOP_P_WINDOW
    while True:
        top = np.argpartition(-p, n - 1)[:n] if n < len(p) else np.arange(len(p))
        top = top[np.argsort(-p[top], kind="stable")]
        mass = np.cumsum(p[top])
        if mass[-1] >= top_p or n >= len(p):
            keep = int(np.searchsorted(mass, top_p)) + 1  # include the token that crosses
            return ids[top[: min(keep, len(top))]]
        n *= 4


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
