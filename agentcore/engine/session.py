"""One conversation's live KV, its decoder and its token ledger.

Invariant: ``Session.ids`` is exactly the token ids whose KV is valid in ``Session.kv``, in
order, and ``len(ids) == kv.length``. This class is the only writer of both: every path that
changes the KV (prefill, a forced span, a decode step, a restore from the checkpoint store,
a rollback to a shared prefix) goes through one of its methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agentcore.engine.base import Sampling

__all__ = ["Session"]


class Session:
    """A live session: ``kv`` (a backend's live KV), ``decoder`` (engine/generate.Decoder)."""

    def __init__(self, kv: Any, decoder: Any) -> None:
        self.kv = kv
        self.decoder = decoder
        self.ids: list[int] = []
        # The store's record of this session's partial last block (replaced at each checkpoint).
        self.tail: str | None = None
        # What the session computed last turn (prompt + sampled tokens): the reusable prefix.
        self.computed: list[int] = []
        self.turns = 0

    def reset(self) -> None:
        """Empty the session for reuse by another conversation: its KV buffers (and on CUDA
        its captured graph) are kept, so a new session starts without allocating."""
        self.settle()
        self.truncate(0)
        self.tail, self.computed, self.turns = None, [], 0

    # ---- changing the KV

    def truncate(self, n: int) -> None:
        """Roll the live KV back to its first ``n`` tokens (a shared prefix)."""
        n = min(n, len(self.ids))
        self.kv.truncate(n)
        del self.ids[n:]

    def restored(self, ids: Sequence[int]) -> None:
        """The checkpoint store wrote the KV of ``ids`` (positions 0..len) into ``kv``."""
        self.kv.length = len(ids)
        self.ids = list(ids)

    def prefill(self, ids: Sequence[int], *, reserve: int | None = None) -> None:
        """Append prompt ids; the decoder holds the logits of the last one. ``reserve``: the
        tokens a generation starting right after will reserve (``start``), so a decoder can
        prepare for it while the prefill runs (the CUDA decoder captures its graph)."""
        if reserve is None:
            self.decoder.prefill(ids)
        else:
            self.decoder.prefill(ids, reserve=reserve)
        self.ids.extend(ids)

    def start(self, sampling: Sampling | None, seed: int | None = None, *, reserve: int = 0) -> None:
        """Begin a generation of up to ``reserve`` tokens (the KV is sized for them now)."""
        self.decoder.start(sampling, seed, reserve=reserve)

    def feed(self, ids: Sequence[int]) -> None:
        """Append generated ids (sampled earlier, or forced by a constraint)."""
        self.decoder.feed(ids)
        self.ids.extend(ids)

    def sample(self, mask: np.ndarray | None = None) -> int:
        """The next token from the held logits (nothing is appended)."""
        return self.decoder.sample(mask)

    def step(self, token: int, mask: np.ndarray | None = None) -> int:
        """Append ``token`` and sample the one after it."""
        nxt = self.decoder.step(token, mask)
        self.ids.append(token)
        return nxt

    @property
    def can_verify(self) -> bool:
        """Whether the decoder checks drafts in one batched step (``verify``/``rewind``; a
        decoder with a ``verify_drafts`` switch, the CUDA one, only while it is on)."""
        d = self.decoder
        return hasattr(d, "verify") and hasattr(d, "rewind") and bool(getattr(d, "verify_drafts", True))

    @property
    def max_verify(self) -> int | None:
        """The most tokens one ``verify`` takes (the last sampled one and its draft), if the
        decoder has a limit."""
        return getattr(self.decoder, "max_verify", None)

    def verify(self, ids: Sequence[int]) -> list[int]:
        """Append ``ids`` (the last sampled token, then a draft) in one batch; the token the
        model draws after each of them."""
        out = self.decoder.verify(ids)
        self.ids.extend(ids)
        return out

    def rewind(self, n: int, pending: int) -> None:
        """Keep the first ``n`` ids of the last ``verify``'s; ``pending`` is the accepted
        token drawn after them (fed by the next step)."""
        self.decoder.rewind(n, pending)
        del self.ids[n:]

    def settle(self) -> None:
        """Wait for decoder work in flight (a CUDA step run ahead) before the KV is touched
        by anyone else (a restore, a checkpoint read)."""
        self.decoder.settle()
