"""LocalEngine: a GGUF model in process, behind the Engine protocol.

Ties the parts together: the GGUF weights, tokenizer and chat format (model/) render a request
as per-message token segments; a session (session.py) holds its live KV, decoder and ledger;
the checkpoint store (kvstore/) holds KV blocks in RAM and on disk; generate.py is the one
decode loop. Each request prefills only what no live session, RAM block or disk block holds.

Invariants:
- ``prompt_tokens + max_tokens <= context_length`` is checked before any KV is touched;
- compute runs in a worker thread, one request at a time (a ``threading.Lock`` taken inside
  the thread, never held across an ``await`` or a ``yield``), so the event loop stays live and
  a consumer that leaves ``stream`` early leaves the engine usable;
- every request logs one ``kv cache hit|miss`` line (DESIGN.md invariant 5) and records its
  reuse against what was reusable (invariant 7) in ``Usage`` and ``stats()``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.lowlevel
import numpy as np

from agentcore.dsml import StreamParser
from agentcore.engine.backends import select_ops
from agentcore.engine.base import (
    CheckpointInfo,
    Completion,
    GenerationRequest,
    TextDelta,
    Usage,
)
from agentcore.engine.decode.constrain import ToolCallConstraint
from agentcore.engine.decode.stop import StopChecker
from agentcore.engine.generate import EagerDecoder, GenerationResult, generate
from agentcore.engine.kvstore.blocks import (
    KVLayout,
    block_hashes,
    common_prefix,
    read_span,
    write_span,
)
from agentcore.engine.kvstore.hostmem import PinnedBlocks
from agentcore.engine.kvstore.store import CheckpointStore
from agentcore.engine.model import build_model
from agentcore.engine.model.chat import ChatFormat, chat_format_named, detect_chat_format
from agentcore.engine.model.gguf import GGUFModel, check_logits, load_gguf
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.engine.session import Session
from agentcore.errors import ContextOverflow, UnknownSession
from agentcore.messages import Message, UserMessage, is_compacted

__all__ = ["LocalEngine", "TurnRecord"]

log = logging.getLogger("agentcore.kv")

# Visible text is handed to the event loop at most this often (one cross-thread call each).
_EMIT_INTERVAL_S = 0.002


@dataclass
class TurnRecord:
    """One request's cache outcome, kept in ``stats()['turns']``."""

    session_id: str
    kind: str  # "generate" | "checkpoint"
    prompt: int
    common: int  # tokens not recomputed (live or restored)
    reusable: int  # longest prefix of the prompt the session had already computed
    source: str
    reason: str = ""
    first_diff: int = -1
    msg: int = -1
    load_ms: float = 0.0
    prefill_ms: float = 0.0
    snapshot: int = 0  # of the restored tokens, those read from a checkpoint still saved behind

    @property
    def reuse(self) -> float:
        return self.common / self.prompt if self.prompt else 0.0

    @property
    def reuse_of_reusable(self) -> float:
        return self.common / self.reusable if self.reusable else 1.0


