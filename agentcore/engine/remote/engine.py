"""RemoteEngine: the Engine protocol over an OpenAI-compatible server (vLLM, SGLang,
llama.cpp's llama-server, ds4-server).

Two modes:
- ``completions`` (default): agentcore renders the prompt itself (its chat formats, DSML
  tools) as per-message token segments and sends token ids (text to ds4), so a turn's
  prompt extends the previous prompt plus the sampled ids and the server's prefix cache
  hits fully. The DSML block is cut at ``</｜DSML｜tool_calls>`` here.
- ``chat``: ``/v1/chat/completions`` with the server's template and tool parser;
  ``tool_calls`` are written back as DSML and ``reasoning_content`` as ``<think>``, so the
  agent loop parses every engine's completion the same way.

Invariants:
- ``prompt_tokens + max_tokens <= context_length`` is checked before any request; the
  limit is the server's (``/props`` n_ctx, ``/v1/models`` max_model_len or context_length)
  unless the user gives one. A server's "prompt too long" is ``ContextOverflow``, never
  retried; the session's ledger changes only when a request succeeds, so it goes on.
- Per session the engine keeps ``computed``: the ids the server has computed (previous
  prompt plus the sampled ids but the last, which is never fed back). ``reusable`` =
  ``common_prefix(computed, prompt)``, at most the prompt less its last token (a server
  always recomputes that one for its logits), is what a perfect cache would serve; every
  request logs ``kv cache hit|miss`` against it.
- On llama.cpp a session sticks to one slot; ``checkpoint`` saves the slot to
  ``--slot-save-path`` under a session-derived name, and the session's first request
  (new engine, slot lost to a restart or to another session) restores it. Elsewhere the
  server's prefix/disk cache is the checkpoint and ``stats()`` says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx

from agentcore import dsml
from agentcore.engine.base import CheckpointInfo, Completion, GenerationRequest, TextDelta, Usage
from agentcore.engine.kvstore.blocks import common_prefix
from agentcore.engine.model.chat import (
    CHAT_FORMATS,
    ChatFormat,
    chat_format_for_template,
    chat_format_named,
    detect_chat_format,
)
from agentcore.engine.model.gguf import load_gguf
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.engine.remote.dialects import (
    DIALECTS,
    Chunk,
    Dialect,
    detect_dialect,
    openai_sampling,
    parse_chat_event,
)
from agentcore.engine.remote.tokens import ServerTokenizer
from agentcore.engine.remote.transport import Transport
from agentcore.errors import (
    ContextOverflow,
    RemoteEngineError,
    ServerRejected,
    TokenizerError,
    UnknownSession,
)
from agentcore.messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
    is_compacted,
)

__all__ = ["RemoteEngine"]

log = logging.getLogger("agentcore.kv")



@dataclass
class _Session:
    computed: list[int] = field(default_factory=list)
    slot: int | None = None
    saved: bool = False  # a slot file with this session's KV exists (or may: first request)
    checked: bool = False  # the first request looked for a saved slot
    prompt_tokens: int = 0  # chat mode: the server's count of the last prompt + completion
    lock: anyio.Lock = field(default_factory=anyio.Lock)


@dataclass
class _Record:
    session_id: str
    kind: str
    prompt: int
    cached: int
    reusable: int
    source: str
    reason: str = ""
    load_ms: float = 0.0

    def row(self) -> dict[str, Any]:
        return {"session": self.session_id, "kind": self.kind, "prompt": self.prompt,
                "cached": self.cached, "reusable": self.reusable,
                "reuse": round(self.cached / self.prompt, 4) if self.prompt else 0.0,
                "of_reusable": round(min(1.0, self.cached / self.reusable), 4) if self.reusable else 1.0,
                "source": self.source, "reason": self.reason, "load_ms": round(self.load_ms, 2)}


class RemoteEngine:
    """An engine on an OpenAI-compatible server; see the module docstring.

    ``RemoteEngine("http://127.0.0.1:8080")`` works against llama-server alone: tokens come
    from its ``/tokenize`` and the chat format from its ``/props`` chat template.

    base_url: the server's root (no ``/v1``). server: "auto" (detected), "llama.cpp",
    "vllm", "sglang", "ds4" or "openai". model: the model name sent to OpenAI endpoints
    (default: the server's first model). gguf: the model's GGUF file, for a local tokenizer
    and chat format (needed for vLLM/SGLang/ds4 in completions mode). chat_format:
    a name in ``chat.CHAT_FORMATS`` or a ChatFormat. context_length: the real limit,
    when the server does not report it or a router in front lowers it. timeout: seconds a
    request may take (a long prefill counts). max_retries/max_retry_wait: bounded retries of
    requests nothing has been received from. session_header: the header routers read for
    session affinity. slot_prefix: prefix of llama.cpp slot file names.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        mode: Literal["completions", "chat"] = "completions",
        gguf: str | Path | None = None,
        chat_format: str | ChatFormat | None = None,
        api_key: str | None = None,
        context_length: int | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        server: str = "auto",
        thinking: bool = False,
        session_header: str = "X-Session-ID",
        slot_prefix: str = "agentcore",
    ) -> None:
        if mode not in ("completions", "chat"):
            raise ValueError(f"mode must be 'completions' or 'chat', not {mode!r}")
        if server != "auto" and server not in DIALECTS:
            raise ValueError(f"server must be 'auto' or one of {', '.join(DIALECTS)}, not {server!r}")
        self.mode = mode
        self.thinking = thinking
        self.session_header = session_header
        self.slot_prefix = slot_prefix
        self.transport = Transport(
            base_url, api_key=api_key, timeout=timeout, connect_timeout=connect_timeout,
            max_retries=max_retries, max_retry_wait=max_retry_wait,
        )
        self.dialect: Dialect = DIALECTS[server]() if server != "auto" else detect_dialect(self.transport)
        info = self.dialect.discover(self.transport)
        self.model = model or info.model
        self.server_context_length = info.context_length
        if context_length is None and info.context_length is None:
            raise RemoteEngineError(
                f"{self.transport.base_url} does not report its context length: pass "
                "RemoteEngine(context_length=...) with the server's real limit"
            )
        self.context_length = int(context_length or info.context_length or 0)
        if info.context_length and self.context_length > info.context_length:
            logging.getLogger("agentcore.remote").warning(
                "context_length=%d exceeds the %d the server reports; the server will refuse "
                "longer prompts", self.context_length, info.context_length)
        self.tokenizer: Tokenizer | ServerTokenizer | None = None
        self.chat: ChatFormat | None = None
        self._setup_prompt(gguf, chat_format, info.chat_template)
        self._slot_owner: list[str | None] = [None] * info.slots
        self._slot_used: list[float] = [0.0] * info.slots
        self.sessions: dict[str, _Session] = {}
        self.turns: list[_Record] = []
        self.checkpoints: list[dict[str, Any]] = []

    def _setup_prompt(self, gguf: str | Path | None, chat_format: str | ChatFormat | None,
                      template: str) -> None:
        model = None
        if gguf is not None:
            model = load_gguf(gguf)
            self.tokenizer = Tokenizer.from_gguf(model)
        elif self.dialect.has_tokenize:
            self.tokenizer = ServerTokenizer(self.transport)
        if isinstance(chat_format, ChatFormat):
            self.chat = chat_format
        elif self.tokenizer is not None:
            if chat_format is not None:
                self.chat = chat_format_named(chat_format, self.tokenizer, thinking=self.thinking)
            elif model is not None and not template:
                self.chat = detect_chat_format(model, self.tokenizer, thinking=self.thinking)
            else:
                try:  # the server's template first; the GGUF's when the server's says nothing
                    self.chat = chat_format_for_template(template, self.tokenizer, thinking=self.thinking)
                except TokenizerError:
                    if model is not None:
                        self.chat = detect_chat_format(model, self.tokenizer, thinking=self.thinking)
        if self.mode == "chat":
            return
        if self.chat is None:
            raise TokenizerError(
                f"{self.transport.base_url} ({self.dialect.name}): completions mode needs the "
                "model's tokenizer and chat format: pass gguf= (the model's GGUF) and/or "
                f"chat_format= ({', '.join(CHAT_FORMATS)}), or use mode='chat'"
            )
        if self.dialect.text_prompt and not hasattr(self.chat.tokenizer, "decode"):
            raise TokenizerError(
                f"{self.dialect.name} takes text prompts: pass gguf= so agentcore can render "
                "them byte-stable, or use mode='chat'"
            )

    # ------------------------------------------------------------------ prompt

    def _prompt(self, request: GenerationRequest, *, generation: bool) -> tuple[list[int], list[int]]:
        """Prompt ids and the end offset of each message's segment."""
        assert self.chat is not None
        ids: list[int] = []
        ends: list[int] = []
        for segment in self.chat.render(request.messages, request.tools):
            ids.extend(segment)
            ends.append(len(ids))
        if generation:
            ids.extend(self.chat.generation_prompt(request.messages))
        return ids, ends

    def count_tokens(self, request: GenerationRequest) -> int:
        """Exact in completions mode; in chat mode the server's template may differ slightly."""
        if self.chat is not None:
            return len(self._prompt(request, generation=True)[0])
        text = json.dumps(openai_messages(request.messages)) + json.dumps(
            [t.function_object() for t in request.tools])
        return len(text) // 3 + 1

    def _check_limit(self, prompt: int, max_tokens: int) -> None:
        if prompt + max_tokens > self.context_length:
            raise ContextOverflow(
                f"prompt of {prompt} tokens + max_tokens={max_tokens} exceeds the "
                f"{self.context_length}-token context of {self.transport.base_url}: compact "
                "the conversation or lower max_tokens"
            )

    def _wire_prompt(self, ids: list[int]) -> list[int] | str:
        assert self.chat is not None
        return self.chat.tokenizer.decode(ids) if self.dialect.text_prompt else ids

    # ------------------------------------------------------------------ sessions and slots

    def _session(self, session_id: str) -> _Session:
        session = self.sessions.setdefault(session_id, _Session())
        if self.dialect.slots:
            if session.slot is None:
                free = [i for i, owner in enumerate(self._slot_owner) if owner is None]
                session.slot = free[0] if free else min(
                    range(len(self._slot_used)), key=self._slot_used.__getitem__)
            self._slot_used[session.slot] = time.monotonic()
        return session

    def _headers(self, session_id: str) -> dict[str, str]:
        return {self.session_header: session_id} if self.session_header else {}

    def slot_filename(self, session_id: str) -> str:
        digest = hashlib.sha256(session_id.encode()).hexdigest()[:24]
        return f"{self.slot_prefix}-{digest}.bin"

    async def _restore(self, session_id: str, session: _Session) -> tuple[int, float]:
        """Load the session's saved slot when the slot may not hold it; (tokens, ms)."""
        if not self.dialect.slots or session.slot is None:
            return 0, 0.0
        slot = session.slot
        held = session.checked and self._slot_owner[slot] == session_id
        if held and (not session.saved or await self._slot_tokens(slot) != 0):
            return 0, 0.0  # the live slot holds the session (0 tokens: the server restarted)
        session.checked = True
        try:
            data = await self.transport.apost(
                f"/slots/{slot}", {"filename": self.slot_filename(session_id)},
                params={"action": "restore"}, headers=self._headers(session_id))
        except ServerRejected:
            data = None  # no saved slot (or no --slot-save-path): a cold start
        self._slot_owner[slot] = session_id
        if not isinstance(data, dict) or not data.get("n_restored"):
            return 0, 0.0
        session.saved = True
        ms = float((data.get("timings") or {}).get("restore_ms") or 0.0)
        return int(data["n_restored"]), ms

    async def _slot_tokens(self, slot: int) -> int | None:
        """Tokens the server holds in ``slot`` (GET /slots); None if it does not say."""
        try:
            data = await self.transport.aclient.get("/slots")
            slots = data.json() if data.status_code == 200 else None
        except (httpx.HTTPError, ValueError):  # an optional endpoint: failure means "unknown"
            return None
        if not isinstance(slots, list):
            return None
        entry = next((s for s in slots if isinstance(s, dict) and s.get("id") == slot), None)
        return int(entry.get("n_prompt_tokens") or 0) if entry else None

    # ------------------------------------------------------------------ cache accounting

    def _record(self, session_id: str, kind: str, messages: Sequence[Message], ids: list[int],
                ends: list[int], computed: list[int], cached: int, restored: tuple[int, float]
                ) -> _Record:
        # The server always recomputes the prompt's last token (it needs its logits).
        common = common_prefix(computed, ids)
        reusable = min(common, len(ids) - 1)
        full = cached >= reusable
        extends = common == len(computed)
        source = "disk" if restored[0] else "live"
        rec = _Record(session_id, kind, len(ids), cached, reusable, source, load_ms=restored[1])
        if cached and full and extends:
            log.info("kv cache hit source=%s tokens=%d load=%.1f ms", source, cached, restored[1])
        else:
            msg = next((i for i, end in enumerate(ends) if end > common), len(ends))
            if not computed:
                rec.reason = "cold"
            elif not extends:
                compacted = msg < len(messages) and is_compacted(messages[msg])
                rec.reason = "compaction" if compacted else "token-mismatch"
            else:
                rec.reason = "evicted"
            rec.source = "none" if not cached else source
            log.info("kv cache miss prompt=%d common=%d reason=%s first_diff=%d msg=%d",
                     len(ids), cached, rec.reason, common, msg)
        self.turns.append(rec)
        return rec

    # ------------------------------------------------------------------ Engine protocol

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        if self.mode == "chat":
            async for item in self._stream_chat(request):
                yield item
            return
        ids, ends = self._prompt(request, generation=True)
        self._check_limit(len(ids), request.max_tokens)
        session = self._session(request.session_id)
        async with session.lock:
            t0 = time.perf_counter()
            restored = await self._restore(request.session_id, session)
            body = self.dialect.completion_body(
                self._wire_prompt(ids), request, request.max_tokens, self.model, session.slot)
            if self.dialect.slots:
                body["timings_per_token"] = True  # cache_n arrives even if we cut the stream
            elif self.dialect.name in ("vllm", "sglang"):
                body["stop"] = [*body.get("stop", []), dsml.TOOL_CALLS_END]
                body["include_stop_str_in_output" if self.dialect.name == "vllm" else "no_stop_trim"] = True
            out = _Output()
            async with aclosing(self.transport.stream(
                    self.dialect.completions_path, body, headers=self._headers(request.session_id))) as events:
                async for event in events:
                    chunk = self.dialect.parse_completion_event(event)
                    delta = out.add(chunk)
                    if delta:
                        yield TextDelta(text=delta)
                    if out.cut:
                        break
            tail = out.close()
            if tail:
                yield TextDelta(text=tail)
            sampled = out.ids if out.ids_complete else None
            rec = self._record(request.session_id, "generate", request.messages, ids, ends,
                               session.computed, out.cached or 0, restored)
            # The last sampled token is never fed back, so its KV does not exist.
            session.computed = ids + (sampled or [])[:-1]
        yield Completion(
            text=out.text,
            token_ids=sampled,
            finish_reason=out.finish,
            usage=self._usage(len(ids), rec, out, t0),
        )

    def _usage(self, prompt: int, rec: _Record, out: _Output, t0: float) -> Usage:
        n = out.completion_tokens()
        ttft = (out.t_first or time.perf_counter()) - t0
        span = (out.t_last or 0.0) - (out.t_first or 0.0)
        fields: dict[str, Any] = {
            "prompt_tokens": prompt, "cached_tokens": rec.cached, "completion_tokens": n,
            "ttft_s": ttft, "decode_tokens_per_s": (n - 1) / span if n > 1 and span > 0 else 0.0,
            "cache_source": rec.source if rec.cached else "none",
        }
        if "reusable_tokens" in Usage.model_fields:
            fields["reusable_tokens"] = rec.reusable
        return Usage(**fields)

    async def _stream_chat(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        if self.chat is not None:
            self._check_limit(self.count_tokens(request), request.max_tokens)
        session = self._session(request.session_id)
        body: dict[str, Any] = {
            "model": self.model, "messages": openai_messages(request.messages),
            "max_tokens": request.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, **openai_sampling(request.sampling),
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools and request.tool_choice != "none":
            body["tools"] = [{"type": "function", "function": t.function_object()} for t in request.tools]
            choice = request.tool_choice
            body["tool_choice"] = ({"type": "function", "function": choice} if isinstance(choice, dict)
                                   else choice)
        if self.dialect.slots:
            body.update(id_slot=session.slot, cache_prompt=True)
        async with session.lock:
            t0 = time.perf_counter()
            restored = await self._restore(request.session_id, session)
            out = _Output()
            calls: dict[int, dict[str, str]] = {}
            async with aclosing(self.transport.stream(
                    self.dialect.chat_path, body, headers=self._headers(request.session_id))) as events:
                async for event in events:
                    chunk = parse_chat_event(event)
                    timings = event.get("timings")
                    if isinstance(timings, dict) and isinstance(timings.get("cache_n"), int):
                        chunk.cached_tokens = timings["cache_n"]
                    for d in chunk.tool_deltas:
                        call = calls.setdefault(int(d.get("index", len(calls))), {"id": "", "name": "", "arguments": ""})
                        fn = d.get("function") or {}
                        call["id"] = d.get("id") or call["id"]
                        call["name"] += fn.get("name") or ""
                        call["arguments"] += fn.get("arguments") or ""
                    delta = out.add_chat(chunk)
                    if delta:
                        yield TextDelta(text=delta)
            tail = out.close_chat(_tool_calls(calls))
            if tail:
                yield TextDelta(text=tail)
            prompt = out.prompt_tokens or 0
            computed = [0] * session.prompt_tokens  # server-token units: only lengths compare
            rec = self._record(request.session_id, "generate", request.messages, [0] * prompt,
                               [prompt], computed, out.cached or 0, restored)
            session.prompt_tokens = prompt + out.completion_tokens()
        yield Completion(text=out.text, token_ids=None, finish_reason=out.finish,
                         usage=self._usage(prompt, rec, out, t0))

    async def checkpoint(self, request: GenerationRequest | str) -> CheckpointInfo:
        """llama.cpp: prefill the new messages and save the slot; elsewhere the server's
        prefix cache holds the KV (reported as ``tier: server-prefix-cache``). Given a session
        id, save what the session's slot holds now, with nothing prefilled (``UnknownSession``
        for a session this engine has not served)."""
        sid = request if isinstance(request, str) else request.session_id
        if isinstance(request, str) and sid not in self.sessions:
            raise UnknownSession(f"no session {sid!r} on this engine: checkpoint a request "
                                 "(GenerationRequest) to prefill and persist its messages")
        session = self._session(sid)
        t0 = time.perf_counter()
        if not self.dialect.slots:
            tokens = len(session.computed) or session.prompt_tokens
            self.checkpoints.append({"session": sid, "tokens": tokens, "tier": "server-prefix-cache"})
            log.info("kv cache stored session=%s tokens=%d tier=server-prefix-cache (%s)",
                     sid, tokens, self.dialect.name)
            return CheckpointInfo(session_id=sid, tokens=tokens)
        async with session.lock:
            restored = await self._restore(sid, session)
            tokens = session.prompt_tokens
            if not isinstance(request, str) and self.chat is not None and self.mode == "completions":
                ids, ends = self._prompt(request, generation=False)
                self._check_limit(len(ids), 0)
                body = self.dialect.prefill_body(self._wire_prompt(ids), self.model, session.slot)
                data = await self.transport.apost(self.dialect.completions_path, body,
                                                  headers=self._headers(sid))
                cached = (data.get("timings") or {}).get("cache_n", 0) if isinstance(data, dict) else 0
                self._record(sid, "checkpoint", request.messages, ids, ends, session.computed,
                             int(cached or 0), restored)
                session.computed, tokens = ids, len(ids)
            try:
                data = await self.transport.apost(
                    f"/slots/{session.slot}", {"filename": self.slot_filename(sid)},
                    params={"action": "save"}, headers=self._headers(sid))
            except ServerRejected as exc:
                log.warning("kv cache not saved session=%s: %s (start llama-server with "
                            "--slot-save-path DIR to persist slots)", sid, exc)
                self.checkpoints.append({"session": sid, "tokens": tokens, "tier": "live-slot"})
                return CheckpointInfo(session_id=sid, tokens=tokens, ms=(time.perf_counter() - t0) * 1000)
            session.saved = session.checked = True
            self._slot_owner[session.slot] = sid  # type: ignore[index]
        ms = (time.perf_counter() - t0) * 1000
        n_saved, n_written = int(data.get("n_saved", tokens)), int(data.get("n_written", 0))
        self.checkpoints.append({"session": sid, "tokens": n_saved, "bytes": n_written,
                                 "tier": "slot-file", "file": self.slot_filename(sid)})
        log.info("kv cache stored session=%s tokens=%d bytes=%d ms=%.1f slot=%d file=%s",
                 sid, n_saved, n_written, ms, session.slot, self.slot_filename(sid))
        return CheckpointInfo(session_id=sid, tokens=n_saved, bytes_written=n_written, ms=ms)

    # ------------------------------------------------------------------ observability

    def stats(self) -> dict[str, Any]:
        gen = [t for t in self.turns if t.kind == "generate"]
        return {
            "server": self.transport.base_url,
            "dialect": self.dialect.name,
            "mode": self.mode,
            "model": self.model,
            "context_length": self.context_length,
            "server_context_length": self.server_context_length,
            "turns": [t.row() for t in self.turns],
            "reuse_mean": sum(t.cached / t.prompt for t in gen if t.prompt) / len(gen) if gen else 0.0,
            "checkpoints": list(self.checkpoints),
            "checkpoint_tier": "slot-file" if self.dialect.slots else "server-prefix-cache",
            "retries": self.transport.retries,
            "tokenize_requests": getattr(self.tokenizer, "requests", 0),
            "live_sessions": list(self.sessions),
        }

    def forget(self, session_id: str) -> None:
        """Drop a session's ledger (its saved slot file stays on the server)."""
        session = self.sessions.pop(session_id, None)
        if session is not None and session.slot is not None and self._slot_owner[session.slot] == session_id:
            self._slot_owner[session.slot] = None

    async def aclose(self) -> None:
        await self.transport.aclose()


class _Output:
    """What a stream produced so far: text, sampled ids, usage, timing; cuts at the DSML end."""

    def __init__(self) -> None:
        self.text = ""
        self.ids: list[int] = []
        self.ids_complete = True
        self.finish: Literal["stop", "length", "tool_calls"] = "stop"
        self.cut = False
        self.cached: int | None = None
        self.prompt_tokens: int | None = None
        self.server_completion: int | None = None
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.reasoning = ""
        self._in_reasoning = False

    def completion_tokens(self) -> int:
        return self.server_completion if self.server_completion is not None else len(self.ids)

    def _usage(self, chunk: Chunk) -> None:
        if chunk.cached_tokens is not None:
            self.cached = chunk.cached_tokens
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.completion_tokens is not None:
            self.server_completion = chunk.completion_tokens
        if chunk.finish:
            self.finish = chunk.finish  # type: ignore[assignment]

    def _tick(self) -> None:
        now = time.perf_counter()
        self.t_first = self.t_first or now
        self.t_last = now

    def add(self, chunk: Chunk) -> str:
        """Completions mode: the visible-or-DSML text to emit for ``chunk``."""
        self._usage(chunk)
        if chunk.ids is None:
            self.ids_complete = self.ids_complete and not chunk.text
        else:
            self.ids.extend(chunk.ids)
        if not chunk.text and not chunk.ids:
            return ""
        self._tick()
        start = max(0, len(self.text) - len(dsml.TOOL_CALLS_END))
        self.text += chunk.text
        end = self.text.find(dsml.TOOL_CALLS_END, start)
        if end < 0:
            return chunk.text
        keep = end + len(dsml.TOOL_CALLS_END)
        emitted = chunk.text[: len(chunk.text) - (len(self.text) - keep)]
        self.text = self.text[:keep]
        self.cut, self.finish = True, "tool_calls"
        return emitted

    def close(self) -> str:
        """A server that trimmed our stop string: put the block's closing tag back."""
        opened = self.text.rfind(dsml.TOOL_CALLS_START) > self.text.rfind(dsml.TOOL_CALLS_END)
        if not self.cut and opened and self.finish == "stop":
            self.text += dsml.TOOL_CALLS_END
            self.finish = "tool_calls"
            self.ids_complete = False  # the ids lack the tag the server trimmed
            return dsml.TOOL_CALLS_END
        return ""

    def add_chat(self, chunk: Chunk) -> str:
        """Chat mode: reasoning becomes ``<think>…</think>`` before the content."""
        self._usage(chunk)
        if not (chunk.text or chunk.reasoning or chunk.tool_deltas):
            return ""
        self._tick()
        delta = ""
        if chunk.reasoning:
            if not self._in_reasoning:
                delta, self._in_reasoning = dsml.THINK_START, True
            delta += chunk.reasoning
            self.reasoning += chunk.reasoning
        if chunk.text:
            if self._in_reasoning:
                delta, self._in_reasoning = delta + dsml.THINK_END, False
            delta += chunk.text
        self.text += delta
        return delta

    def close_chat(self, calls: list[ToolCall]) -> str:
        tail = dsml.THINK_END if self._in_reasoning else ""
        if calls:
            tail += dsml.render_tool_calls(calls)
            self.finish = "tool_calls"
        self.text += tail
        return tail


def _tool_calls(calls: dict[int, dict[str, str]]) -> list[ToolCall]:
    out = []
    for index in sorted(calls):
        call = calls[index]
        try:
            arguments = json.loads(call["arguments"] or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            # Keep what the model wrote; the tool registry answers with an error it can read.
            arguments = {"arguments": call["arguments"]}
        out.append(ToolCall(id=call["id"] or f"call_{index}", name=call["name"], arguments=arguments))
    return out


def openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The transcript as OpenAI chat messages; a tool result no call asked for is a user turn."""
    out: list[dict[str, Any]] = []
    open_calls: set[str] = set()
    for m in messages:
        if isinstance(m, (SystemMessage, UserMessage)):
            out.append({"role": m.role, "content": m.content})
        elif isinstance(m, AssistantMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": m.content}
            if m.reasoning:
                entry["reasoning_content"] = m.reasoning
            if m.tool_calls:
                entry["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                    for c in m.tool_calls
                ]
            open_calls = {c.id for c in m.tool_calls}
            out.append(entry)
        elif isinstance(m, ToolMessage):
            if m.call_id in open_calls:
                out.append({"role": "tool", "tool_call_id": m.call_id, "content": m.content})
            else:
                out.append({"role": "user", "content": m.content})
    return out
