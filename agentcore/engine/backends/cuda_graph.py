"""The CUDA decoder: one decode step as one CUDA graph, sampling on the device.

Job: the engine's ``Decoder`` (engine/generate.py) on CuPy. ``prefill(ids)`` and
``feed(ids)`` run the transformer eagerly (cuBLAS GEMMs for long spans) and leave the last
position's logits in a device buffer; ``sample(mask)`` draws from them with one kernel;
``step(token, mask)`` replays the graph: embed ``token``, every layer with our kernels (fused
RMSNorm+GEMV, RoPE+KV write, flash-decoding, GEMV+residual, GEMV+SwiGLU), the head, and the
sampler (kernels/sample.cu). One token id (4 bytes) crosses to the host per step.

Invariants:
- The graph uses only our kernels (CuPy refuses cuBLAS inside capture); every buffer it
  touches is owned by the decoder; position, token and mask switch live in device state
  ``[pos, token, gen_start, mask_on]``, sampling parameters in device buffers set once per
  generation, so one capture serves every request on this KV. A reallocated KV pool
  (``kv.grow``) or rope table is noticed and the graph recaptured.
- The decoder advances ``kv.length`` exactly as ``Transformer.forward`` would; the caller's
  session ledger records the ids.
- A constraint mask is a bool vector over the logits; it is uploaded as bits (V / 8 bytes),
  and the packed form of each mask object is kept (the constraint reuses its masks).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from agentcore.engine.backends.cuda import (
    GEMV_MAX_T,
    ActQ8,
    CudaKV,
    CudaLinear,
    CudaOps,
    _as_ptr,
    _cdiv,
    _kernel,
    _Offset,
    pinned_empty,
)
from agentcore.engine.backends.cuda_mla import MLA_SHAPES
from agentcore.engine.backends.launch import pdl_launches
from agentcore.engine.base import Sampling
from agentcore.engine.decode.sampler import REPEAT_WINDOW

# Per model: the kernel configurations (see ``CudaDecoder._warm_key``) whose decode step has
# run eagerly once in this process (compiled, attributes set, checked), so a new session's
# decoder on the same model records its graph with no warm-up step.
_WARM: weakref.WeakKeyDictionary[Any, set[tuple]] = weakref.WeakKeyDictionary()

__all__ = ["CudaDecoder", "CudaMLADecoder"]

_I32 = np.int32
_F32 = np.float32
_MASKS_KEPT = 512
_CAPTURE_TRIES = 3
# CUDA's stream-capture errors that leave nothing wrong but the recording: invalidated (901),
# an implicit dependency on another stream's work (906). By code and by name: our launcher
# reports CUresult codes, CuPy its runtime and driver errors by name.
_CAPTURE_SPOILED = ("CUresult 901", "CUresult 906", "cudaErrorStreamCaptureInvalidated",
                    "cudaErrorStreamCaptureImplicit", "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
                    "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT")  # fmt: skip

log = logging.getLogger("agentcore.engine.cuda")


def capture_invalidated(e: BaseException) -> bool:
    """Whether ``e`` says a stream capture was spoiled from outside (worth recording again)."""
    text = f"{type(e).__name__}: {e}"
    return any(s in text for s in _CAPTURE_SPOILED)


class CudaDecoder:
    """Decode ``model`` (a ``Transformer`` on ``CudaOps``) over ``kv``; see the module doc."""

    def __init__(self, model: Any, kv: CudaKV) -> None:
        ops = model.ops
        if not isinstance(ops, CudaOps):
            raise TypeError("CudaDecoder needs a Transformer built on CudaOps")
        cp = ops.cp
        s = model.spec
        self.model, self.ops, self.kv, self.cp = model, ops, kv, cp
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.graph = None
        self._captured_for: tuple[int, int] | None = None
        self._covers = 0  # positions the captured graph's attention slices cover
        self._marks: list[tuple[str, Any]] | None = None
        hd, h, kvh = s.head_dim, s.n_heads, s.n_kv_heads
        with self.stream:
            self.x = cp.empty(s.n_embd, cp.float32)
            self.qkv = cp.empty((h + 2 * kvh) * hd, cp.float32)
            self.q = cp.empty(h * hd, cp.float32)
            self.attn = cp.empty(h * hd, cp.float32)
            self.gu = cp.empty(2 * s.n_ff, cp.float32)
            self.ffn = cp.empty(s.n_ff, cp.float32)
            self.logits_dev = cp.zeros(s.vocab_size, cp.float32)
            # The held logits while a step runs ahead (the step copies them here first).
            self.logits_prev = cp.zeros(s.vocab_size, cp.float32)
            self.work = cp.empty(s.vocab_size, cp.float32)
            self.mask_bits = cp.zeros(_cdiv(s.vocab_size, 32), cp.uint32)
            self.state = cp.zeros(4, cp.int32)
            self.sem = cp.zeros(max(1, kvh), cp.int32)  # attention's split counters (attend_decode)
            self.xq = ActQ8(cp, self._widest_input())  # int8 activations, reused by each GEMV
            # The SwiGLU output as the SwiGLU GEMV quantizes it for the down projection
            # (CudaOps.fuse_quant_ffn).
            self.ffq = ActQ8(cp, s.n_ff)
            self.fparams = cp.asarray(np.array([0.0, 1.0, 0.0, 1.0], np.float32))
            self.iparams = cp.zeros(3, cp.int32)
        self.host_state = pinned_empty((4,), np.int32)
        self.host_token = pinned_empty((1,), np.int32)
        self.ahead_token = pinned_empty((1,), np.int32)
        self._ahead: tuple[int, int] | None = None  # (token fed by a step run ahead, its position)
        self._verified: tuple[int, Any] = (0, None)  # the last verify's first position, its logits rows
        self.history = None
        self._gen_start = 0
        self._masks: OrderedDict[int, tuple[np.ndarray, Any]] = OrderedDict()
        self.stream.synchronize()

    # ------------------------------------------------------------------ Decoder protocol

    def prefill(self, ids: Sequence[int], *, reserve: int | None = None) -> None:
        """Append ``ids`` (a prompt tail) at ``kv.length``; hold the last position's logits.
        ``reserve``: a generation of that many tokens starts next (``start``); when it needs a
        new graph (a longer context than the captured one covers, a reallocated KV), the
        capture is recorded while the GPU still runs the prefill, off the first token's path."""
        self._drop_ahead()
        self._forward(ids, record=False, sync=False)
        if reserve is not None and self.kv.length + reserve + 1 <= self.kv.capacity and self._warmed:
            self._ready(reserve + 1)  # nothing here waits for the prefill: a capture is recorded
        self.stream.synchronize()

    def start(self, sampling: Sampling | None, seed: int | None = None, *, reserve: int = 0) -> None:
        """Begin a generation of up to ``reserve`` tokens; its first goes at ``kv.length``.
        The KV is grown and the graph (re)captured here, so decode steps never stall."""
        self._ready(reserve + 1)
        self._gen_start = self.kv.length
        if sampling is None:
            f, i = [0.0, 1.0, 0.0, 1.0], [0, 0, 0]
        else:
            f = [sampling.temperature, sampling.top_p, sampling.min_p, sampling.repetition_penalty]
            rng_seed = sampling.seed if sampling.seed is not None else seed
            if rng_seed is None:
                rng_seed = int(np.random.default_rng().integers(0, 2**31 - 1))
            i = [sampling.top_k, REPEAT_WINDOW, int(rng_seed) & 0x7FFFFFFF]
        with self.stream:
            self.fparams.set(np.asarray(f, np.float32), stream=self.stream)
            self.iparams.set(np.asarray(i, np.int32), stream=self.stream)

    def feed(self, ids: Sequence[int]) -> None:
        """Append generated ``ids`` (a forced span); they count for the repetition penalty."""
        ids = list(ids)
        if ids and self._take_ahead(ids[0]):
            ids = ids[1:]
        self._drop_ahead()
        if ids:
            self._forward(ids, record=True)

    def sample(self, mask: np.ndarray | None = None) -> int:
        """Draw the token after the last fed position from the held logits."""
        self._drop_ahead()
        self._ensure_history(self.kv.length + 1)
        self._set_state(0, mask)
        with self.stream:
            self._launch_sample(advance=0)
        token = self._read_token()
        if mask is None:
            self._run_ahead(token)
        return token

    def step(self, token: int, mask: np.ndarray | None = None) -> int:
        """Feed ``token`` at ``kv.length`` and draw the next one: one graph replay.

        Free text runs one step ahead: after a unmasked draw the graph is launched again at
        once on the device's own state, so the GPU computes the next step while the host
        reads this token. A step that then asks for a mask re-draws from that step's logits
        with one sampler kernel; nothing is recomputed.
        """
        if self._take_ahead(token):
            if mask is None:
                nxt = int(self.ahead_token[0])
                self._run_ahead(nxt)
                return nxt
            self._set_state(0, mask)
            with self.stream:
                self._launch_sample(advance=0)
            return self._read_token()
        self._drop_ahead()
        self._ready()
        self._set_state(token, mask)
        self.graph.launch(self.stream)
        self.kv.length += 1
        nxt = self._read_token()
        if mask is None:
            self._run_ahead(nxt)
        return nxt

    # Prompt-lookup drafts (engine/generate.py) checked in one batched step: ``verify`` and
    # ``rewind``. False (the default until its GPU tests and a speed figure have run: it was
    # written without a GPU) leaves the CUDA decoder decoding token by token, as before.
    verify_drafts = False
    # The tokens one verify feeds at most (the last sampled one and its draft): a batch the
    # decode GEMVs take (GEMV_MAX_T; CudaOps.multi_token_gemv reads each weight once for it),
    # never the prefill's GEMMs.
    max_verify = GEMV_MAX_T

    def verify(self, ids: Sequence[int]) -> list[int]:
        """Feed ``ids`` (the last sampled token, then a draft; at most ``max_verify``) in one
        batch and draw the token after each of them, unmasked, with the graph's own sampler
        kernel: position p's draw hashes (seed, p), and its repetition window is the history up
        to p, in which the row before wrote its own draw (a row after a rejected one is never
        kept), so each kept draw is the one sequential steps would make from these logits.
        The KV then holds all of ``ids``; ``rewind`` keeps the accepted prefix. One
        synchronisation: the draws come back together."""
        ids = [int(t) for t in ids]
        n = len(ids)
        if not 1 <= n <= self.max_verify:
            raise ValueError(f"verify takes 1 to {self.max_verify} tokens, not {n}")
        self._drop_ahead()
        cp, m, base = self.cp, self.model, self.kv.length
        if base + n > self.kv.capacity:
            self.kv.grow(base + n)
        self._ensure_history(base + n + 1)
        caller = cp.cuda.get_current_stream()
        with self.stream:
            self.history[base : base + n].set(np.asarray(ids, np.int32), stream=self.stream)
        caller.wait_event(self.stream.record())
        x = m.hidden(ids, base, self.kv)  # (n, n_embd), on the caller's stream (see _forward)
        rows = self.ops.matmul(self.ops.rmsnorm(x, m.output_norm, m.spec.rms_eps), m.head)
        self.stream.wait_event(caller.record())
        states = np.zeros((n, 4), np.int32)
        states[:, 0] = base + 1 + np.arange(n)  # advance=0: row i's logits are position base + i's
        states[:, 2] = self._gen_start
        with self.stream:
            dev = cp.asarray(states)
            for i in range(n):
                _kernel("sample_token")(
                    (1,), (1024,),
                    (rows[i], _I32(m.spec.vocab_size), self.mask_bits, dev[i], self.history,
                     self.fparams, self.iparams, self.work, _I32(0)),
                )  # fmt: skip
            self.logits_dev[...] = rows[-1]
            drawn = dev[:, 1].get(stream=self.stream)
        self.stream.synchronize()
        self._verified = (base, rows)
        return [int(t) for t in drawn]

    def rewind(self, n: int, pending: int) -> None:
        """Keep the first ``n`` positions of the KV (at least the first of the last
        ``verify``'s); the held logits become those of position n - 1, and ``pending`` (the
        accepted token drawn there, not yet fed) is the history's token at n."""
        base, rows = self._verified
        if rows is None or not base < n <= self.kv.length:
            raise ValueError(f"rewind to {n} outside the last verify's positions ({base}, {self.kv.length}]")
        self.kv.truncate(n)
        with self.stream:
            self.logits_dev[...] = rows[n - 1 - base]
            self.history[n : n + 1].set(np.asarray([pending], np.int32), stream=self.stream)
        self.stream.synchronize()

    def settle(self) -> None:
        """Wait for a step run ahead (its KV lies past ``kv.length`` until ``feed`` or
        ``step`` takes it); after this no work of the decoder is in flight."""
        self.stream.synchronize()

    def logits(self) -> np.ndarray:
        """The held logits (of the last fed position), float32 on the host."""
        held = self.logits_dev if self._ahead is None else self.logits_prev
        out = held.get(stream=self.stream)
        self.stream.synchronize()
        return out

    # ------------------------------------------------------------------ raw figures

    def generate(self, token: int, n: int) -> list[int]:
        """n graph replays back to back with one read-back: the raw kernel figure."""
        self._drop_ahead()
        self._ready(n)
        pos0 = self.kv.length
        self._set_state(token, None)
        for _ in range(n):
            self.graph.launch(self.stream)
        out = self.history[pos0 + 1 : pos0 + 1 + n].get(stream=self.stream)
        self.stream.synchronize()
        self.kv.length += n
        return [int(t) for t in out]

    def profile(self, token: int = 0) -> dict[str, float]:
        """Milliseconds per kernel kind for one step run eagerly (not as a graph), by CUDA
        events between launches; launch gaps are included, so the sum exceeds a replay."""
        self._drop_ahead()
        self._ready()
        self._set_state(token, None)
        self._marks = []
        with self.stream, pdl_launches(self.ops.pdl):
            _kernel("spin")((1,), (1,), (np.int64(200_000_000),))  # ~0.1 s: launches queue up
            self._mark("start")
            self._launch_step()
            self._mark("end")
        self.stream.synchronize()
        marks, self._marks = self._marks[1:], None
        out: dict[str, float] = {}
        for (label, a), (_, b) in itertools.pairwise(marks):
            out[label] = out.get(label, 0.0) + self.cp.cuda.get_elapsed_time(a, b)
        return out

    # ------------------------------------------------------------------ internals

    def _run_ahead(self, token: int) -> None:
        """Launch the step that feeds ``token`` (just drawn, unmasked, so the device state is
        ``[kv.length, token, gen_start, 0]``) and queue the copy of the token it draws."""
        kv = self.kv
        if kv.length + 2 > self._covers or self.graph is None or self._captured_for != (
            kv.pool.data.ptr, self.model.rope.cos.data.ptr, self.history.data.ptr
        ):
            return  # a step that needs a new capture is taken when asked for
        self.graph.launch(self.stream)
        self.cp.cuda.runtime.memcpyAsync(
            self.ahead_token.ctypes.data, self.state.data.ptr + 4, 4,
            self.cp.cuda.runtime.memcpyDeviceToHost, self.stream.ptr,
        )  # fmt: skip
        self._ahead = (token, kv.length)

    def _take_ahead(self, token: int) -> bool:
        """Whether the step run ahead fed exactly ``token`` here; if so it now counts."""
        if self._ahead != (token, self.kv.length):
            return False
        self.stream.synchronize()
        self._ahead = None
        self.kv.length += 1
        return True

    def _drop_ahead(self) -> None:
        """Forget a step run ahead: its KV and history lie past ``kv.length``; the held
        logits come back from the copy it made."""
        if self._ahead is not None:
            with self.stream:
                self.logits_dev[...] = self.logits_prev
            self.stream.synchronize()  # its writes must land before anyone else's
            self._ahead = None

    def _forward(self, ids: Sequence[int], *, record: bool, sync: bool = True) -> None:
        if not len(ids):
            raise ValueError("feed needs at least one token")
        pos0 = self.kv.length
        caller = self.cp.cuda.get_current_stream()
        # The transformer runs on the caller's stream, whose memory pool is warm (a new
        # decoder's own stream would start with an empty pool: cudaMalloc on every prefill
        # scratch), ordered after the decoder's earlier steps; the head and the sampler then
        # follow on the decoder's stream. Everything is finished before returning, so the
        # caller's stream may read the KV (a checkpoint).
        caller.wait_event(self.stream.record())
        x = self.model.hidden(ids, pos0, self.kv)  # the last position's hidden state (1, n_embd)
        self.stream.wait_event(caller.record())
        with self.stream:
            self.x[...] = x[-1]
            self._launch_head()
        if record:
            self._ensure_history(self.kv.length + 1)
            host = np.asarray(ids, dtype=np.int32)
            self.history[pos0 : pos0 + len(host)].set(host, stream=self.stream)
        if sync:
            self.stream.synchronize()

    def _ensure_history(self, n: int) -> None:
        if self.history is None or self.history.size < n + 1:
            cp = self.cp
            with self.stream:
                grown = cp.zeros(max(n + 1, self.kv.capacity + 1), cp.int32)
                if self.history is not None:
                    grown[: self.history.size] = self.history
            self.history = grown

    def _set_state(self, token: int, mask: np.ndarray | None) -> None:
        if mask is not None:
            self.mask_bits.set(self._packed(mask), stream=self.stream)
        self.host_state[:] = (self.kv.length, token, self._gen_start, 0 if mask is None else 1)
        self.state.set(self.host_state, stream=self.stream)

    def _packed(self, mask: np.ndarray) -> np.ndarray:
        key = id(mask)
        hit = self._masks.get(key)
        if hit is not None and hit[0] is mask:
            self._masks.move_to_end(key)
            return hit[1]
        bits = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")
        words = np.zeros(self.mask_bits.size * 4, np.uint8)
        words[: min(len(bits), len(words))] = bits[: len(words)]
        packed = words.view(np.uint32)
        self._masks[key] = (mask, packed)
        while len(self._masks) > _MASKS_KEPT:
            self._masks.popitem(last=False)
        return packed

    def _widest_input(self) -> int:
        s = self.model.spec
        return max(s.n_embd, s.n_ff, s.n_heads * s.head_dim)

    def _gemv_parts(self, lin: CudaLinear, x: Any, y: Any, **kw: Any) -> None:
        """y <- lin(x) (+ its bias) part by part, the parts' rows in order; x is quantized
        once for the parts that take int8 activations."""
        off = 0
        xq = self.ops.quantize_for(lin.parts, x, out=self.xq, **kw)
        for p in lin.parts:
            bias = None if lin.bias is None else _Offset(lin.bias, off)
            self.ops.gemv(p, x, _Offset(y, off), xq=xq, bias=bias, **kw)
            off += p.rows

    def _read_token(self) -> int:
        self.cp.cuda.runtime.memcpyAsync(
            self.host_token.ctypes.data, self.state.data.ptr + 4, 4,
            self.cp.cuda.runtime.memcpyDeviceToHost, self.stream.ptr,
        )  # fmt: skip
        self.stream.synchronize()
        return int(self.host_token[0])

    def _ready(self, steps: int = 1) -> None:
        kv, rope = self.kv, self.model.rope
        if kv.length + steps > kv.capacity:
            kv.grow(kv.length + steps)
        self._ensure_history(kv.capacity + 1)
        if self.graph is None or kv.length + steps > self._covers or self._captured_for != (
            kv.pool.data.ptr, rope.cos.data.ptr, self.history.data.ptr
        ):
            self._capture(kv.length + steps)

    def _capture(self, need: int = 0) -> None:
        kv = self.kv
        self.model.rope.ensure(kv.capacity + 1)
        self._ensure_history(kv.capacity + 1)
        self._split_buffers(max(need, kv.length + 1))
        # Warm-up, the first time (compiles and checks every kernel outside capture), at the
        # next position to be written, so the KV and history it writes are overwritten by the
        # first real step. It overwrites the held logits too: a capture may follow a prefill,
        # so keep them. A recapture (the same kernels, other slices or buffers) only records:
        # nothing waits for the GPU, so one during a prefill overlaps it.
        with self.stream:
            held = self.logits_dev.copy()
        self._set_state(0, None)
        with self.stream, pdl_launches(self.ops.pdl):
            if not self._warmed:
                self._launch_step()
                self.stream.synchronize()
            self.graph = self._record()
        with self.stream:
            self.logits_dev[...] = held
        self.stream.synchronize()
        self._captured_for = (kv.pool.data.ptr, self.model.rope.cos.data.ptr, self.history.data.ptr)
        _WARM.setdefault(self.model, set()).add(self._warm_key())

    def _record(self) -> Any:
        """One decode step recorded as a graph (on ``self.stream``, already current).

        A capture is a window in which the rest of the process can spoil the recording: the
        cyclic garbage collector, run by whichever thread allocates, may destroy another
        engine's CUDA objects (streams, graphs) mid-capture, and the driver then invalidates
        it (CUresult 901, seen when a second engine captured after a first was dropped). So
        automatic collection is off while recording, and an invalidated capture is ended and
        recorded again (up to ``_CAPTURE_TRIES`` times), after a collection outside the
        window. Any other error ends the capture before it propagates, so the stream is never
        left capturing (every later launch on it would fail)."""
        for attempt in range(_CAPTURE_TRIES):
            collecting = gc.isenabled()
            gc.disable()
            try:
                self.stream.begin_capture()
                try:
                    self._launch_step()
                except BaseException:
                    with contextlib.suppress(Exception):
                        self.stream.end_capture()
                    raise
                return self.stream.end_capture()
            except Exception as e:
                if attempt + 1 == _CAPTURE_TRIES or not capture_invalidated(e):
                    raise
                log.warning("decode graph capture invalidated (%s); recording it again", e)
            finally:
                if collecting:
                    gc.enable()
            gc.collect()
        raise AssertionError("unreachable")

    @property
    def _warmed(self) -> bool:
        """Whether this model's decode step, with these ops settings, ran eagerly once."""
        return self._warm_key() in _WARM.get(self.model, ())

    def _warm_key(self) -> tuple:
        o = self.ops
        return (type(self).__name__, self.kv.dtype, o.pdl, o.int8_activations, o.int8_min_bytes, o.tc_attention,
                o.q8_in_place, o.attn_early)

    def _split_buffers(self, need: int) -> None:
        """Flash-decoding's partial results for the context slices of the graph about to be
        captured: sized for the next power of two >= ``need`` positions (from 1024, at most
        the KV's capacity), not the capacity, so a short context launches few blocks that
        find nothing to read; crossing it recaptures (``_ready``), about log2 times a run."""
        cover = 1024
        while cover < need:
            cover *= 2
        self._covers = min(cover, self.kv.capacity)
        self.nsplit = self.ops.decode_splits(self.model.spec, self._covers)
        h, hd = self.model.spec.n_heads, self.model.spec.head_dim
        with self.stream:
            self.po = self.cp.empty((h, self.nsplit, hd), self.cp.float32)
            self.pml = self.cp.empty((h, self.nsplit, 2), self.cp.float32)

    def _mark(self, label: str) -> None:
        if self._marks is not None:
            ev = self.cp.cuda.Event()
            ev.record(self.stream)
            self._marks.append((label, ev))

    def _launch_head(self) -> None:
        m = self.model
        self._gemv_parts(m.head, self.x, self.logits_dev, norm=m.output_norm, eps=m.spec.rms_eps)

    def _launch_sample(self, advance: int) -> None:
        _kernel("sample_token")(
            (1,), (1024,),
            (self.logits_dev, _I32(self.model.spec.vocab_size), self.mask_bits, self.state,
             self.history, self.fparams, self.iparams, self.work, _I32(advance)),
        )  # fmt: skip

    def _launch_step(self) -> None:
        ops, m, s, kv = self.ops, self.model, self.model.spec, self.kv
        eps = s.rms_eps
        self.logits_prev[...] = self.logits_dev  # the held logits, should this step be dropped
        self._mark("embed")
        emb = m.embedding.parts[0]
        _kernel(f"embed<{emb.qtype}>")(
            (1,), (128,), (emb.data, np.int64(emb.row_bytes), _I32(emb.cols),
                           _as_ptr(_Offset(self.state, 1)), self.x))  # fmt: skip
        pos = self.state  # state[0] is the position
        for layer, b in enumerate(m.layers):
            self._mark("gemv_qkv")
            self._gemv_parts(b.qkv, self.x, self.qkv, norm=b.attn_norm, eps=eps)
            self._mark("rope_kv")
            _kernel("rope_kv_decode_q8" if kv.q8 else "rope_kv_decode")(
                (s.n_heads + 2 * s.n_kv_heads,), (128,),
                (self.qkv, self.q, kv.pool, kv.table, _I32(layer), _I32(s.n_layers),
                 _I32(kv.block_size), _I32(s.n_heads), _I32(s.n_kv_heads), _I32(s.head_dim),
                 m.rope.cos, m.rope.sin, pos, _I32(m.rope.neox), _as_ptr(b.q_norm),
                 _as_ptr(b.k_norm), _F32(eps)),
            )  # fmt: skip
            self._mark("attention")
            # Attention quantizes its output for the output projection where it writes it.
            aq = self.xq if ops.fuse_quant_attn and ops.int8_ready(b.out.parts[0]) else None
            fused = ops.attend_decode(self.q, kv, layer, self.po, self.pml, self.attn, self.nsplit,
                                      pos_dev=pos, sem=self.sem, xq=aq)  # fmt: skip
            self._mark("gemv_out")
            ops.gemv(b.out.parts[0], self.attn, self.x, mode=1, xq=aq if fused else None, scratch=self.xq)
            self._mark("gemv_gate_up")
            self._ffn_dense(b.gate_up, b.down, b.ffn_norm, s.n_ff)
        self._mark("gemv_head")
        self._launch_head()
        self._mark("sample")
        self._launch_sample(advance=1)

    def _ffn_dense(self, gate_up: CudaLinear, down: CudaLinear, norm: Any, n_ff: int, *,
                   later: bool = False) -> None:  # fmt: skip
        """swiglu(gate_up(norm(x))) into self.ffn, then (unless ``later``) x += down(ffn). A
        single gate/up matrix's GEMV also quantizes ffn for the down projection when both
        run on int8 activations (``CudaOps.fuse_quant_ffn``): no quant_x launch between them."""
        ops, eps = self.ops, self.model.spec.rms_eps
        ffq = None
        if len(gate_up.parts) == 1:
            want = ops.fuse_quant_ffn and not later and ops.int8_ready(down.parts[0])
            if ops.gemv(gate_up.parts[0], self.x, self.ffn, mode=2, norm=norm, eps=eps, scratch=self.xq,
                        yq=self.ffq if want else None):  # fmt: skip
                ffq = self.ffq
        else:
            self._gemv_parts(gate_up, self.x, self.gu, norm=norm, eps=eps)
            _kernel("swiglu")((_cdiv(n_ff, 256),), (256,), (self.gu, self.ffn, _I32(1), _I32(n_ff)))
        if not later:
            self._mark("gemv_down")
            ops.gemv(down.parts[0], self.ffn, self.x, mode=1, xq=ffq, scratch=self.xq)


