"""LocalEngine: a GGUF model in process, behind the Engine protocol.

Ties the parts together: gguf (weights) -> tokenizer + chat format (prompt as per-message
token segments) -> Transformer over an ops backend -> sampler; plus the token ledger and the
checkpoint store, so each request prefills only what no live session, RAM block or disk
block already holds.

Invariants:
- ``prompt_tokens + max_tokens <= context_length`` is checked before any KV is touched;
- ``Session.ids`` is exactly the ids whose KV is live; a request is matched against the live
  KV, then the RAM tier, then the disk tier, and only the unmatched tail is prefilled;
- every request logs one ``kv cache hit|miss`` line (DESIGN.md invariant 5) and records its
  reuse (common/prompt) in ``stats()``;
- compute runs in a worker thread, one request at a time, so the event loop stays live.
"""

from __future__ import annotations

import codecs
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from agentcore import dsml
from agentcore.engine.base import (
    CheckpointInfo,
    Completion,
    GenerationRequest,
    TextDelta,
    Usage,
)
from agentcore.engine.kvstore.store import CheckpointStore
from agentcore.engine.model.chat import ChatFormat, detect_chat_format
from agentcore.engine.decode.constrain import Allowed, Forced, ToolCallConstraint
from agentcore.engine.model.gguf import GGUFModel, load_gguf
from agentcore.engine.kvstore.blocks import (
    KVLayout,
    Session,
    block_hashes,
    common_prefix,
    read_span,
    write_span,
)
from agentcore.engine.model.transformer import Transformer
from agentcore.engine.backends.cuda import select_ops
from agentcore.engine.decode.sampler import sample
from agentcore.engine.decode.stop import StopChecker, StopString
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.errors import ContextOverflow
from agentcore.messages import Message, is_compacted

__all__ = ["LocalEngine", "TurnRecord"]

log = logging.getLogger("agentcore.kv")


@dataclass
class TurnRecord:
    """One request's cache outcome, kept in ``stats()['turns']``."""

    session_id: str
    kind: str  # "generate" | "checkpoint"
    prompt: int
    common: int
    source: str
    reason: str = ""
    first_diff: int = -1
    msg: int = -1
    load_ms: float = 0.0
    prefill_ms: float = 0.0

    @property
    def reuse(self) -> float:
        return self.common / self.prompt if self.prompt else 0.0


@dataclass
class _Prepared:
    logits: np.ndarray | None
    record: TurnRecord


