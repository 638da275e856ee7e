"""Prompt-lookup drafts for speculative decoding: n-grams from the session's own tokens.

An agent's replies copy a lot of what is already in its context: file contents a tool
returned, code it is editing, names and paths from earlier turns. ``PromptLookup`` indexes
every n-gram (n = 1..``max_ngram``) of the session's tokens as they arrive and proposes, after
the newest token, the ``k`` tokens that followed the most recent earlier occurrence of the
longest suffix n-gram that occurred before. The decode loop feeds the last sampled token and
the draft in one batched step (``Decoder.verify``) and keeps the draft's longest prefix that
matches what the model samples there, plus the model's own next token, so every step still
yields at least one token and the output is the one sequential decoding would produce (greedy:
the same tokens; sampling: the same distribution, each token drawn from its true conditional).

Invariant: ``propose`` only returns tokens that followed an n-gram strictly before the newest
position (the suffix itself is indexed one token late), so a draft is never empty when one is
returned and never reaches past the known tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PromptLookup"]


class PromptLookup:
    """Drafts from a token history. ``extend`` the history (prompt, then each accepted token);
    ``propose(k)`` returns up to ``k`` draft tokens, or ``[]`` when no suffix n-gram of at
    least ``min_ngram`` tokens has occurred before."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, not {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        # n-gram -> the position just after its most recent indexed occurrence
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending before this position are indexed

    def reset(self, tokens: Sequence[int] = ()) -> None:
        self.tokens, self._index, self._indexed = [], {}, 0
        self.extend(tokens)

    def truncate(self, n: int) -> None:
        """Forget the tokens from position ``n`` on (the session rolled back)."""
        if n < len(self.tokens):
            self.reset(self.tokens[:n])

    def extend(self, ids: Sequence[int]) -> None:
        self.tokens.extend(int(t) for t in ids)
        # Index n-grams ending at positions < len - 1: each has a continuation token, and the
        # newest position (the suffix a proposal looks up) is not yet its own match.
        t, last = self.tokens, len(self.tokens) - 1
        for end in range(self._indexed, last):
            for n in range(1, min(self.max_ngram, end + 1) + 1):
                self._index[tuple(t[end - n + 1 : end + 1])] = end + 1
        self._indexed = max(self._indexed, last)

    def propose(self, k: int) -> list[int]:
        t = self.tokens
        for n in range(min(self.max_ngram, len(t)), self.min_ngram - 1, -1):
            at = self._index.get(tuple(t[len(t) - n :]))
            if at is not None:
                return t[at : at + k]
        return []
