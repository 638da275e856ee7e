"""deepseek2 on CuPy: the latent KV cache and the MLA and MoE ops.

Job: what ``DeepSeek2`` needs beyond the llama ops (``prepare_heads``/``head_matmul``,
``latent_attention``, ``prepare_experts``/``moe``, a latent ``new_kv``), mixed into
``CudaOps``; the decode step's graph is ``cuda_graph.CudaMLADecoder``.

Invariants:
- The latent cache is fp16 ``(L, 1, cap, 1, R + P)`` (the store's block form, planes=1):
  the normalised compressed KV then the rotated rope key, about a tenth of a GQA model's KV.
- Decode reads each cached row once per layer for all heads (kernels/mla.cu); the key and
  value up-projections are absorbed (``head_gemv``), so the cache is never decompressed.
- MoE decode reads only the selected experts' matrices: routing runs on the device
  (``moe_route``, the same rules as ``deepseek2.route``) and the expert GEMVs take the
  expert ids from device memory, so bytes per token equal the active parameters.
- Eager calls (prefill, referee logits) route on the host exactly as the NumPy backend does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import agentcore.engine.backends.cuda as _cu
from agentcore.engine.model.gguf import ModelSpec, WeightTensor

__all__ = ["CudaExperts", "CudaLatentKV", "MLAOps"]

_I32 = np.int32
_I64 = np.int64
_F32 = np.float32
# (kv_lora_rank, rope dims) the MLA decode kernel is compiled for: DeepSeek-V2/V2-Lite/V3,
# and the tiny synthetic test models.
MLA_SHAPES = ((512, 64), (32, 16))


class CudaLatentKV:
    """deepseek2's latent cache of one sequence on the device: fp16 (L, 1, cap, 1, R + P)."""

    dtype = "float16"

    def __init__(self, spec: ModelSpec, capacity: int) -> None:
        cp = _cu._cupy()
        mla = spec.mla
        if mla is None:
            raise ValueError(f"CudaLatentKV needs a model with latent attention, not {spec.arch!r}")
        self.spec = spec
        self.rank = mla.kv_lora_rank
        self.width = mla.latent_dim
        self.pool = cp.zeros((spec.n_layers, 1, max(1, capacity), 1, self.width), cp.float16)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.pool.shape[2]

    @property
    def nbytes(self) -> int:
        return int(self.pool.nbytes)

    def store(self, layer: int, pos0: int, latent: Any, k_pe: Any) -> None:
        """Write latents (T, R) and rotated rope keys (T, P) at [pos0, pos0 + T)."""
        t = latent.shape[0]
        self.grow(pos0 + t)
        self.pool[layer, 0, pos0 : pos0 + t, 0, : self.rank] = latent
        self.pool[layer, 0, pos0 : pos0 + t, 0, self.rank :] = k_pe

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a KV cache of {self.length} tokens to {n}")
        self.length = n

    def grow(self, min_capacity: int) -> None:
        """Reallocate to at least ``min_capacity`` positions (doubling); keeps every slot."""
        if min_capacity <= self.capacity:
            return
        cp = _cu._cupy()
        shape = list(self.pool.shape)
        shape[2] = max(min_capacity, 2 * self.capacity)
        pool = cp.zeros(tuple(shape), cp.float16)
        pool[:, :, : self.capacity] = self.pool
        self.pool = pool

    # ---- moving KV between the device and host memory (the store's block form) ----

    def snapshot(self, start: int, n: int) -> Any:
        """Positions [start, start+n) as a device copy (L, 1, n, 1, W) on the current stream."""
        if start + n > self.length:
            raise ValueError(f"cannot read positions up to {start + n} of {self.length}")
        return _cu._cupy().ascontiguousarray(self.pool[:, :, start : start + n])

    def read_span(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        dev = self.snapshot(start, n)
        if out is None:
            out = _cu.pinned_empty(dev.shape, np.float16)
        dev.get(out=out)
        return out

    def write_span(self, start: int, block: np.ndarray) -> None:
        cp = _cu._cupy()
        n = block.shape[2]
        self.grow(start + n)
        self.pool[:, :, start : start + n] = cp.asarray(block, dtype=cp.float16)
        self.length = max(self.length, start + n)
        cp.cuda.get_current_stream().synchronize()  # ``block`` may be reused on return (CudaKV.write_span)

    def export(self, n: int) -> list[np.ndarray]:
        return list(self.read_span(0, n).astype(np.float32))

    def import_(self, layers: Sequence[np.ndarray]) -> None:
        self.write_span(0, np.stack(layers))
        self.length = layers[0].shape[1]


@dataclass
class CudaExperts:
    """One MoE layer's expert stacks on the device: ``gate_up`` is expert 0's fused [gate; up]
    rows (the others follow ``gu_stride`` bytes apart), ``down`` expert 0's down rows."""

    gate_up: Any  # QMatrix over (2 * n_ff, n_embd) of expert 0
    down: Any  # QMatrix over (n_embd, n_ff) of expert 0
    gu_stride: int
    down_stride: int
    gu_all: Any  # (n_expert, 2 * n_ff, row_bytes) uint8
    down_all: Any  # (n_expert, n_embd, row_bytes) uint8

    @property
    def n_ff(self) -> int:
        return self.gate_up.rows // 2

    def expert(self, e: int) -> tuple[Any, Any]:
        """(gate_up, down) CudaLinears of expert ``e`` (views, no copy)."""
        q = _cu.QMatrix
        return (_cu.CudaLinear([q(self.gate_up.qtype, self.gate_up.rows, self.gate_up.cols, self.gu_all[e])]),
                _cu.CudaLinear([q(self.down.qtype, self.down.rows, self.down.cols, self.down_all[e])]))  # fmt: skip


def _expert_blocks(tensors: Sequence[WeightTensor]) -> tuple[int, np.ndarray]:
    """(qtype, uint8 (n_expert, rows, row_bytes)) of expert stacks concatenated along rows."""
    qts = {int(t.qtype) for t in tensors}
    native = len(qts) == 1 and next(iter(qts)) in _cu.NATIVE_QTYPES
    parts = []
    for t in tensors:
        if native:
            raw = np.ascontiguousarray(t.raw).view(np.uint8)
        else:
            raw = np.ascontiguousarray(t.dequantize(np.float16)).view(np.uint8)
        parts.append(raw.reshape(t.shape[0], t.shape[1], -1))
    blocks = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    return (next(iter(qts)) if native else _cu.F16), blocks


class MLAOps:
    """The deepseek2 ops of ``CudaOps`` (a mixin: ``self`` is the CudaOps)."""

    cp: Any
    n_sm: int
    kv_dtype: str

    def new_kv(self, spec: ModelSpec, capacity: int) -> Any:
        if getattr(spec, "mla", None) is not None:
            return CudaLatentKV(spec, capacity)
        return _cu.CudaKV(spec, capacity, dtype=self.kv_dtype)

    def prepare_heads(self, w: np.ndarray) -> Any:
        """Per-head matrices (H, out, in) for ``head_matmul``, fp32 on the device."""
        return self.cp.asarray(np.ascontiguousarray(w, dtype=np.float32))

    def prepare_experts(self, gate_up: Sequence[WeightTensor], down: WeightTensor) -> CudaExperts:
        cp = self.cp
        qt, gu = _expert_blocks(gate_up)
        qd, dn = _expert_blocks([down])
        gu_dev, dn_dev = cp.asarray(gu), cp.asarray(dn)
        n_ff2, n_embd = gu.shape[1], gate_up[0].shape[2]
        return CudaExperts(
            _cu.QMatrix(qt, n_ff2, n_embd, gu_dev[0]), _cu.QMatrix(qd, dn.shape[1], down.shape[2], dn_dev[0]),
            gu.shape[1] * gu.shape[2], dn.shape[1] * dn.shape[2], gu_dev, dn_dev,
        )  # fmt: skip

    def head_matmul(self, x: Any, w: Any) -> Any:
        """Per-head projection: x (T, H, in) with w (H, out, in) -> (T, H, out)."""
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        t, h, n_in = x.shape
        n_out = w.shape[1]
        if t <= _cu.GEMV_MAX_T and n_in <= 2048:
            y = cp.empty((t, h, n_out), cp.float32)
            _cu._kernel("head_gemv")(
                (t * h, _cu._cdiv(n_out, 8)), (256,),
                (x, _I64(h * n_in), _I64(n_in), w, _I32(h), _I32(n_out), _I32(n_in), y),
            )  # fmt: skip
            return y
        y = cp.matmul(x.transpose(1, 0, 2), w.transpose(0, 2, 1))  # (H, T, out)
        return cp.ascontiguousarray(y.transpose(1, 0, 2))

    def mla_splits(self, n: int) -> int:
        """Context slices of MLA decode for ``n`` positions (fixed in graphs)."""
        return max(1, min(_cu._cdiv(n, 64), 2 * self.n_sm, 1024))

    def mla_decode_supported(self, spec: ModelSpec) -> bool:
        m = spec.mla
        return m is not None and (m.kv_lora_rank, m.qk_rope_dim) in MLA_SHAPES

    def mla_attend_decode(self, q_lat: Any, q_pe: Any, kv: CudaLatentKV, layer: int, po: Any, pml: Any,
                          out: Any, nsplit: int, scale: float, rope_scale: float, *, n_host: int = 0,
                          pos_dev: Any = None) -> None:  # fmt: skip
        """One query's MLA over the first n positions (n_host, or ``*pos_dev + 1`` read on the
        device) into out (H, R): split over the context, then merged (attn_combine)."""
        h, m = kv.spec.n_heads, kv.spec.mla
        _cu._kernel(f"mla_attn_split<{m.kv_lora_rank},{m.qk_rope_dim}>")(
            (nsplit, _cu._cdiv(h, 16)), (256,),
            (q_lat, q_pe, _I32(h), kv.pool, _I32(layer), _I32(kv.capacity), _I32(n_host),
             _cu._as_ptr(pos_dev), _F32(scale), _F32(rope_scale), po, pml, _I32(nsplit)),
        )  # fmt: skip
        _cu._kernel("attn_combine")((h,), (256,), (po, pml, out, _I32(kv.rank), _I32(nsplit)))

    def latent_attention(self, q_lat: Any, q_pe: Any, kv: CudaLatentKV, layer: int, pos0: int,
                         scale: float, rope_scale: float) -> Any:  # fmt: skip
        """Causal MLA over the latent cache -> (T, H, R), still compressed (see NumpyOps)."""
        cp = self.cp
        q_lat = cp.ascontiguousarray(q_lat, dtype=cp.float32)
        q_pe = cp.ascontiguousarray(q_pe, dtype=cp.float32)
        t, h, r = q_lat.shape
        n = pos0 + t
        if t == 1 and self.mla_decode_supported(kv.spec):
            nsplit = self.mla_splits(n)
            po = cp.empty((h, nsplit, r), cp.float32)
            pml = cp.empty((h, nsplit, 2), cp.float32)
            out = cp.empty((1, h, r), cp.float32)
            self.mla_attend_decode(q_lat, q_pe, kv, layer, po, pml, out, nsplit, scale, rope_scale,
                                   n_host=n)  # fmt: skip
            return out
        rows = kv.pool[layer, 0, :n, 0]
        lat = rows[:, :r].astype(cp.float32)  # (n, R)
        kpe = rows[:, r:].astype(cp.float32)  # (n, P)
        out = cp.empty((t, h, r), cp.float32)
        step = max(1, (1 << 26) // max(1, h * n))  # queries per slice: scores stay ~256 MB
        keys = cp.arange(n)
        for a in range(0, t, step):
            b = min(t, a + step)
            s = q_lat[a:b].reshape(-1, r) @ lat.T
            s += rope_scale * (q_pe[a:b].reshape((b - a) * h, -1) @ kpe.T)
            s *= scale
            s = s.reshape(b - a, h, n)
            future = keys[None, :] > (pos0 + cp.arange(a, b))[:, None]  # (b - a, n)
            s = cp.where(future[:, None, :], cp.float32(-cp.inf), s)
            s -= s.max(axis=-1, keepdims=True)
            cp.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            out[a:b] = (s.reshape(-1, n) @ lat).reshape(b - a, h, r)
        return out

    def moe(self, x: Any, experts: CudaExperts, ids: np.ndarray, weights: np.ndarray) -> Any:
        """Sum over each token's experts ids (T, k) of weight * down(swiglu(gate_up(x))),
        reading only the selected experts' matrices (see NumpyOps.moe)."""
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        t, k = ids.shape
        n_embd, ff = experts.down.rows, experts.n_ff
        out = cp.zeros((t, n_embd), cp.float32)
        if t == 1:  # the decode shape: the device-routed kernels, with host-chosen ids
            eids = cp.asarray(np.ascontiguousarray(ids[0], dtype=np.int32))
            ew = cp.asarray(np.ascontiguousarray(weights[0], dtype=np.float32))
            h = cp.empty((k, ff), cp.float32)
            y = cp.empty((k, n_embd), cp.float32)
            self.moe_decode(x, experts, eids, ew, h, y, out)
            return out
        for e in np.unique(ids):
            rows, slot = np.nonzero(ids == e)
            gate_up, down = experts.expert(int(e))
            sel = cp.asarray(rows)
            hid = self.swiglu(self.matmul(x[sel], gate_up))
            w = cp.asarray(np.ascontiguousarray(weights[rows, slot], dtype=np.float32))
            out[sel] += w[:, None] * self.matmul(hid, down)
        return out

    def moe_decode(self, x: Any, experts: CudaExperts, eids: Any, ew: Any, h: Any, y: Any, out: Any,
                   *, norm: Any = None, eps: float = 0.0) -> None:  # fmt: skip
        """out += sum_s ew[s] * down_s(swiglu(gate_up_s(x))) over the k experts ``eids`` (on
        the device); x is RMS-normalised with ``norm`` first when given."""
        k = int(eids.size)
        ff, n_embd = experts.n_ff, experts.down.rows
        self.gemv(experts.gate_up, x, h, t=k, y_stride=ff, mode=2, norm=norm, eps=eps, x_stride=0,
                  eids=eids, e_stride=experts.gu_stride)  # fmt: skip
        self.gemv(experts.down, h, y, t=k, y_stride=n_embd, x_stride=ff, eids=eids,
                  e_stride=experts.down_stride)  # fmt: skip
        _cu._kernel("moe_combine")((_cu._cdiv(n_embd, 256),), (256,), (out, y, ew, _I32(k), _I32(n_embd)))
