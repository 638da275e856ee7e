"""The one decode loop: sample, constrain, stop; run whole in one worker thread per request.

``Decoder`` is what the loop needs from a backend: ``prefill(ids)`` / ``feed(ids)`` append
ids and hold the last position's logits, ``sample(mask)`` draws from them, ``step(token,
mask)`` appends one token and draws the next (on CUDA one graph replay, sampling on the
device: one token id crosses to the host per step). ``EagerDecoder`` is the same over any ops
backend with the host sampler: the NumPy path, and the referee of the CUDA one.

``generate`` runs in a worker thread and hands visible text to ``emit`` (the engine forwards
it to the async side through a memory object stream). The DSML constraint works on ids on
the host: a forced span is appended as one batch with the token before it, an allowed-set goes
to the decoder as a mask, free text needs none. Stop strings are checked on the host from
the id stream; a constrained tool-call block ends generation when the constraint reports it
complete (never on a raw string match, which a parameter value could contain).

Invariants:
- Every sampled or forced token is in ``GenerationResult.token_ids`` in order; the session's
  ledger holds the prompt plus every one of them that has been fed. ``finish`` feeds the
  last ones too, so the next turn's prompt (which renders these exact ids) reuses all of it.
- ``cancelled`` is polled once per step: a consumer that walks away stops the loop within a
  step, and the session's ledger still matches its KV.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agentcore.engine.base import Sampling
from agentcore.engine.decode.constrain import Allowed, Forced, ToolCallConstraint
from agentcore.engine.decode.lookup import PromptLookup
from agentcore.engine.decode.sampler import REPEAT_WINDOW, sample
from agentcore.engine.decode.stop import StopChecker
from agentcore.engine.session import Session

__all__ = ["Decoder", "EagerDecoder", "GenerationResult", "generate"]



class Decoder(Protocol):
    def prefill(self, ids: Sequence[int], *, reserve: int | None = None) -> None: ...
    def start(self, sampling: Sampling | None, seed: int | None = None, *,
              reserve: int = 0) -> None: ...  # fmt: skip
    def feed(self, ids: Sequence[int]) -> None: ...
    def sample(self, mask: np.ndarray | None = None) -> int: ...
    def step(self, token: int, mask: np.ndarray | None = None) -> int: ...
    def logits(self) -> np.ndarray: ...
    def settle(self) -> None: ...


class EagerDecoder:
    """``Decoder`` over a ``Transformer`` on any ops backend: one forward call per step."""

    def __init__(self, model: Any, kv: Any) -> None:
        self.model, self.kv = model, kv
        self._logits: np.ndarray | None = None
        self._sampling: Sampling | None = None
        self._rng = np.random.default_rng()
        self._gen_start = 0
        self._generated: list[int] = []  # tokens at positions gen_start, gen_start + 1, ...
        self._rows: tuple[int, np.ndarray] = (0, np.zeros((0, 0), np.float32))  # verify's logits

    def prefill(self, ids: Sequence[int], *, reserve: int | None = None) -> None:
        """Append ``ids``; hold the last one's logits (``reserve``: see ``CudaDecoder``)."""
        self._logits = self.model.forward(list(ids), self.kv.length, self.kv)

    def start(self, sampling: Sampling | None, seed: int | None = None, *, reserve: int = 0) -> None:
        self.kv.grow(self.kv.length + reserve + 1)
        self._sampling = sampling
        chosen = sampling.seed if sampling is not None and sampling.seed is not None else seed
        self._rng = np.random.default_rng(chosen)
        self._gen_start = self.kv.length
        self._generated = []

    def feed(self, ids: Sequence[int]) -> None:
        self._record(self.kv.length, ids)
        self.prefill(ids)

    def sample(self, mask: np.ndarray | None = None) -> int:
        if self._logits is None:
            raise RuntimeError("sample() before any prefill")
        x = self._logits if mask is None else np.where(mask, self._logits, -np.inf)
        last = self.kv.length - 1 - self._gen_start  # index of the last fed generated token
        recent = self._generated[max(0, last - REPEAT_WINDOW + 1) : last + 1] if last >= 0 else []
        token = sample(x, self._sampling, self._rng, recent)
        self._record(self.kv.length, [token])
        return token

    def step(self, token: int, mask: np.ndarray | None = None) -> int:
        self.prefill([token])
        return self.sample(mask)

    def verify(self, ids: Sequence[int]) -> list[int]:
        """Feed ``ids`` (the last sampled token, then a draft) as one batch and draw the token
        after each of them, unmasked, as ``sample`` would after feeding them one at a time
        (the repetition window of each draw ends at its own position). The KV then holds all
        of ``ids``; ``rewind`` keeps the accepted prefix."""
        ids = [int(t) for t in ids]
        base = self.kv.length
        self._record(base, ids)
        rows = self.model.forward(ids, base, self.kv, all_logits=True)
        self._rows = (base, rows)
        out = []
        for i in range(len(ids)):
            last = base + i - self._gen_start
            recent = self._generated[max(0, last - REPEAT_WINDOW + 1) : last + 1] if last >= 0 else []
            out.append(sample(rows[i], self._sampling, self._rng, recent))
        self._logits = rows[-1]
        return out

    def rewind(self, n: int, pending: int) -> None:
        """Keep the first ``n`` positions of the KV (at least the first of the last
        ``verify``); the held logits become those after position n - 1, and ``pending`` (the
        accepted token drawn there, not yet fed) is recorded at position n."""
        base, rows = self._rows
        if not base < n <= self.kv.length:
            raise ValueError(f"rewind to {n} outside the last verify's positions ({base}, {self.kv.length}]")
        self.kv.truncate(n)
        self._logits = rows[n - 1 - base]
        self._record(n, [pending])

    def logits(self) -> np.ndarray:
        if self._logits is None:
            raise RuntimeError("logits() before any prefill")
        return self._logits

    def settle(self) -> None:
        """Nothing runs in the background here."""

    def _record(self, pos: int, ids: Sequence[int]) -> None:
        i = pos - self._gen_start
        if i < 0:
            return
        del self._generated[i:]
        self._generated.extend(int(t) for t in ids)