class LocalEngine:
    """An in-process engine over one GGUF model.

    Build it with ``LocalEngine.from_gguf(path, ...)``. ``kv_dir`` enables the disk tier
    (checkpoints survive restarts); ``kv_ram_mb`` and ``kv_disk_mb`` are the tier budgets.
    """

    def __init__(
        self,
        model: GGUFModel,
        *,
        context_length: int | None = None,
        device: str = "cpu",
        kv_dir: str | Path | None = None,
        kv_ram_mb: int = 1024,
        kv_disk_mb: int = 16384,
        block_size: int = 256,
        max_live_sessions: int = 4,
        thinking: bool = False,
    ) -> None:
        self.model = model
        self.spec = model.spec
        trained = model.spec.context_length
        self.context_length = int(context_length or trained)
        if self.context_length < 1:
            raise ValueError("context_length must be positive")
        self.ops = select_ops(device)
        self.device = "cuda" if type(self.ops).__name__ == "CudaOps" else "cpu"
        self.tokenizer = Tokenizer.from_gguf(model)
        self.chat: ChatFormat = detect_chat_format(model, self.tokenizer, thinking=thinking)
        self.thinking = thinking
        self.transformer = Transformer(model, self.ops)
        kv_dtype = str(np.dtype(getattr(self.ops, "kv_dtype", np.float32)))
        self.layout = KVLayout(
            model.fingerprint, self.spec.n_layers, self.spec.n_kv_heads, self.spec.head_dim,
            kv_dtype, block_size,
        )
        self.store = CheckpointStore(
            self.layout, ram_bytes=kv_ram_mb << 20, kv_dir=kv_dir, disk_bytes=kv_disk_mb << 20
        )
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.max_live_sessions = max_live_sessions
        self.turns: list[TurnRecord] = []
        self._lock = anyio.Lock()

    @classmethod
    def from_gguf(cls, path: str | Path, **kwargs: Any) -> LocalEngine:
        """Load a GGUF file (memory-mapped) and build the engine; see ``__init__`` for options."""
        return cls(load_gguf(path), **kwargs)

    # ------------------------------------------------------------------ referee methods

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Float32 logits at every position of ``ids`` from an empty cache."""
        return np.asarray(self.transformer.logits(list(ids)), dtype=np.float32)

    def count_text(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    # ------------------------------------------------------------------ prompt

    def _segments(self, request: GenerationRequest) -> list[list[int]]:
        return self.chat.render(request.messages, request.tools)

    def _prompt(self, request: GenerationRequest, *, generation: bool) -> tuple[list[int], list[int]]:
        """Prompt ids and the end offset of each message's segment."""
        ids: list[int] = []
        ends: list[int] = []
        for seg in self._segments(request):
            ids.extend(seg)
            ends.append(len(ids))
        if generation:
            ids.extend(self.chat.generation_prompt(request.messages))
        return ids, ends

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompt(request, generation=True)[0])

    def _check_limit(self, prompt: int, max_tokens: int) -> None:
        if prompt + max_tokens > self.context_length:
            raise ContextOverflow(
                f"prompt of {prompt} tokens + max_tokens={max_tokens} exceeds the "
                f"{self.context_length}-token context: compact the conversation or lower max_tokens"
            )

    # ------------------------------------------------------------------ ledger

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            session = Session(kv=self.ops.new_kv(self.spec, 256))
            self.sessions[session_id] = session
            while len(self.sessions) > self.max_live_sessions:
                old_id, _ = self.sessions.popitem(last=False)
                self.store.release(old_id)
        self.sessions.move_to_end(session_id)
        return session

    def _miss_reason(self, had: int, hashes: list[str], messages: Sequence[Message], msg: int) -> str:
        if had and msg < len(messages):
            m = messages[msg]
            if is_compacted(m):
                return "compaction"
        if any(h in self.store.evicted for h in hashes):
            return "evicted"
        return "token-mismatch" if had else "cold"

    def _prepare(
        self, session_id: str, messages: Sequence[Message], ids: list[int], ends: list[int],
        kind: str, want_logits: bool,
    ) -> _Prepared:
        """Bring the session's KV to ``ids``: reuse live, then RAM/disk, then prefill the rest."""
        session = self._session(session_id)
        had = len(session.ids)
        live = common_prefix(session.ids, ids)
        # Feeding at least the last token yields the logits the first sample needs.
        keep = min(live, len(ids) - 1) if want_logits else live
        session.truncate(keep)
        source = "live" if keep else "none"
        load_ms = 0.0
        hashes = block_hashes(ids, self.layout)
        stored_limit = len(ids) - 1 if want_logits else len(ids)
        if keep < stored_limit:
            restored = self.store.restore(ids[:stored_limit], hashes[: stored_limit // self.layout.block_size],
                                          lambda start, block: write_span(session.kv, start, block))
            if restored.tokens > keep:
                session.kv.length = restored.tokens
                session.ids = list(ids[: restored.tokens])
                session.table = restored.blocks
                keep, source, load_ms = restored.tokens, restored.source, restored.ms
            else:
                # The restore may have written positions past the live prefix; they are
                # beyond kv.length and will be overwritten by the prefill below.
                session.kv.length = keep
        t0 = time.perf_counter()
        logits = None
        if keep < len(ids):
            logits = self.transformer.forward(ids[keep:], keep, session.kv)
        session.ids = list(ids)
        prefill_ms = (time.perf_counter() - t0) * 1000
        record = TurnRecord(session_id, kind, len(ids), keep, source, load_ms=load_ms, prefill_ms=prefill_ms)
        if keep and (live >= had or source in ("ram", "disk")):
            log.info("kv cache hit source=%s tokens=%d load=%.1f ms", source, keep, load_ms)
        else:
            record.first_diff = live
            record.msg = next((i for i, end in enumerate(ends) if end > live), len(ends))
            record.reason = self._miss_reason(had, hashes, messages, record.msg)
            log.info(
                "kv cache miss prompt=%d common=%d reason=%s first_diff=%d msg=%d",
                len(ids), keep, record.reason, record.first_diff, record.msg,
            )
        self.turns.append(record)
        return _Prepared(logits, record)

    # ------------------------------------------------------------------ Engine protocol

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        ids, ends = self._prompt(request, generation=True)
        self._check_limit(len(ids), request.max_tokens)
        sampling = request.sampling
        rng = np.random.default_rng(sampling.seed if sampling else None)
        async with self._lock:
            t0 = time.perf_counter()
            prep = await anyio.to_thread.run_sync(
                self._prepare, request.session_id, request.messages, ids, ends, "generate", True
            )
            session = self.sessions[request.session_id]
            logits = prep.logits
            ttft = time.perf_counter() - t0
            out: list[int] = []
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            # The DSML closing tag ends generation and stays in the text: the block is complete.
            stops = StopChecker(
                self.chat.stop_ids,
                (StopString(dsml.TOOL_CALLS_END, include=True), *request.stop),
            )
            text_parts: list[str] = []
            constraint = (
                ToolCallConstraint(self.tokenizer, request.tools, request.tool_choice,
                                   thinking=self.thinking, vocab_size=self.spec.vocab_size)
                if request.tools and request.tool_choice != "none" else None
            )
            raw = ""  # everything generated, held-back stop-string prefixes included
            t_dec = time.perf_counter()
            while True:
                step = constraint.next(raw) if constraint else None
                if isinstance(step, Forced):
                    new = list(step.ids)[: request.max_tokens - len(out)]
                else:
                    masked = logits if not isinstance(step, Allowed) else np.where(step.mask, logits, -np.inf)
                    new = [sample(masked, sampling, rng, out[-64:])]
                for tok in new:
                    out.append(tok)
                    piece = decoder.decode(self.tokenizer.token_bytes(tok))
                    raw += piece
                    emitted = stops.push(piece, tok)
                    if emitted:
                        text_parts.append(emitted)
                        yield TextDelta(text=emitted)
                    if stops.stopped:
                        break
                if stops.stopped or len(out) >= request.max_tokens:
                    break
                logits = await anyio.to_thread.run_sync(self._feed, session, new)
            if not stops.stopped:
                tail = stops.push(decoder.decode(b"", final=True)) + stops.flush()
                if tail:
                    text_parts.append(tail)
                    yield TextDelta(text=tail)
            matched = stops.matched
            if isinstance(matched, StopString) and matched.text == dsml.TOOL_CALLS_END:
                finish = "tool_calls"
            else:
                finish = "stop" if stops.stopped else "length"
            decode_s = time.perf_counter() - t_dec
            session.turns += 1
        rec = prep.record
        yield Completion(
            text="".join(text_parts),
            token_ids=out,
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=len(ids),
                cached_tokens=rec.common,
                completion_tokens=len(out),
                ttft_s=ttft,
                decode_tokens_per_s=(len(out) - 1) / decode_s if len(out) > 1 and decode_s > 0 else 0.0,
                cache_source=rec.source if rec.common else "none",
            ),
        )

    def _feed(self, session: Session, ids: list[int]) -> np.ndarray:
        """Run new tokens through the model; logits of the last one."""
        logits = self.transformer.forward(ids, len(session.ids), session.kv)
        session.ids.extend(ids)
        return logits

    async def checkpoint(self, request: GenerationRequest) -> CheckpointInfo:
        """Prefill what is new in ``request.messages`` (no generation) and persist the KV."""
        ids, ends = self._prompt(request, generation=False)
        self._check_limit(len(ids), 0)
        async with self._lock:
            t0 = time.perf_counter()
            await anyio.to_thread.run_sync(self._prepare, request.session_id, request.messages, ids, ends, "checkpoint", False,
            )
            session = self.sessions[request.session_id]
            hashes = block_hashes(ids, self.layout)
            written, nbytes, tail = await anyio.to_thread.run_sync(
                lambda: self.store.save(
                    request.session_id, ids, hashes,
                    lambda start, n: read_span(session.kv, start, n), session.tail,
                )
            )
            session.table, session.tail = hashes, tail
            ms = (time.perf_counter() - t0) * 1000
        log.info("kv cache stored session=%s tokens=%d blocks=%d bytes=%d ms=%.1f",
                 request.session_id, len(ids), written, nbytes, ms)
        return CheckpointInfo(session_id=request.session_id, tokens=len(ids), bytes_written=nbytes, ms=ms)

    # ------------------------------------------------------------------ observability

    def stats(self) -> dict[str, Any]:
        """Per-turn reuse history, tier hit counts and store usage."""
        gen = [t for t in self.turns if t.kind == "generate"]
        s = self.store.stats
        return {
            "model": self.spec.name,
            "device": self.device,
            "context_length": self.context_length,
            "turns": [
                {"session": t.session_id, "kind": t.kind, "prompt": t.prompt, "common": t.common,
                 "reuse": round(t.reuse, 4), "source": t.source, "reason": t.reason,
                 "load_ms": round(t.load_ms, 2), "prefill_ms": round(t.prefill_ms, 2)}
                for t in self.turns
            ],
            "reuse_mean": float(np.mean([t.reuse for t in gen])) if gen else 0.0,
            "tiers": {"ram_hits": s.ram_hits, "disk_hits": s.disk_hits, "misses": s.misses,
                      "blocks_written": s.blocks_written, "bytes_written": s.bytes_written,
                      "evictions": dict(s.evictions), "corrupt": s.corrupt},
            "store": self.store.usage(),
            "live_sessions": list(self.sessions),
        }

    def forget(self, session_id: str) -> None:
        """Drop a live session (its checkpoints stay in the store)."""
        self.sessions.pop(session_id, None)
        self.store.release(session_id)

