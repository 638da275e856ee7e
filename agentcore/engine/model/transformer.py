"""The transformer forward pass, written once over an ops backend.

Job: turn token ids at absolute positions into logits for the decoder-only architectures of
the registry (llama, qwen2, qwen3), reading and extending a KV cache.

Invariants:
- All array work goes through ``ops`` (NumPy on CPU, CuPy on GPU): weights are prepared once
  in ``__init__``; ``forward`` only slices and reshapes the arrays ops return. Logits come
  back as float32 NumPy arrays on the host.
- ``forward(ids, pos0, kv)`` requires ``pos0 <= kv.length``; it overwrites positions from pos0
  on and leaves ``kv.length == pos0 + len(ids)``. Results do not depend on how a sequence
  is split across calls (one prefill, chunks, or token-by-token decode agree).
- Long prompts run in chunks of ``chunk`` tokens, so attention never holds more than
  chunk x context scores at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agentcore.engine.model.gguf import GGUFModel, ModelSpec, WeightTensor

__all__ = ["ChunkedForward", "LiveKV", "Ops", "Transformer", "llama3_inv_freq", "rope_inv_freq"]

Array = Any  # a backend array (numpy.ndarray, cupy.ndarray)


class LiveKV(Protocol):
    """Per-sequence K/V storage; ``length`` counts the valid positions."""

    length: int

    def store(self, layer: int, pos0: int, k: Array, v: Array) -> None: ...
    def truncate(self, n: int) -> None: ...


class Ops(Protocol):
    """What a backend provides. Activations are (T, features) or (T, heads, head_dim)."""

    def prepare_linear(
        self, weights: Sequence[WeightTensor], biases: Sequence[WeightTensor] | None = None
    ) -> Any:
        """One projection whose outputs are the given matrices' outputs, concatenated."""

    def prepare_vector(self, t: WeightTensor) -> Any: ...
    def prepare_embedding(self, t: WeightTensor) -> Any: ...
    def tied_linear(self, embedding: Any) -> Any:
        """The LM head that shares the embedding table's storage."""

    def prepare_rope(self, inv_freq: np.ndarray, neox: bool, max_positions: int, *,
                     magnitude: float = 1.0) -> Any:  # fmt: skip
        """cos/sin tables of ``inv_freq``, times ``magnitude`` (YaRN scales the rotated dims)."""
    def new_kv(self, spec: ModelSpec, capacity: int) -> LiveKV: ...
    def compute(self) -> AbstractContextManager[object]:
        """Entered around each forward (thread pinning, device or stream selection)."""

    def embed(self, table: Any, ids: Sequence[int]) -> Array: ...
    def matmul(self, x: Array, lin: Any) -> Array: ...
    def rmsnorm(self, x: Array, w: Any, eps: float) -> Array: ...
    def rope(self, x: Array, pos0: int, rope: Any) -> Array: ...
    def attention(self, q: Array, kv: LiveKV, layer: int, pos0: int) -> Array:
        """Causal attention of q (T, H, D) over positions [0, pos0 + T) -> (T, H * D)."""

    def swiglu(self, gate_up: Array) -> Array: ...
    def add(self, x: Array, y: Array) -> Array: ...
    def logits(self, x: Array, head: Any) -> np.ndarray:
        """Head projection of x (T, n_embd) as a float32 host array (T, vocab)."""


