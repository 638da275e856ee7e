"""NumPy ops: the reference (CPU) backend of the transformer in model.py.

Job: implement the ops interface (``model.Ops``) with plain NumPy so that it is both the
correctness reference for faster backends and a usable CPU engine.

Invariants:
- Activations are float32 and row-major: a sequence of T tokens is (T, features) or
  (T, heads, head_dim). Softmax and norms accumulate in float32.
- Weights are dequantized once, at prepare time, to float32 C-contiguous (out, in) matrices:
  ``x @ w.T`` then runs as one BLAS sgemv/sgemm with no copy. Q/K/V and gate/up are fused into
  one matrix each, so a layer costs four BLAS calls.
- Inside ``compute()`` BLAS is single-threaded; prefill rows are split over our own threads.
- ``DenseKV`` holds ``(n_layers, 2, capacity, n_kv_heads, head_dim)``: K is [:, 0], V is [:, 1];
  the tokens of a layer are contiguous, so a block of positions is one slice to page or save.
  ``LatentKV`` (deepseek2's MLA) is the same with one plane of one latent "head":
  ``(n_layers, 1, capacity, 1, kv_lora_rank + rope dims)``.
- Attention is causal in absolute positions: query i of a call at ``pos0`` sees keys
  ``[0, pos0 + i]``; the caller stores this call's K/V before attending.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from agentcore.engine.kvstore.blocks import Q8_BLOCK_BYTES
from agentcore.engine.model.gguf import ModelSpec, WeightTensor

__all__ = ["DenseKV", "Experts", "LatentKV", "Linear", "NumpyOps", "Rope"]


@dataclass(frozen=True)
class Linear:
    """A prepared projection ``y = x @ w.T + bias`` with ``w`` of shape (out, in)."""

    w: np.ndarray
    bias: np.ndarray | None = None


class Rope:
    """Rotary tables: cos/sin of shape (positions, head_dim // 2), grown on demand."""

    def __init__(self, inv_freq: np.ndarray, neox: bool, positions: int, magnitude: float = 1.0) -> None:
        self.inv_freq = np.asarray(inv_freq, dtype=np.float64)
        self.neox = neox
        self.magnitude = float(magnitude)
        self.cos = self.sin = np.empty((0, len(self.inv_freq)), np.float32)
        self.ensure(positions)

    def ensure(self, positions: int) -> None:
        if positions <= len(self.cos):
            return
        # Angles in float64: pos * inv_freq loses precision in float32 at long contexts.
        angles = np.outer(
            np.arange(max(positions, 2 * len(self.cos)), dtype=np.float64), self.inv_freq
        )
        m = self.magnitude
        self.cos, self.sin = (m * np.cos(angles)).astype(np.float32), (m * np.sin(angles)).astype(np.float32)


class DenseKV:
    """A contiguous KV cache for one sequence; grows by doubling when a store overflows it.

    ``length`` is the number of valid positions; ``Transformer.forward`` sets it after each
    chunk. ``truncate(n)`` rolls back to a shared prefix without touching the data.
    """

    def __init__(self, spec: ModelSpec, capacity: int = 256, dtype: type = np.float32) -> None:
        shape = (spec.n_layers, 2, max(1, capacity), spec.n_kv_heads, spec.head_dim)
        self.data = np.zeros(shape, dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.data.shape[2]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write K/V of shape (T, n_kv_heads, head_dim) at positions [pos0, pos0 + T)."""
        end = pos0 + len(k)
        if end > self.capacity:
            self.grow(end)
        self.data[layer, 0, pos0:end] = k
        self.data[layer, 1, pos0:end] = v

    def load(self, layer: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of K and V for the first ``n`` positions, each (n, n_kv_heads, head_dim)."""
        return self.data[layer, 0, :n], self.data[layer, 1, :n]

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a KV cache of {self.length} tokens to {n}")
        self.length = n

    def grow(self, min_capacity: int) -> None:
        """Reallocate to at least ``min_capacity`` positions (doubling keeps appends O(1))."""
        if min_capacity <= self.capacity:
            return
        shape = list(self.data.shape)
        shape[2] = max(min_capacity, 2 * self.capacity)
        data = np.zeros(shape, self.data.dtype)
        # Copy every slot, not just ``length``: a forward in progress may have stored
        # positions of the current chunk in earlier layers before ``length`` moves.
        data[:, :, : self.capacity] = self.data
        self.data = data

    def export(self, n: int) -> list[np.ndarray]:
        """Per layer, a contiguous copy of shape (planes, n, heads, head_dim) (planes: K, V)."""
        if n > self.length:
            raise ValueError(f"cannot export {n} tokens from a KV cache of {self.length}")
        return [np.ascontiguousarray(layer[:, :n]) for layer in self.data]

    def import_(self, layers: Sequence[np.ndarray]) -> None:
        """Replace the contents with ``export``'s output; ``length`` becomes its token count."""
        if len(layers) != self.data.shape[0]:
            raise ValueError(f"expected {self.data.shape[0]} layers, got {len(layers)}")
        n = layers[0].shape[1]
        self.grow(n)
        for dst, src in zip(self.data, layers, strict=True):
            if src.shape != (self.data.shape[1], n, *self.data.shape[3:]):
                raise ValueError(f"layer shape {src.shape} does not match this cache")
            dst[:, :n] = src
        self.length = n


class Q8KV(DenseKV):
    """A KV cache whose K and V rows are block-quantized as GGUF Q8_0: per 32 values an fp16
    scale then 32 int8 (34 bytes, 3.8x fewer than float32, 1.9x fewer than fp16). The cache,
    and so every checkpoint of it, holds these bytes; attention reads them dequantized.
    Quantization follows llama.cpp's ``quantize_row_q8_0`` (scale = max|x| / 127, rounding half
    away from zero), so a row means what it means in a llama.cpp q8_0 cache.
    """

    def __init__(self, spec: ModelSpec, capacity: int = 256) -> None:
        if spec.head_dim % 32:
            raise ValueError(f"kv_dtype='q8_0' needs a head_dim divisible by 32, not {spec.head_dim}")
        self.head_dim = spec.head_dim
        width = spec.head_dim // 32 * Q8_BLOCK_BYTES
        self.data = np.zeros((spec.n_layers, 2, max(1, capacity), spec.n_kv_heads, width), np.uint8)
        self.length = 0

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        end = pos0 + len(k)
        if end > self.capacity:
            self.grow(end)
        self.data[layer, 0, pos0:end] = quantize_q8_0(k)
        self.data[layer, 1, pos0:end] = quantize_q8_0(v)

    def load(self, layer: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """K and V of the first ``n`` positions, dequantized to float32 (n, n_kv_heads, head_dim)."""
        return dequantize_q8_0(self.data[layer, 0, :n]), dequantize_q8_0(self.data[layer, 1, :n])


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Rows (..., D) float -> (..., D / 32 * 34) uint8 GGUF Q8_0 blocks."""
    *lead, d = x.shape
    b = np.asarray(x, dtype=np.float32).reshape(*lead, d // 32, 32)
    scale = np.abs(b).max(axis=-1) / 127.0
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    y = b * inv[..., None]
    q = np.trunc(y + np.copysign(np.float32(0.5), y)).astype(np.int8)  # C roundf
    out = np.empty((*lead, d // 32, Q8_BLOCK_BYTES), np.uint8)
    out[..., :2] = scale.astype(np.float16)[..., None].view(np.uint8)
    out[..., 2:] = q.view(np.uint8)
    return out.reshape(*lead, d // 32 * Q8_BLOCK_BYTES)


def dequantize_q8_0(rows: np.ndarray) -> np.ndarray:
    """GGUF Q8_0 rows (..., W) uint8 -> (..., W / 34 * 32) float32."""
    *lead, w = rows.shape
    b = rows.reshape(*lead, w // Q8_BLOCK_BYTES, Q8_BLOCK_BYTES)
    scale = np.ascontiguousarray(b[..., :2]).view(np.float16).astype(np.float32)
    q = np.ascontiguousarray(b[..., 2:]).view(np.int8).astype(np.float32)
    q *= scale
    return q.reshape(*lead, w // Q8_BLOCK_BYTES * 32)


class LatentKV(DenseKV):
    """deepseek2's latent cache: per token and layer the normalised compressed KV
    (``kv_lora_rank``) then the rotated rope key, one row of ``kv_lora_rank + rope dims``.
    """

    def __init__(self, spec: ModelSpec, capacity: int = 256, dtype: type = np.float32) -> None:
        mla = spec.mla
        if mla is None:
            raise ValueError(f"LatentKV needs a model with latent attention, not {spec.arch!r}")
        self.data = np.zeros((spec.n_layers, 1, max(1, capacity), 1, mla.latent_dim), dtype)
        self.kv_lora_rank = mla.kv_lora_rank
        self.length = 0

    def store(self, layer: int, pos0: int, latent: np.ndarray, k_pe: np.ndarray) -> None:
        """Write latents (T, kv_lora_rank) and rope keys (T, rope dims) at [pos0, pos0 + T)."""
        end = pos0 + len(latent)
        if end > self.capacity:
            self.grow(end)
        self.data[layer, 0, pos0:end, 0, : self.kv_lora_rank] = latent
        self.data[layer, 0, pos0:end, 0, self.kv_lora_rank :] = k_pe

    def load(self, layer: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of the latents (n, kv_lora_rank) and rope keys (n, rope dims)."""
        rows = self.data[layer, 0, :n, 0]
        return rows[:, : self.kv_lora_rank], rows[:, self.kv_lora_rank :]


@dataclass(frozen=True)
class Experts:
    """A prepared MoE expert stack: gate/up fused (E, 2 * n_ff, in), down (E, out, n_ff)."""

    gate_up: np.ndarray
    down: np.ndarray


# Below this many rows per thread a split costs more in thread hand-offs than it saves.
_MIN_ROWS_PER_THREAD = 16


def _f32(t: WeightTensor) -> np.ndarray:
    return np.ascontiguousarray(t.dequantize(np.float32))


class NumpyOps:
    """The ops interface over NumPy (see ``model.Ops`` for the contract of each method).

    ``threads`` worker threads split prefill matmuls and attention by rows; decode (one
    row) runs on the calling thread, where a GEMV is bound by memory bandwidth anyway.
    """

    kv_dtype = "float32"  # or "float16", "q8_0" (LocalEngine's kv_dtype); part of a block's identity

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None
        self._blas = ThreadpoolController()

    def compute(self) -> AbstractContextManager[object]:
        # BLAS pinned to one thread while a forward runs: multi-threaded OpenBLAS busy-waits,
        # and on a CPU shared with any other process a small GEMM then takes 10-50x longer
        # (measured 3 vs 40 tok/s decode next to one busy process). We parallelise ourselves.
        return self._blas.limit(limits=1, user_api="blas")

    # ---- preparation (once per model) ----

    def prepare_linear(
        self, weights: Sequence[WeightTensor], biases: Sequence[WeightTensor] | None = None
    ) -> Linear:
        w = np.concatenate([_f32(t) for t in weights]) if len(weights) > 1 else _f32(weights[0])
        bias = np.concatenate([_f32(b) for b in biases]) if biases else None
        return Linear(w, bias)

    def prepare_vector(self, t: WeightTensor) -> np.ndarray:
        return _f32(t)

    def prepare_embedding(self, t: WeightTensor) -> np.ndarray:
        return _f32(t)

    def tied_linear(self, embedding: np.ndarray) -> Linear:
        # The (vocab, n_embd) table already is the (out, in) head matrix: share, don't copy.
        return Linear(embedding)

    def prepare_rope(self, inv_freq: np.ndarray, neox: bool, max_positions: int, *,
                     magnitude: float = 1.0) -> Rope:  # fmt: skip
        return Rope(inv_freq, neox, max_positions, magnitude)

    def new_kv(self, spec: ModelSpec, capacity: int) -> DenseKV:
        """The live KV for ``spec`` in ``kv_dtype`` ("float32", "float16" or "q8_0")."""
        if spec.mla is not None:
            return LatentKV(spec, capacity, np.float16 if self.kv_dtype == "float16" else np.float32)
        if self.kv_dtype == "q8_0":
            return Q8KV(spec, capacity)
        return DenseKV(spec, capacity, np.float16 if self.kv_dtype == "float16" else np.float32)

    def prepare_heads(self, w: np.ndarray) -> np.ndarray:
        """Per-head matrices (H, out, in) for ``head_matmul``."""
        return np.ascontiguousarray(w, dtype=np.float32)

    def prepare_experts(self, gate_up: Sequence[WeightTensor], down: WeightTensor) -> Experts:
        """Expert stacks: [gate, up] (each (E, n_ff, in)) or [fused gate_up], and down."""
        fused = np.concatenate([_f32(t) for t in gate_up], axis=1) if len(gate_up) > 1 else None
        return Experts(fused if fused is not None else _f32(gate_up[0]), _f32(down))

    # ---- compute ----

    def embed(self, table: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        return table[np.asarray(ids, dtype=np.int64)]

    def matmul(self, x: np.ndarray, lin: Linear) -> np.ndarray:
        y = np.empty((len(x), lin.w.shape[0]), np.float32)

        def rows(a: int, b: int) -> None:
            np.matmul(x[a:b], lin.w.T, out=y[a:b])

        self._split_rows(rows, len(x))
        if lin.bias is not None:
            y += lin.bias
        return y

    def rmsnorm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        """Normalise over the last axis (also per head: x (T, H, D) with w (D,))."""
        ms = np.einsum("...i,...i->...", x, x)[..., None]
        ms *= 1.0 / x.shape[-1]
        ms += eps
        np.sqrt(ms, out=ms)
        y = x / ms
        y *= w
        return y

    def rope(self, x: np.ndarray, pos0: int, rope: Rope) -> np.ndarray:
        """Rotate x (T, H, D) at positions pos0..pos0+T-1; returns a new array."""
        t, _, d = x.shape
        rope.ensure(pos0 + t)
        cos = rope.cos[pos0 : pos0 + t, None, :]
        sin = rope.sin[pos0 : pos0 + t, None, :]
        # NORM rotates adjacent pairs (x0, x1), (x2, x3), ...; NEOX pairs x[i] with x[i + D/2].
        x0, x1 = (x[..., : d // 2], x[..., d // 2 :]) if rope.neox else (x[..., 0::2], x[..., 1::2])
        y = np.empty_like(x)
        y0, y1 = (y[..., : d // 2], y[..., d // 2 :]) if rope.neox else (y[..., 0::2], y[..., 1::2])
        np.multiply(x0, cos, out=y0)
        y0 -= x1 * sin
        np.multiply(x0, sin, out=y1)
        y1 += x1 * cos
        return y

    def attention(self, q: np.ndarray, kv: DenseKV, layer: int, pos0: int) -> np.ndarray:
        """Causal GQA of q (T, H, D) over the cache's first pos0 + T positions -> (T, H * D)."""
        t, h, d = q.shape
        k, v = kv.load(layer, pos0 + t)  # (pos0 + T, KVH, D)
        out = np.empty((t, h * d), np.float32)

        def rows(a: int, b: int) -> None:
            out[a:b] = _attend(q[a:b], k[: pos0 + b], v[: pos0 + b], pos0 + a)

        self._split_rows(rows, t, pos0)
        return out

    def latent_attention(
        self,
        q_lat: np.ndarray,
        q_pe: np.ndarray,
        kv: LatentKV,
        layer: int,
        pos0: int,
        scale: float,
        rope_scale: float,
    ) -> np.ndarray:
        """Causal MLA over the latent cache -> (T, H, kv_lora_rank), still compressed.

        Scores are ``scale * (q_lat . latent + rope_scale * q_pe . k_pe)`` for absorbed
        queries q_lat (T, H, kv_lora_rank) and rotated q_pe (T, H, rope dims); the values are
        the latents themselves.
        """
        t, h, r = q_lat.shape
        latent, k_pe = kv.load(layer, pos0 + t)
        out = np.empty((t, h, r), np.float32)

        def rows(a: int, b: int) -> None:
            n = pos0 + b
            scores = q_lat[a:b].reshape(-1, r) @ latent[:n].T
            scores += rope_scale * (q_pe[a:b].reshape((b - a) * h, -1) @ k_pe[:n].T)
            scores *= scale
            if b - a > 1:
                future = np.arange(n) > (pos0 + np.arange(a, b))[:, None]  # (rows, n)
                masked = scores.reshape(b - a, h, n)
                masked += np.where(future, np.float32(-np.inf), np.float32(0.0))[:, None, :]
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            out[a:b] = (scores @ latent[:n]).reshape(b - a, h, r)

        self._split_rows(rows, t, pos0)
        return out

    def head_matmul(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Per-head projection: x (T, H, in) with w (H, out, in) -> (T, H, out)."""
        y = np.matmul(x.transpose(1, 0, 2), w.transpose(0, 2, 1))  # (H, T, out)
        return np.ascontiguousarray(y.transpose(1, 0, 2))

    def moe(
        self, x: np.ndarray, experts: Experts, ids: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        """Sum over each token's experts ids (T, k) of weight * down(swiglu(gate_up(x))).

        Only the selected experts' matrices are read: one GEMM pair per expert over the
        tokens that chose it.
        """
        y = np.zeros((len(x), experts.down.shape[1]), np.float32)
        for e in np.unique(ids):
            rows, slot = np.nonzero(ids == e)
            h = self.swiglu(x[rows] @ experts.gate_up[e].T)
            y[rows] += weights[rows, slot, None] * (h @ experts.down[e].T)
        return y

    def swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        """silu(gate) * up for the fused (T, 2 * n_ff) projection."""
        n_ff = gate_up.shape[-1] // 2
        gate, up = gate_up[:, :n_ff], gate_up[:, n_ff:]
        y = np.negative(gate)
        np.exp(y, out=y)
        y += 1.0
        np.divide(gate, y, out=y)
        y *= up
        return y

    def add(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """x + y; may reuse x's memory (the residual stream is never shared)."""
        x += y
        return x

    def logits(self, x: np.ndarray, head: Linear) -> np.ndarray:
        return self.matmul(x, head)

    def _split_rows(self, fn: Callable[[int, int], None], n: int, pos0: int | None = None) -> None:
        """Run ``fn(a, b)`` over row ranges covering [0, n), one range per thread.

        With ``pos0`` the rows are causal attention queries (row i costs pos0 + i + 1 keys),
        and the ranges are cut to hold equal work rather than equal rows.
        """
        parts = min(self.threads, n // _MIN_ROWS_PER_THREAD)
        if parts <= 1 or self._pool is None:
            fn(0, n)
            return
        if pos0 is None:
            bounds = [n * i // parts for i in range(parts + 1)]
        else:
            work = np.cumsum(np.arange(pos0 + 1, pos0 + n + 1, dtype=np.float64))
            cuts = np.searchsorted(work, work[-1] * np.arange(1, parts) / parts)
            bounds = [0, *cuts.tolist(), n]
        futures = [self._pool.submit(fn, a, b) for a, b in itertools.pairwise(bounds[:-1])]
        fn(bounds[-2], n)  # the calling thread takes the last range instead of idling
        for f in futures:
            f.result()


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos0: int) -> np.ndarray:
    """Causal attention of q (T, H, D) at positions pos0.. over k, v (pos0 + T, KVH, D)."""
    t, h, d = q.shape
    n, kvh = k.shape[0], k.shape[1]
    g = h // kvh
    # The g query heads of a group share one KV head: stack them so one batched matmul per
    # KV head covers all T * g query rows.
    qg = q.reshape(t, kvh, g, d).transpose(1, 0, 2, 3).reshape(kvh, t * g, d)
    scores = qg @ k.transpose(1, 2, 0)  # (KVH, T*g, n)
    scores *= 1.0 / np.sqrt(d)
    if t > 1:
        future = np.arange(n) > (pos0 + np.arange(t))[:, None]  # (T, n)
        masked = scores.reshape(kvh, t, g, n)  # a view: adding to it masks ``scores``
        masked += np.where(future, np.float32(-np.inf), np.float32(0.0))[:, None, :]
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = scores @ v.transpose(1, 0, 2)  # (KVH, T*g, D)
    return out.reshape(kvh, t, g, d).transpose(1, 0, 2, 3).reshape(t, h * d)