class CudaMLADecoder(CudaDecoder):
    """The decode graph of a deepseek2 model (``DeepSeek2`` on ``CudaOps``) over its latent
    cache: per layer the fused q/kv_a GEMV, the latent write (RMSNorm + RoPE, mla_kv_write),
    the absorbed query (mla_q_rope, head_gemv with k_b), MLA over the cache, the value
    up-projection (head_gemv with v_b) and the output GEMV + residual; then the dense FFN, or
    the router GEMV, device routing (moe_route), the selected experts' GEMVs and the shared
    experts. Sampling, run-ahead and capture are ``CudaDecoder``'s."""

    def __init__(self, model: Any, kv: Any) -> None:
        super().__init__(model, kv)
        s, cp = model.spec, self.cp
        m, f = s.mla, s.moe
        if not self.ops.mla_decode_supported(s):
            raise ValueError(
                f"CUDA MLA decode is compiled for (kv_lora_rank, rope dims) in {MLA_SHAPES}, not "
                f"({m.kv_lora_rank}, {m.qk_rope_dim})"
            )  # fmt: skip
        if f.n_expert > 1024 or (f.n_groups > 1 and f.n_groups > 64):
            raise ValueError("CUDA MoE routing supports up to 1024 experts in up to 64 groups")
        h, qk = s.n_heads, m.qk_nope_dim + m.qk_rope_dim
        self.n_q = m.q_lora_rank or h * qk
        shared = f.n_ff_exp * f.n_expert_shared
        with self.stream:
            self.qkva = cp.empty(self.n_q + m.latent_dim, cp.float32)
            self.qfull = cp.empty(h * qk, cp.float32)
            self.q_pe = cp.empty(h * m.qk_rope_dim, cp.float32)
            self.q_abs = cp.empty(h * m.kv_lora_rank, cp.float32)
            self.o_lat = cp.empty(h * m.kv_lora_rank, cp.float32)
            self.o_v = cp.empty(h * m.v_head_dim, cp.float32)
            self.ffn = cp.empty(max(s.n_ff, shared, 1), cp.float32)
            self.gu = cp.empty(2 * max(s.n_ff, shared, 1), cp.float32)
            self.router = cp.empty(f.n_expert, cp.float32)
            self.eids = cp.zeros(f.n_expert_used, cp.int32)
            self.ew = cp.zeros(f.n_expert_used, cp.float32)
            self.moe_h = cp.empty(f.n_expert_used * f.n_ff_exp, cp.float32)
            self.moe_y = cp.empty(f.n_expert_used * s.n_embd, cp.float32)
            self.bias = [None if b.bias is None else cp.asarray(b.bias, dtype=cp.float32)
                         for b in model.layers]  # fmt: skip
        self.stream.synchronize()

    def _split_buffers(self, need: int) -> None:
        s = self.model.spec
        self._covers = self.kv.capacity
        self.nsplit = self.ops.mla_splits(self.kv.capacity)
        with self.stream:
            self.po = self.cp.empty((s.n_heads, self.nsplit, s.mla.kv_lora_rank), self.cp.float32)
            self.pml = self.cp.empty((s.n_heads, self.nsplit, 2), self.cp.float32)

    def _widest_input(self) -> int:
        s = self.model.spec
        m, f = s.mla, s.moe
        return max(s.n_embd, s.n_ff, m.q_lora_rank or 0, s.n_heads * m.v_head_dim,
                   f.n_ff_exp * max(f.n_expert_shared, 1))  # fmt: skip

    def _launch_step(self) -> None:
        ops, model, s, kv = self.ops, self.model, self.model.spec, self.kv
        m, f, eps = s.mla, s.moe, s.rms_eps
        h, nope, rope_d, rank = s.n_heads, m.qk_nope_dim, m.qk_rope_dim, m.kv_lora_rank
        cos, sin = model.rope.cos, model.rope.sin
        self.logits_prev[...] = self.logits_dev  # the held logits, should this step be dropped
        self._mark("embed")
        emb = model.embedding.parts[0]
        _kernel(f"embed<{emb.qtype}>")(
            (1,), (128,), (emb.data, np.int64(emb.row_bytes), _I32(emb.cols),
                           _as_ptr(_Offset(self.state, 1)), self.x))  # fmt: skip
        pos = self.state  # state[0] is the position
        for layer, b in enumerate(model.layers):
            self._mark("gemv_q_kv_a")
            self._gemv_parts(b.q_kv_a, self.x, self.qkva, norm=b.attn_norm, eps=eps)
            q = self.qkva
            if m.q_lora_rank:
                self._gemv_parts(b.q_b, self.qkva, self.qfull, norm=b.q_a_norm, eps=eps)
                q = self.qfull
            self._mark("mla_kv_write")
            _kernel("mla_kv_write")(
                (1,), (256,),
                (self.qkva, np.int64(0), _I32(self.n_q), _I32(rank), _I32(rope_d), b.kv_a_norm,
                 _F32(eps), cos, sin, _I32(0), pos, kv.pool, _I32(layer), _I32(kv.capacity)),
            )  # fmt: skip
            self._mark("mla_q")
            _kernel("mla_q_rope")((h,), (32,), (q, _I32(h), _I32(nope), _I32(rope_d), cos, sin, _I32(0),
                                                pos, self.q_pe))  # fmt: skip
            _kernel("head_gemv")(
                (h, _cdiv(rank, 8)), (256,),
                (q, np.int64(0), np.int64(nope + rope_d), b.k_b, _I32(h), _I32(rank), _I32(nope), self.q_abs),
            )  # fmt: skip
            self._mark("mla_attention")
            ops.mla_attend_decode(self.q_abs, self.q_pe, kv, layer, self.po, self.pml, self.o_lat,
                                  self.nsplit, m.kq_scale, m.rope_scale, pos_dev=pos)  # fmt: skip
            self._mark("head_gemv_v")
            _kernel("head_gemv")(
                (h, _cdiv(m.v_head_dim, 8)), (256,),
                (self.o_lat, np.int64(0), np.int64(rank), b.v_b, _I32(h), _I32(m.v_head_dim), _I32(rank),
                 self.o_v),
            )  # fmt: skip
            self._mark("gemv_out")
            ops.gemv(b.out.parts[0], self.o_v, self.x, mode=1, scratch=self.xq)
            if b.experts is None:
                self._mark("gemv_ffn")
                self._ffn_dense(b.gate_up, b.down, b.ffn_norm, s.n_ff)
                continue
            # Every read of x (router, experts, shared experts) comes before the writes to it.
            self._mark("moe_route")
            ops.gemv(b.router.parts[0], self.x, self.router, norm=b.ffn_norm, eps=eps, scratch=self.xq)
            _kernel("moe_route")(
                (1,), (256,),
                (self.router, _as_ptr(self.bias[layer]), _I32(f.n_expert), _I32(f.n_expert_used),
                 _I32(f.gating == "sigmoid"), _I32(f.n_groups), _I32(f.n_group_used),
                 _I32(f.weights_norm), _F32(f.weights_scale), self.eids, self.ew),
            )  # fmt: skip
            self._mark("moe_experts")
            ex, k = b.experts, f.n_expert_used
            ops.gemv(ex.gate_up, self.x, self.moe_h, t=k, y_stride=f.n_ff_exp, mode=2, norm=b.ffn_norm,
                     eps=eps, x_stride=0, eids=self.eids, e_stride=ex.gu_stride)  # fmt: skip
            if b.down is not None:
                self._mark("shared_experts")
                self._ffn_dense(b.gate_up, b.down, b.ffn_norm, f.n_ff_exp * f.n_expert_shared, later=True)
            self._mark("moe_down")
            ops.gemv(ex.down, self.moe_h, self.moe_y, t=k, y_stride=s.n_embd, x_stride=f.n_ff_exp,
                     eids=self.eids, e_stride=ex.down_stride)  # fmt: skip
            if b.down is not None:
                ops.gemv(b.down.parts[0], self.ffn, self.x, mode=1, scratch=self.xq)
            _kernel("moe_combine")((_cdiv(s.n_embd, 256),), (256,),
                                   (self.x, self.moe_y, self.ew, _I32(k), _I32(s.n_embd)))
        self._mark("gemv_head")
        self._launch_head()
        self._mark("sample")
        self._launch_sample(advance=1)