def llama3_inv_freq(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    """Llama 3.1 frequency scaling: keep high frequencies, divide low ones by ``factor``,
    interpolate smoothly in between (the formula the HF and llama.cpp converters use)."""
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_context_length"]
    wavelen = 2 * math.pi / inv_freq
    smooth = np.clip((old_ctx / wavelen - lo) / (hi - lo), 0.0, 1.0)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def rope_inv_freq(spec: ModelSpec, freq_factors: np.ndarray | None = None) -> np.ndarray:
    """Rotary inverse frequencies base^(-2i/d), with the model's scaling applied (float64)."""
    inv_freq = spec.rope_base ** (-np.arange(0, spec.head_dim, 2, dtype=np.float64) / spec.head_dim)
    kind = (spec.rope_scaling or {}).get("type")
    if kind == "llama3":
        return llama3_inv_freq(inv_freq, spec.rope_scaling)
    if kind == "linear":
        return inv_freq / spec.rope_scaling["factor"]
    if kind == "freq_factors":
        return inv_freq / np.asarray(freq_factors, dtype=np.float64)
    if kind == "yarn":
        return yarn_inv_freq(inv_freq, spec.rope_scaling, spec.rope_base)
    return inv_freq


def yarn_inv_freq(inv_freq: np.ndarray, scaling: dict, base: float) -> np.ndarray:
    """YaRN's frequencies (ggml's rope_yarn, ext_factor 1): each one interpolated by
    ``1 / factor`` below the ramp between the dims that turn beta_slow and beta_fast times in
    the original context, kept above it, blended in between."""
    n = 2 * len(inv_freq)
    fs = 1.0 / scaling["factor"]

    def corr_dim(n_rot: float) -> float:
        return n * math.log(scaling["original_context_length"] / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    lo = max(0.0, math.floor(corr_dim(scaling["beta_fast"])))
    hi = min(n - 1.0, math.ceil(corr_dim(scaling["beta_slow"])))
    ramp = 1.0 - np.clip((np.arange(n // 2) - lo) / max(0.001, hi - lo), 0.0, 1.0)
    return inv_freq * (fs * (1.0 - ramp) + ramp)


@dataclass
class Layer:
    attn_norm: Any
    qkv: Any  # fused Q/K/V (and their biases for qwen2)
    q_norm: Any
    k_norm: Any
    out: Any
    ffn_norm: Any
    gate_up: Any  # fused gate/up
    down: Any


class ChunkedForward:
    """The forward driver every architecture shares: the prompt in chunks of ``chunk``
    tokens, ``kv.length`` advanced after each, the final norm and head. A subclass sets
    ``ops``, ``spec``, ``chunk``, ``output_norm`` and ``head`` (``_prepare_ends`` does, from
    the model's embedding, final norm and output tensors) and implements
    ``_hidden(ids, pos0, kv)`` (one chunk's hidden states, its KV stored)."""

    ops: Any
    spec: ModelSpec
    chunk: int
    output_norm: Any
    head: Any

    def _prepare_ends(self, model: GGUFModel, ops: Any, chunk: int | None) -> None:
        """ops, spec, chunk, and the embedding, final norm and head (tied or not)."""
        spec, t = model.spec, model.tensor
        self.spec, self.ops = spec, ops
        sized = getattr(ops, "prefill_chunk_for", None)
        self.chunk = chunk or (sized(spec) if sized else getattr(ops, "prefill_chunk", 512))
        self.embedding = ops.prepare_embedding(t("token_embd.weight"))
        self.output_norm = ops.prepare_vector(t("output_norm.weight"))
        self.head = (
            ops.tied_linear(self.embedding)
            if spec.tied_embeddings
            else ops.prepare_linear([t("output.weight")])
        )

    def _hidden(self, ids: Sequence[int], pos0: int, kv: LiveKV) -> Array:
        raise NotImplementedError

    def forward(
        self, ids: Sequence[int], pos0: int, kv: LiveKV, *, all_logits: bool = False
    ) -> np.ndarray:
        """Logits of the last position (vocab,), or of every position (T, vocab)."""
        self._check(ids, pos0, kv)
        out = []
        with self.ops.compute():
            for start in range(0, len(ids), self.chunk):
                x = self._chunk(ids[start : start + self.chunk], pos0 + start, kv)
                if all_logits:
                    out.append(self._logits(x))
            return np.concatenate(out) if all_logits else self._logits(x[-1:])[0]

    def hidden(self, ids: Sequence[int], pos0: int, kv: LiveKV) -> Array:
        """Append ``ids`` at ``pos0`` to ``kv``; the last chunk's hidden states before the
        final norm, as a backend array (T_last, n_embd): a device decoder applies the head."""
        self._check(ids, pos0, kv)
        with self.ops.compute():
            for start in range(0, len(ids), self.chunk):
                x = self._chunk(ids[start : start + self.chunk], pos0 + start, kv)
        return x

    def _check(self, ids: Sequence[int], pos0: int, kv: LiveKV) -> None:
        if not len(ids):
            raise ValueError("forward needs at least one token")
        if not 0 <= pos0 <= kv.length:
            raise ValueError(f"pos0={pos0} must be within the {kv.length} cached positions")

    def _chunk(self, ids: Sequence[int], pos0: int, kv: LiveKV) -> Array:
        x = self._hidden(ids, pos0, kv)
        kv.length = pos0 + len(ids)
        return x

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``ids`` from an empty cache: the referee's view."""
        return self.forward(ids, 0, self.ops.new_kv(self.spec, len(ids)), all_logits=True)

    def _logits(self, x: Array) -> np.ndarray:
        return self.ops.logits(self.ops.rmsnorm(x, self.output_norm, self.spec.rms_eps), self.head)


class Transformer(ChunkedForward):
    """A decoder-only transformer whose weights live in ``ops``' prepared form."""

    def __init__(self, model: GGUFModel, ops: Ops, *, chunk: int | None = None) -> None:
        spec, t = model.spec, model.tensor
        self._prepare_ends(model, ops, chunk)
        factors = None
        if spec.rope_scaling and spec.rope_scaling.get("type") == "freq_factors":
            factors = t(spec.rope_scaling["tensor"]).dequantize()
        magnitude = (spec.rope_scaling or {}).get("magnitude", 1.0)
        self.rope = ops.prepare_rope(
            rope_inv_freq(spec, factors), spec.rope_neox, spec.context_length, magnitude=magnitude
        )
        self.layers = [self._layer(model, f"blk.{i}.") for i in range(spec.n_layers)]

    def _layer(self, model: GGUFModel, p: str) -> Layer:
        ops, t = self.ops, model.tensor
        names = (p + "attn_q", p + "attn_k", p + "attn_v")
        bias = [t(n + ".bias") for n in names] if self.spec.qkv_bias else None
        qk_norm = self.spec.qk_norm
        return Layer(
            attn_norm=ops.prepare_vector(t(p + "attn_norm.weight")),
            qkv=ops.prepare_linear([t(n + ".weight") for n in names], bias),
            q_norm=ops.prepare_vector(t(p + "attn_q_norm.weight")) if qk_norm else None,
            k_norm=ops.prepare_vector(t(p + "attn_k_norm.weight")) if qk_norm else None,
            out=ops.prepare_linear([t(p + "attn_output.weight")]),
            ffn_norm=ops.prepare_vector(t(p + "ffn_norm.weight")),
            gate_up=ops.prepare_linear([t(p + "ffn_gate.weight"), t(p + "ffn_up.weight")]),
            down=ops.prepare_linear([t(p + "ffn_down.weight")]),
        )

    def _hidden(self, ids: Sequence[int], pos0: int, kv: LiveKV) -> Array:
        ops, eps = self.ops, self.spec.rms_eps
        x = ops.embed(self.embedding, ids)
        # CUDA runs RoPE, the head norms and the KV store in one kernel (CudaOps.rope_kv), a
        # norm into its GEMM's fp16 operand (norm_matmul) and a residual GEMM in place (matmul_add).
        rope_kv = getattr(ops, "rope_kv", None) or self._rope_kv
        norm_matmul = getattr(ops, "norm_matmul", None) or self._norm_matmul
        matmul_add = getattr(ops, "matmul_add", None) or self._matmul_add
        for layer, b in enumerate(self.layers):
            qkv = norm_matmul(x, b.attn_norm, eps, b.qkv)
            q = rope_kv(qkv, pos0, self.rope, kv, layer, q_norm=b.q_norm, k_norm=b.k_norm, eps=eps)
            x = matmul_add(x, ops.attention(q, kv, layer, pos0), b.out)
            h = norm_matmul(x, b.ffn_norm, eps, b.gate_up)
            x = matmul_add(x, ops.swiglu(h), b.down)
        return x

    def _norm_matmul(self, x: Array, w: Any, eps: float, lin: Any) -> Array:
        return self.ops.matmul(self.ops.rmsnorm(x, w, eps), lin)

    def _matmul_add(self, x: Array, h: Array, lin: Any) -> Array:
        return self.ops.add(x, self.ops.matmul(h, lin))

    def _rope_kv(self, qkv: Array, pos0: int, rope: Any, kv: LiveKV, layer: int, *, q_norm: Any = None,
                 k_norm: Any = None, eps: float = 0.0) -> Array:  # fmt: skip
        """The projection tail from ops' parts: qkv (T, (H + 2 KVH) D) -> q rotated (T, H, D),
        K rotated and V stored in ``kv`` at [pos0, pos0 + T); q and k head-normed first when the
        model has q_norm/k_norm (qwen3)."""
        ops, s = self.ops, self.spec
        t, hd = qkv.shape[0], s.head_dim
        nq, nkv = s.n_heads * hd, s.n_kv_heads * hd
        q = qkv[:, :nq].reshape(t, s.n_heads, hd)
        k = qkv[:, nq : nq + nkv].reshape(t, s.n_kv_heads, hd)
        v = qkv[:, nq + nkv :].reshape(t, s.n_kv_heads, hd)
        if s.qk_norm:
            q, k = ops.rmsnorm(q, q_norm, eps), ops.rmsnorm(k, k_norm, eps)
        q, k = ops.rope(q, pos0, rope), ops.rope(k, pos0, rope)
        kv.store(layer, pos0, k, v)
        return q