@dataclass
class GenerationResult:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"  # "stop" | "length" | "tool_calls" | "cancelled"
    ttft_s: float = 0.0
    decode_s: float = 0.0
    unfed: list[int] = field(default_factory=list)  # sampled ids not yet in the KV
    drafted: int = 0  # prompt-lookup draft tokens verified
    accepted: int = 0  # of them, kept (the model drew the same token there)
    verify_steps: int = 0  # batched steps that checked a draft

    @property
    def decode_tokens_per_s(self) -> float:
        n = len(self.token_ids) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


def generate(
    session: Session,
    token_bytes: Callable[[int], bytes],
    *,
    max_tokens: int,
    stops: StopChecker,
    constraint: ToolCallConstraint | None,
    blocks: Any = None,
    emit: Callable[[str], None],
    cancelled: threading.Event,
    started: float,
    draft_tokens: int = 0,
) -> GenerationResult:
    """Decode from the session's held logits (the prompt is already prefilled).

    ``started`` is the request's ``perf_counter`` start, so ``ttft_s`` covers the prefill.
    ``blocks``: a ``dsml.StreamParser`` fed the generated text; generation ends when it reports
    a tool-call block complete (any dialect), as it ends when the constraint's block is done.
    ``draft_tokens`` > 0 (and a decoder with ``verify``): prompt-lookup speculative decoding
    on unconstrained steps (``decode/lookup.py``): up to that many tokens that followed the
    latest earlier occurrence of the newest n-gram are checked in one batched step, and the
    prefix the model itself draws is kept. A speculative batch ends at a stop, a complete
    tool-call block, or a token holding ``<`` when a constraint is watching (it reads the text
    from there, as it would have token by token), so the output is sequential decoding's.
    """
    res = GenerationResult()
    out, parts = res.token_ids, []
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    raw = ""  # everything generated, held-back stop-string prefixes included
    unfed: list[int] = []
    t_first = 0.0
    lookup = None
    if draft_tokens > 0 and getattr(session, "can_verify", False):
        lookup = PromptLookup()
        lookup.extend(session.ids)
        widest = getattr(session, "max_verify", None)
        if widest is not None:
            draft_tokens = min(draft_tokens, widest - 1)
    while len(out) < max_tokens:
        if cancelled.is_set():
            res.finish_reason = "cancelled"
            break
        step = constraint.next(raw) if constraint is not None else None
        spec = -1  # the KV position of the token before a draft, when this step checks one
        if isinstance(step, Forced):
            new = list(step.ids)[: max_tokens - len(out)]
        else:
            mask = step.mask if isinstance(step, Allowed) else None
            draft: list[int] = []
            if lookup is not None and mask is None and len(unfed) == 1:
                draft = lookup.propose(min(draft_tokens, max_tokens - len(out) - 1))
            if draft:
                spec = len(session.ids)
                drawn = session.verify([unfed[0], *draft])
                j = 0
                while j < len(draft) and drawn[j] == draft[j]:
                    j += 1
                new = [*draft[:j], drawn[j]]
                res.drafted += len(draft)
                res.verify_steps += 1
            elif len(unfed) == 1:
                new = [session.step(unfed[0], mask)]
            else:
                if unfed:
                    session.feed(unfed)
                new = [session.sample(mask)]
            unfed = []
        if not out:
            t_first = time.perf_counter()
            res.ttft_s = t_first - started
        kept = 0
        for token in new:
            out.append(token)
            unfed.append(token)
            kept += 1
            piece = utf8.decode(token_bytes(token))
            raw += piece
            if blocks is not None:
                blocks.feed(piece)
            visible = stops.push(piece, token)
            if visible:
                parts.append(visible)
                emit(visible)
            if stops.stopped:
                break
            if spec >= 0 and ((constraint is not None and "<" in piece)
                              or (blocks is not None and blocks.block_complete)):  # fmt: skip
                break
        if spec >= 0:
            # The KV keeps the token before the draft and the kept tokens but the last, which
            # stays unfed (the next step feeds it), exactly as after kept sequential steps.
            res.accepted += min(kept, len(new) - 1)
            session.rewind(spec + kept, new[kept - 1])
            unfed = [new[kept - 1]]
        if lookup is not None:
            lookup.extend(new[:kept])
        if stops.stopped:
            res.finish_reason = "stop"
            break
        if (constraint is not None and constraint.done) or (blocks is not None and blocks.block_complete):
            res.finish_reason = "tool_calls"
            break
    if not stops.stopped:
        tail = stops.push(utf8.decode(b"", final=True)) + stops.flush()
        if tail:
            parts.append(tail)
            emit(tail)
    session.settle()
    res.decode_s = time.perf_counter() - t_first if out else 0.0
    res.text = "".join(parts)
    res.unfed = unfed
    return res