class _ComputeThread:
    """One long-lived daemon thread that runs an engine's turns, in the order submitted.

    Every turn on the same OS thread: on CUDA a thread's first library call pays for its own
    cuBLAS handle and caches, which a thread per turn would pay every turn. The thread holds
    only its queue (never the engine), and stops on ``close`` or when the engine is dropped;
    a later ``submit`` starts it again."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=_serve, args=(self._queue,), name=self.name, daemon=True)
                self._thread.start()
            self._queue.put((fut, fn, args))
        return fut

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread = None


def _serve(work: queue.SimpleQueue[Any]) -> None:
    while (item := work.get()) is not None:
        fut, fn, args = item
        del item
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - the submitter re-raises it
                fut.set_exception(exc)
        del fut, fn, args


def _move_staged(out: np.ndarray, stage: np.ndarray, event: Any) -> None:
    """A staged block's copy to the host has landed: move it on to its own memory (NumPy's
    copy releases the GIL)."""
    event.synchronize()
    np.copyto(out, stage)


def _close_stream(send: Any, token: Any) -> None:
    try:
        anyio.from_thread.run_sync(send.close, token=token)
    except RuntimeError:
        pass  # the event loop is gone: nobody is listening


class LocalEngine:
    """An in-process engine over one GGUF model.

    Build it with ``LocalEngine.from_gguf(path, ...)``. ``device``: ``"auto"`` (the default:
    CUDA where CuPy and a GPU are there, else NumPy), ``"cpu"`` (NumPy, the reference) or
    ``"cuda"`` (CuPy; a clear error without it). ``kv_dir`` enables the disk tier
    (checkpoints survive restarts); ``kv_ram_mb`` and ``kv_disk_mb`` are the tier budgets (on
    CUDA the RAM tier's first GB, at most 256 blocks, is page-locked at construction).
    ``kv_dtype``: the live KV's and its checkpoints' type: ``"float32"`` (the CPU default),
    ``"float16"`` (the GPU default, and on the CPU), or ``"q8_0"`` (llama-style models, CPU
    and GPU: GGUF Q8_0 rows, 3.8x fewer bytes than float32 and 1.9x fewer than float16 to
    hold, write and restore; attention reads it dequantized; on CUDA head_dim 64, 128 or 256).
    ``draft_tokens``: prompt-lookup speculative decoding (default 8; 0 turns it off): on
    free-text steps, up to that many tokens copied from the session's own history (the tokens
    after the latest earlier occurrence of the newest 2- or 3-gram: tool output, files, code
    the reply repeats) are checked in one batched forward pass and the prefix the model
    itself draws is kept, so greedy output is token for token sequential decoding's (sampled
    output has its distribution); ``Usage.draft_tokens`` and ``accepted_draft_tokens`` count
    them. On SmolLM2 on 2 CPU cores, agent replies that edit, quote or explain a file a tool
    returned decoded 1.5-3.2x faster (``python -m agentcore.bench lookup``). The CPU decoder
    checks drafts. The CUDA decoder has the same check (``CudaDecoder.verify``: a batch of
    at most 8 tokens through the decode GEMVs, drawn by its own sampler kernel), off by
    default (``CudaDecoder.verify_drafts``) until its GPU tests and a speed figure have run,
    so there the option has no effect yet.
    ``chat_format``: the prompt format, read from the file's chat template by default
    (``chat.detect_chat_format``); a name from ``chat.CHAT_FORMATS`` (``"chatml"``,
    ``"llama3"``, ``"deepseek-v3.2"``, ``"deepseek-v4"``, ...) or a ``ChatFormat`` overrides it,
    for files whose template says too little (a DeepSeek file converted without its template).
    Every ``stream`` and ``checkpoint`` runs on the engine's one compute thread, in the order
    they arrive. On CUDA a checkpoint's copy to the host is saved behind the turn; the next
    turn waits for it only when that save holds KV the turn's own live cache lacks.
    Use it as a context manager (or call ``close()``) so saved checkpoints reach the disk.
    """

    def __init__(
        self,
        model: GGUFModel,
        *,
        context_length: int | None = None,
        device: str = "auto",
        kv_dir: str | Path | None = None,
        kv_ram_mb: int = 1024,
        kv_disk_mb: int = 16384,
        block_size: int = 256,
        max_live_sessions: int = 4,
        thinking: bool = False,
        kv_dtype: str | None = None,
        draft_tokens: int = 8,
        chat_format: str | ChatFormat | None = None,
    ) -> None:
        self.model = model
        if draft_tokens < 0:
            raise ValueError("draft_tokens must be 0 (off) or positive")
        self.draft_tokens = int(draft_tokens)
        self.spec = model.spec
        self.context_length = int(context_length or model.spec.context_length)
        if self.context_length < 1:
            raise ValueError("context_length must be positive")
        mla = getattr(self.spec, "mla", None)
        self.ops = select_ops(device)
        self.device = "cuda" if type(self.ops).__name__ == "CudaOps" else "cpu"
        kv_dtype = kv_dtype or self.ops.kv_dtype
        allowed = ("float16", "q8_0") if self.device == "cuda" else ("float32", "float16", "q8_0")
        if kv_dtype not in allowed:
            raise ValueError(f"kv_dtype={kv_dtype!r} is not supported on {self.device}; choose one of {allowed}")
        if kv_dtype == "q8_0" and mla is not None:
            raise ValueError("kv_dtype='q8_0' is for llama-style models; deepseek2's latent cache is "
                             f"{'float16' if self.device == 'cuda' else 'float32 or float16'}")  # fmt: skip
        if self.device == "cuda" and mla is None:
            from agentcore.engine.backends.cuda import check_kv_dtype

            check_kv_dtype(self.spec, kv_dtype)
        self.ops.kv_dtype = kv_dtype
        self.tokenizer = Tokenizer.from_gguf(model)
        if isinstance(chat_format, ChatFormat):
            self.chat: ChatFormat = chat_format
        elif chat_format is not None:
            self.chat = chat_format_named(chat_format, self.tokenizer, thinking=thinking)
        else:
            self.chat = detect_chat_format(model, self.tokenizer, thinking=thinking)
        self.thinking = thinking
        self.transformer = build_model(model, self.ops)
        if mla is None:
            planes, heads, width = 2, self.spec.n_kv_heads, self.spec.head_dim
        else:  # one latent row per token and layer
            planes, heads, width = 1, 1, mla.latent_dim
        self.layout = KVLayout(model.fingerprint, self.spec.n_layers, heads, width, kv_dtype,
                               block_size, planes)  # fmt: skip
        host_alloc = is_pinned = None
        self._pinned: PinnedBlocks | None = None
        self._stages: list[np.ndarray] = []
        if self.device == "cuda":  # RAM-tier copies in pinned memory: full-bandwidth D2H and H2D
            from agentcore.engine.backends.cuda import host_pinned, pinned_empty

            host_alloc, is_pinned = pinned_empty, host_pinned
            # Pin the RAM tier's first GB now (up to 256 blocks): checkpoints saved behind a
            # turn only reuse these, never pin new memory (see _copy_behind), and a restore
            # from a pinned block crosses PCIe at full speed (from pageable memory the CPU's
            # copy bounds it: 8B, 32K from RAM, 630 ms at d945509).
            full = self.layout.bytes_per_token() * block_size
            count = min(256, min(kv_ram_mb << 20, 1 << 30) // max(1, full))
            self._pinned = PinnedBlocks(lambda n: pinned_empty((n,), np.uint8), full, count)
            # Two more, never handed to the store: the save's stages once those are all taken
            # (a block crosses PCIe into one, and the CPU moves it on to pageable memory).
            self._stages = [pinned_empty((full,), np.uint8) for _ in range(2)]
        self.store = CheckpointStore(
            self.layout, ram_bytes=kv_ram_mb << 20, kv_dir=kv_dir, disk_bytes=kv_disk_mb << 20,
            host_alloc=host_alloc, host_pinned=is_pinned,
        )
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.max_live_sessions = max_live_sessions
        self.turns: list[TurnRecord] = []
        self._compute = threading.Lock()
        self._worker = _ComputeThread("agentcore-compute")  # runs every stream and checkpoint
        weakref.finalize(self, self._worker.close)
        self._behind: ThreadPoolExecutor | None = None  # CUDA: checkpoint saves behind the turn
        self._behind_last: Future[None] | None = None
        self._behind_ids: list[int] = []  # the prompt whose save is in flight (if not done)
        self._behind_session: Session | None = None
        self._behind_stream: Any = None
        # The save in flight's KV by start position: its device snapshot, until the store has
        # indexed the host copy. Another session restores from it without waiting.
        self._behind_pending: dict[int, Any] = {}
        self._behind_lock = threading.Lock()
        self._spare: list[Session] = []
        self._logits_checked = False

    @classmethod
    def from_gguf(cls, path: str | Path, **kwargs: Any) -> LocalEngine:
        """Load a GGUF file (memory-mapped) and build the engine; see ``__init__`` for options."""
        return cls(load_gguf(path), **kwargs)

    def close(self) -> None:
        """Make every saved checkpoint durable (the store writes behind)."""
        self._settle_behind()
        self.store.close()
        self._worker.close()

    def flush(self) -> None:
        """Wait until every checkpoint so far is in the store and written to ``kv_dir``
        (on CUDA a checkpoint's copy to the host runs behind the turn), without closing."""
        self._settle_behind()
        self.store.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def _prompt(self, request: GenerationRequest, *, generation: bool) -> tuple[list[int], list[int]]:
        """Prompt ids and the end offset of each message's segment."""
        ids: list[int] = []
        ends: list[int] = []
        for seg in self.chat.render(request.messages, request.tools):
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

    # ------------------------------------------------------------------ sessions and the cache

    def _new_session(self) -> Session:
        if self._spare:
            session = self._spare.pop()
            session.reset()
            return session
        kv = self.ops.new_kv(self.spec, 256)
        if self.device == "cuda":
            from agentcore.engine.backends.cuda_graph import CudaDecoder, CudaMLADecoder

            decoder = CudaMLADecoder if self.spec.mla is not None else CudaDecoder
            return Session(kv, decoder(self.transformer, kv))
        return Session(kv, EagerDecoder(self.transformer, kv))

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            session = self.sessions[session_id] = self._new_session()
            while len(self.sessions) > self.max_live_sessions:
                old_id, old = self.sessions.popitem(last=False)
                self.store.release(old_id)
                self._retire(old)
        self.sessions[session_id] = session  # forget() may have raced us for this id
        self.sessions.move_to_end(session_id)
        return session

    def _miss_reason(self, had: int, hashes: list[str], messages: Sequence[Message], msg: int) -> str:
        if had and msg < len(messages) and is_compacted(messages[msg]):
            return "compaction"
        if any(h in self.store.evicted for h in hashes):
            return "evicted"
        return "token-mismatch" if had else "cold"

    def _restore(self, session: Session, ids: list[int], hashes: list[str], keep: int,
                 limit: int) -> tuple[int, str, float, int]:  # fmt: skip
        """Extend the live prefix ``keep`` from the store, up to ``limit`` tokens; past the
        store, from the checkpoint still being saved behind (CUDA), if it holds these tokens:
        (tokens, source, ms, tokens read from that save). The save's blocks are on their way
        to the RAM tier: the source is then "ram" (or "disk" if the store read any there)."""
        pending: dict[int, Any] = {}
        cover = 0
        if self._behind_may_hold(ids[:limit], keep):
            with self._behind_lock:  # the save in flight holds blocks we want
                pending, cover = dict(self._behind_pending), common_prefix(self._behind_ids, ids[:limit])
            if not pending:  # it has just been indexed (or failed): the store has what it holds
                self._settle_behind()
        kv = session.kv
        hashes = hashes[: limit // self.layout.block_size]
        if hasattr(kv, "data"):  # a dense host KV: the store reads straight into it
            kv.grow(limit)
            got = self.store.restore(ids[:limit], hashes, into=kv.data, live=keep)
        else:
            got = self.store.restore(ids[:limit], hashes, lambda start, block: write_span(kv, start, block), live=keep)
        pos, ms = max(keep, got.tokens), got.ms
        source = got.source if got.tokens > keep else ("live" if keep else "none")
        snapshot = 0
        if pending:
            t0 = time.perf_counter()
            extended = pos
            bs = self.layout.block_size
            while pos < cover:  # the save's spans start at block boundaries, from where the store stopped
                start = pos - pos % bs
                block = pending.get(start)
                if block is None:
                    break
                end = min(start + block.shape[2], cover)
                write_span(kv, pos, block[:, :, pos - start : end - start])
                pos = end
            if pos > extended:
                snapshot = pos - extended
                source = "disk" if source == "disk" else "ram"
                if pos < limit:  # the store may go on past the snapshot (blocks saved before)
                    more = self.store.restore(ids[:limit], hashes, lambda start, block: write_span(kv, start, block),
                                              live=pos, record=False)  # fmt: skip
                    if more.tokens > pos:
                        pos, source = more.tokens, more.source
                ms += (time.perf_counter() - t0) * 1000
        session.restored(ids[:pos])  # the store may have written past the live prefix
        return pos, source, (ms if pos > keep else 0.0), snapshot

    def _prepare(self, session_id: str, messages: Sequence[Message], ids: list[int],
                 ends: list[int], kind: str, reserve: int = 0) -> tuple[TurnRecord, Session]:  # fmt: skip
        """Bring the session's KV to ``ids`` (for generation: all but the last token, which is
        prefilled to get the first logits): reuse live KV, then RAM/disk, then prefill.
        The KV is sized for ``reserve`` more tokens first, so it never grows (a copy and, on
        CUDA, a graph capture) between the prefill and the first decode step."""
        generation = kind == "generate"
        session = self._session(session_id)
        session.kv.grow(len(ids) + reserve + 1)
        had = len(session.ids)
        live = common_prefix(session.ids, ids)
        limit = len(ids) - 1 if generation else len(ids)
        keep = min(live, limit)
        computed = common_prefix(session.computed, ids)
        diverged = computed < len(session.computed)  # the prompt drops computed tokens
        reusable = min(max(computed, keep), limit)
        session.truncate(keep)
        source, load_ms, snapshot = ("live" if keep else "none"), 0.0, 0
        hashes = block_hashes(ids, self.layout)
        if keep < limit:
            keep, source, load_ms, snapshot = self._restore(session, ids, hashes, keep, limit)
            reusable = max(reusable, keep)
        t0 = time.perf_counter()
        if keep < len(ids):
            session.prefill(ids[keep:], reserve=reserve if generation else None)
        prefill_ms = (time.perf_counter() - t0) * 1000
        record = TurnRecord(session_id, kind, len(ids), keep, reusable, source,
                            load_ms=load_ms, prefill_ms=prefill_ms, snapshot=snapshot)  # fmt: skip
        if keep and keep >= reusable and not diverged:
            log.info("kv cache hit source=%s tokens=%d load=%.1f ms reusable=%d%s",
                     source, keep, load_ms, reusable, f" snapshot={snapshot}" if snapshot else "")  # fmt: skip
        else:
            record.first_diff = live
            record.msg = next((i for i, end in enumerate(ends) if end > live), len(ends))
            record.reason = self._miss_reason(had, hashes, messages, record.msg)
            log.info(
                "kv cache miss prompt=%d common=%d reason=%s first_diff=%d msg=%d reusable=%d",
                len(ids), keep, record.reason, record.first_diff, record.msg, reusable,
            )
            if kind == "generate":
                self.store.record_miss_cost(prefill_ms)
        self.turns.append(record)
        return record, session

    # ------------------------------------------------------------------ Engine protocol

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        """Generate for ``request``: ``TextDelta`` pieces, then one ``Completion``."""
        ids, ends = self._prompt(request, generation=True)
        self._check_limit(len(ids), request.max_tokens)
        send, recv = anyio.create_memory_object_stream[Any](math.inf)
        cancelled = threading.Event()
        self._worker.submit(self._generate_in_thread, request, ids, ends, send,
                            anyio.lowlevel.current_token(), cancelled)  # fmt: skip
        try:
            with recv:
                async for item in recv:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            cancelled.set()

    def _generate_in_thread(self, request: GenerationRequest, ids: list[int], ends: list[int],
                            send: Any, token: Any, cancelled: threading.Event) -> None:  # fmt: skip
        def post(item: Any) -> None:
            try:
                anyio.from_thread.run_sync(send.send_nowait, item, token=token)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, RuntimeError):
                cancelled.set()  # the consumer left, or its event loop is gone

        pending: list[str] = []
        flushed = [time.perf_counter()]

        def flush() -> None:
            if pending:
                text = "".join(pending)
                pending.clear()
                post(TextDelta(text=text))
            flushed[0] = time.perf_counter()

        def emit(text: str) -> None:
            pending.append(text)
            if time.perf_counter() - flushed[0] >= _EMIT_INTERVAL_S:
                flush()

        try:
            with self._compute:
                started = time.perf_counter()
                record, session = self._prepare(request.session_id, request.messages, ids, ends,
                                                "generate", reserve=request.max_tokens)  # fmt: skip
                if not self._logits_checked:  # NaN weights would decode as token 0, silently
                    check_logits(session.decoder.logits(), self.model.path)
                    self._logits_checked = True
                sampling = request.sampling
                session.start(sampling, reserve=request.max_tokens)
                stop_ids = () if sampling is not None and sampling.ignore_eos else self.chat.stop_ids
                result = generate(
                    session, self.tokenizer.token_bytes, max_tokens=request.max_tokens,
                    stops=StopChecker(stop_ids, request.stop),
                    constraint=self._constraint(request),
                    blocks=StreamParser(thinking=self.thinking, tools=request.tools)
                    if request.tools and request.tool_choice != "none" else None,
                    emit=emit, cancelled=cancelled,
                    started=started, draft_tokens=self.draft_tokens,
                )  # fmt: skip
                flush()
                if result.finish_reason != "cancelled":
                    post(self._completion(ids, record, result))
                    # Off the consumer's path: the last sampled ids join the KV, so the next
                    # turn (which renders them exactly) reuses everything.
                    if result.unfed:
                        session.feed(result.unfed)
                session.computed = ids + result.token_ids
                session.turns += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            post(exc)
        finally:
            # Closed from a helper thread: this waits for the consumer's event loop, and a
            # loop that stops without closing must not hold up the compute thread's next turn.
            threading.Thread(target=_close_stream, args=(send, token), name="agentcore-stream-close",
                             daemon=True).start()  # fmt: skip

    def _constraint(self, request: GenerationRequest) -> ToolCallConstraint | None:
        if not request.tools or request.tool_choice == "none":
            return None
        return ToolCallConstraint(self.tokenizer, request.tools, request.tool_choice,
                                  thinking=self.thinking, vocab_size=self.spec.vocab_size,
                                  dialect=self.chat.dialect)  # fmt: skip

    def _completion(self, ids: list[int], record: TurnRecord, result: GenerationResult) -> Completion:
        return Completion(
            text=result.text,
            token_ids=list(result.token_ids),
            finish_reason=result.finish_reason,
            usage=Usage(
                prompt_tokens=len(ids),
                cached_tokens=record.common,
                reusable_tokens=record.reusable,
                completion_tokens=len(result.token_ids),
                ttft_s=result.ttft_s,
                decode_tokens_per_s=result.decode_tokens_per_s,
                cache_source=record.source if record.common else "none",
                draft_tokens=result.drafted,
                accepted_draft_tokens=result.accepted,
            ),
        )

    async def checkpoint(self, request: GenerationRequest | str) -> CheckpointInfo:
        """Prefill what is new in ``request.messages`` (no generation) and persist the KV.

        Given a session id instead of a request, persist the KV that session holds now (its
        prompt and the tokens sampled after it, except the newest, which is not in the KV
        yet), with nothing prefilled; ``UnknownSession`` if the engine holds none for it."""
        if isinstance(request, str):
            return await anyio.to_thread.run_sync(self._worker.submit(self._checkpoint_held, request).result)
        ids, ends = self._prompt(request, generation=False)
        self._check_limit(len(ids), 0)
        # Waits on a worker thread (cancellation waits for the checkpoint, as before); the work
        # runs on the engine's compute thread.
        return await anyio.to_thread.run_sync(self._worker.submit(self._checkpoint_in_thread, request, ids, ends).result)

    def _checkpoint_in_thread(self, request: GenerationRequest, ids: list[int],
                              ends: list[int]) -> CheckpointInfo:  # fmt: skip
        with self._compute:
            t0 = time.perf_counter()
            record, session = self._prepare(request.session_id, request.messages, ids, ends, "checkpoint")
            t1 = time.perf_counter()
            hashes = block_hashes(ids, self.layout)
            # The anchor (system, tools, first task) survives compactions: keep its blocks
            # pinned so the prefill after a compaction pays only the summary and recent turns.
            first_task = next((i for i, m in enumerate(request.messages) if isinstance(m, UserMessage)), None)
            if first_task is not None:
                self.store.pin(request.session_id, hashes[: ends[first_task] // self.layout.block_size])
            session.computed = list(ids)
            written, nbytes = self._persist(request.session_id, session, ids, hashes)
            t2 = time.perf_counter()
        ms, store_ms = (t2 - t0) * 1000, (t2 - t1) * 1000
        log.info("kv cache stored session=%s tokens=%d blocks=%d bytes=%d ms=%.1f store_ms=%.1f",
                 request.session_id, len(ids), written, nbytes, ms, store_ms)  # fmt: skip
        return CheckpointInfo(session_id=request.session_id, tokens=len(ids), bytes_written=nbytes, ms=ms,
                              prefill_ms=record.prefill_ms, store_ms=store_ms)  # fmt: skip

    def _checkpoint_held(self, session_id: str) -> CheckpointInfo:
        with self._compute:
            session = self.sessions.get(session_id)
            if session is None or not session.ids:
                raise UnknownSession(f"no live KV for session {session_id!r}: checkpoint a request "
                                     "(GenerationRequest) to prefill and persist its messages")  # fmt: skip
            t0 = time.perf_counter()
            ids = list(session.ids)
            written, nbytes = self._persist(session_id, session, ids, block_hashes(ids, self.layout))
            ms = (time.perf_counter() - t0) * 1000
        log.info("kv cache stored session=%s tokens=%d blocks=%d bytes=%d ms=%.1f store_ms=%.1f",
                 session_id, len(ids), written, nbytes, ms, ms)  # fmt: skip
        return CheckpointInfo(session_id=session_id, tokens=len(ids), bytes_written=nbytes, ms=ms, store_ms=ms)

    def _persist(self, session_id: str, session: Session, ids: list[int], hashes: list[str]) -> tuple[int, int]:
        """Store the session's KV for ``ids`` (on CUDA saved behind the turn): blocks written, bytes."""
        saved = self._save_behind(session_id, session, ids, hashes) if self.device == "cuda" else None
        if saved is not None:
            return saved

        def read(start: int, n: int) -> np.ndarray:  # into the store's host memory
            return read_span(session.kv, start, n, out=self._host_block(n))

        written, nbytes, session.tail = self.store.save(session_id, ids, hashes, read, session.tail, owned=True)
        return written, nbytes

    def _host_block(self, n: int) -> np.ndarray:
        """Host memory for an ``n``-token block from the store's allocator (pinned on CUDA).
        Always a full block's bytes, so a partial tail reuses a freed block's pinned pages."""
        full = int(np.prod(self.layout.block_shape(self.layout.block_size)))
        shape = self.layout.block_shape(n)
        return self.store.host_empty((max(full, int(np.prod(shape))),))[: int(np.prod(shape))].reshape(shape)

    def _save_behind(self, session_id: str, session: Session, ids: list[int],
                     hashes: list[str]) -> tuple[int, int] | None:  # fmt: skip
        """CUDA: snapshot the blocks the store lacks on the device (a copy at HBM speed) and
        hand the copy to pinned memory and ``store.save`` to a background thread, so the
        checkpoint's critical path never waits on PCIe or on pinning fresh host pages
        (measured: 4.1 s for a first 32K-token checkpoint of the 8B shape done inline).
        Returns (blocks, bytes) queued, or None to save inline (no device memory to spare)."""
        import cupy as cp

        self._settle_behind()  # the previous save has landed: session.tail is current
        bs = self.layout.block_size
        starts = [(i * bs, bs) for i, key in enumerate(hashes) if not self.store.has(key)]
        if len(ids) > len(hashes) * bs:
            starts.append((len(hashes) * bs, len(ids) - len(hashes) * bs))
        try:
            spans = {start: session.kv.snapshot(start, n) for start, n in starts}
            cp.cuda.get_current_stream().synchronize()  # later kernels may rewrite the live KV
        except cp.cuda.memory.OutOfMemoryError:
            return None
        prev_tail = session.tail
        if self._behind_stream is None:
            # Its own non-blocking stream: copies queued on the legacy default stream would
            # serialise with the next turn's prefill, which runs there.
            self._behind_stream = cp.cuda.Stream(non_blocking=True)
        stream = self._behind_stream

        def save() -> None:
            # Every block crosses to the host before the store is entered: the store's lock
            # is then held only to index them, so the next turn (its restore takes the lock)
            # never waits on this PCIe copy.
            host: dict[int, np.ndarray] = {}
            try:
                host.update(self._copy_behind(spans, stream))
                # The device copies stay in ``pending`` (a restore from the save in flight reads
                # them at device speed, not the mostly pageable host copies) until indexed.
                spans.clear()
                _, _, tail = self.store.save(session_id, ids, hashes, lambda start, n: host.pop(start, None),
                                             prev_tail, owned=True)  # fmt: skip
                if self._behind_session is session:  # not retired and reused meanwhile
                    session.tail = tail
            except Exception:  # a lost checkpoint is a later miss, never wrong KV
                log.exception("kv cache background save failed session=%s", session_id)
            finally:
                with self._behind_lock:
                    pending.clear()
                spans.clear()
                host.clear()

        nbytes = sum(int(a.nbytes) for a in spans.values())
        if self._behind is None:
            self._behind = ThreadPoolExecutor(1, thread_name_prefix="agentcore-kv-snapshot")
        pending = dict(spans)
        with self._behind_lock:
            self._behind_ids, self._behind_session = list(ids), session
            self._behind_pending = pending
        self._behind_last = self._behind.submit(save)
        return sum(1 for _, n in starts if n == bs), nbytes

    def _copy_behind(self, spans: dict[int, Any], stream: Any) -> dict[int, np.ndarray]:
        """The save behind's copy of its device snapshot to host memory, on its own stream
        (the save thread's first step).

        Every copy lands in page-locked memory: one of the blocks pinned ahead while one is
        free (the store keeps it), else one of the two stages, from which the CPU moves it on
        to pageable memory while the next block crosses PCIe. The driver's own copy to
        pageable memory stalled the next turn's kernel launches for as long as it ran
        (H100, 8B, live turn right after a cold checkpoint: 182 / 1,334 ms at 8K / 32K
        against 31 / 70 ms staged: bench/experiments/turn_after_checkpoint.py, d945509),
        and new memory is never pinned here (cudaHostAlloc holds the driver's lock too: a
        32K checkpoint once cost the next turn 1.3-1.7 s)."""
        import cupy as cp

        host: dict[int, np.ndarray] = {}
        dtype = self.layout.array_dtype
        staged: tuple[np.ndarray, np.ndarray, Any] | None = None  # (out, stage, event) in flight
        turn = 0
        for start, dev in spans.items():
            shape = self.layout.block_shape(dev.shape[2])
            out = self._pinned.take(shape, dtype) if self._pinned else None
            if out is not None:
                with stream:
                    dev.get(out=out, stream=stream)
            else:  # two stages in turn: block i crosses PCIe while block i - 1 is moved on
                out = np.empty(shape, dtype)
                stage = self._stages[turn % 2].view(dtype)[: out.size].reshape(shape)
                turn += 1
                with stream:
                    dev.get(out=stage, stream=stream)
                    event = cp.cuda.Event(disable_timing=True)
                    event.record(stream)
                if staged is not None:
                    _move_staged(*staged)
                staged = (out, stage, event)
            host[start] = out
        if staged is not None:
            _move_staged(*staged)
        stream.synchronize()
        return host

    def _settle_behind(self) -> None:
        """Wait for the background save of the last CUDA checkpoint."""
        fut = self._behind_last
        if fut is not None:
            fut.result()

    def _behind_may_hold(self, ids: Sequence[int], keep: int) -> bool:
        """Whether the save in flight may hold KV for ``ids`` past the ``keep`` positions
        the caller has. An agent's next turn extends the prompt it just checkpointed, which
        its live KV already holds: it does not wait for that save (a 32K checkpoint's copy
        to the host takes 1-2 s). Another session sharing the prefix reads the save's own
        copy of the KV on the device (``_restore``) until the store has indexed it."""
        fut = self._behind_last
        if fut is None or fut.done():
            return False
        return common_prefix(self._behind_ids, ids) > keep

    # ------------------------------------------------------------------ observability

    def stats(self) -> dict[str, Any]:
        """Per-turn reuse history, tier hit counts and store usage."""
        self._settle_behind()
        gen = [t for t in self.turns if t.kind == "generate"]
        s = self.store.stats
        return {
            "model": self.spec.name,
            "device": self.device,
            "context_length": self.context_length,
            "turns": [
                {"session": t.session_id, "kind": t.kind, "prompt": t.prompt, "common": t.common,
                 "reusable": t.reusable, "reuse": round(t.reuse, 4),
                 "reuse_of_reusable": round(t.reuse_of_reusable, 4), "source": t.source,
                 "reason": t.reason, "load_ms": round(t.load_ms, 2), "snapshot": t.snapshot,
                 "prefill_ms": round(t.prefill_ms, 2)}
                for t in self.turns
            ],
            "reuse_mean": float(np.mean([t.reuse for t in gen])) if gen else 0.0,
            "reuse_of_reusable_mean": float(np.mean([t.reuse_of_reusable for t in gen])) if gen else 0.0,
            "tiers": {"ram_hits": s.ram_hits, "disk_hits": s.disk_hits, "misses": s.misses,
                      "blocks_written": s.blocks_written, "bytes_written": s.bytes_written,
                      "evictions": dict(s.evictions), "corrupt": s.corrupt},
            "store": self.store.usage(),
            "live_sessions": list(self.sessions),
        }

    def forget(self, session_id: str) -> None:
        """Drop a live session (its checkpoints stay in the store).

        Never waits for a generation in flight (it may be waiting for this event loop to take
        its text): a session still in use is dropped, not kept for reuse."""
        session = self.sessions.pop(session_id, None)
        self.store.release(session_id)
        if session is not None and self._compute.acquire(blocking=False):
            try:
                self._retire(session)
            finally:
                self._compute.release()

    def _retire(self, session: Session) -> None:
        """Keep one dropped session's buffers for the next new one (no allocation, and on
        CUDA no graph capture, for a new conversation)."""
        if self._behind_session is session:
            self._behind_session = None  # its save in flight must not set the reused one's tail
        if not self._spare:
            self._spare.append(session)
