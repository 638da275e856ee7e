"""CuPy ops: the CUDA backend of the transformer in model.py, plus a CUDA-graph decode step.

Job: implement the ops interface (``model.Ops``) on an NVIDIA GPU reading GGUF weight blocks
in place, and offer a one-graph-per-token decode path. CUDA C lives in ``kernels/*.cu``
(compiled once per process through ``cupy.RawModule``; CuPy caches the binaries on disk).

API for the engine:
- ``select_ops(device)``: ``"cpu"`` -> ``NumpyOps``; ``"cuda"`` -> ``CudaOps`` or
  ``DeviceUnavailable``; ``"auto"`` -> ``CudaOps`` when CuPy and a GPU are there, else
  ``NumpyOps``. Importing this module never imports CuPy; ``CudaOps()`` does.
- ``Transformer(model, CudaOps(), chunk=2048)`` runs as on the CPU (prefill, all logits).
- ``cuda_graph.CudaDecoder(transformer, kv)``: the decode step as one CUDA graph with
  on-device sampling (the engine's Decoder on CUDA).
- ``CudaKV`` (from ``ops.new_kv``): paged pool ``(n_blocks, n_layers, 2, block_size,
  n_kv_heads, row)`` with a block table, fp16 rows of head_dim or (``kv_dtype="q8_0"``)
  GGUF Q8_0 rows of head_dim / 32 * 34 bytes, the CPU's and the checkpoints' bytes; a block
  is one contiguous copy, in ``kv.KVLayout``'s block form. ``read_span(start, n)`` /
  ``write_span(start, block)`` move positions ``(n_layers, 2, n, n_kv_heads, row)`` through
  pinned host memory
  (what ``kv.read_span``/``write_span`` call); ``export_blocks(ids)`` / ``import_blocks(ids,
  host)`` move whole logical blocks ``(len(ids), n_layers, 2, block_size, kvh, hd)``;
  ``export(n)`` / ``import_(layers)`` match ``DenseKV`` (float32 per layer; a q8_0 pool its
  Q8_0 bytes, as the CPU's ``Q8KV``).

Invariants:
- Activations are float32 (T, features); KV is float16 or q8_0 (written by kv_store_q8 and
  rope_kv_decode_q8, read dequantized); accumulation is float32.
- Decode attention is flash-decoding over context slices, merged in the same kernel by the
  last block of each KV head to finish (attn_merge_last; MLA keeps attn_combine): attn_tc
  (tensor cores, mma.sync via inline PTX, K and V streamed by cp.async) for fp16 KV of head
  dim 64/128/256, attn_split (CUDA cores) for q8_0 and other head dims.
- Weights stay GGUF blocks on the device (Q4_0, Q4_1, Q8_0, Q2_K, Q4_K, Q5_K, Q6_K, F16, BF16,
  F32). Other types the loader accepts (Q5_0, Q5_1, Q3_K) are uploaded as F16.
- T <= 8 tokens: quantized GEMV. For Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K matrices of at
  least 4 MiB the activations are first quantized to int8 per 32 (``quant_x``, RMSNorm fused) and the GEMV runs on integer
  dot products (``gemv_q8``, kernels/gemv_q8.cu), as llama.cpp's Q8_1 activations (in the
  decode graph, decode attention and the SwiGLU GEMV write the next GEMV's int8 input
  themselves, the bytes quant_x would, when ``CudaOps.fuse_quant_attn`` / ``fuse_quant_ffn``); other
  types, MoE expert GEMVs and ``CudaOps(int8_activations=False)`` use the fp32 GEMV. Longer: each matrix is dequantized to an fp16 scratch and
  multiplied by cuBLAS (fp32 accumulate); attention runs as two batched GEMMs per chunk
  (scores chunk x context in fp32, probabilities fp16), never T x T for a whole prompt.
- The decode graph uses only our kernels (CuPy refuses cuBLAS inside capture); every
  buffer it touches is owned by the decoder, and the position lives in device memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from agentcore.engine.backends.cuda_mla import MLA_SHAPES, MLAOps
from agentcore.engine.backends.launch import Kernel, pdl_supported
from agentcore.engine.model.gguf import ModelSpec, WeightTensor
from agentcore.errors import DeviceUnavailable

__all__ = ["CudaKV", "CudaOps", "cuda_available", "select_ops"]

KERNELS = Path(__file__).parent / "kernels"
# GGML type ids read in place by the kernels; the rest of SUPPORTED_QTYPES go up as F16.
NATIVE_QTYPES = (0, 1, 2, 3, 8, 10, 12, 13, 14, 30)
# Read by gemv_q8 on int8 activations: Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, with the
# alignment each type's loads need (16-byte words for Q4_K/Q5_K; Q6_K, Q8_0 and Q4_0 blocks
# start at even addresses and are realigned in registers).
INT8_ALIGN = {2: 2, 3: 4, 8: 2, 12: 16, 13: 16, 14: 2}
INT8_QTYPES = tuple(INT8_ALIGN)
# Columns x rows the ops' own int8 activation scratch holds (never reallocated).
_XQ_SCRATCH = 65536 * 8
F16 = 1
GEMV_MAX_T = 8
# gemv_q8_n's batch widths: t <= GEMV_MAX_T rows of x in one launch, each weight read once.
GEMV_N = (4, 8)
HEAD_DIMS = (16, 32, 64, 128, 256)
KV_DTYPES = ("float16", "q8_0")
Q8_HEAD_DIMS = (64, 128, 256)  # q8_0 rows of 68, 136, 272 bytes: 4-byte aligned for attn_split
ATTN_GROUPS = (1, 2, 4, 8)  # attn_split is compiled for up to this many query heads per KV head
# attn_tc (tensor-core flash-decoding, kernels/ops.cu) covers these head dims, up to 8 query
# heads per KV head, splits of at most ATTN_TC_SPLIT positions read ATTN_TP at a time.
TC_HEAD_DIMS = (64, 128, 256)
PREFILL_TC_HEAD_DIMS = (64, 128)  # attn_prefill_tc: flash attention for chunks of T > 1
ATTN_TC_SPLIT, ATTN_TP = 512, 64
QUANT_X_THREADS = 256  # kernels/gemv_q8.cu: a quant_x block quantizes 4 x this many columns
_U64 = np.uint64
_I32 = np.int32
_F32 = np.float32


def _cupy() -> Any:
    import cupy

    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        cp = _cupy()
        return cp.cuda.runtime.getDeviceCount() > 0
    except (ImportError, RuntimeError):  # no CuPy, or no driver / device
        return False


def select_ops(device: str = "auto") -> Any:
    """The ops backend for ``device`` ("auto", "cuda" or "cpu")."""
    from agentcore.engine.backends.cpu import NumpyOps

    if device == "cpu":
        return NumpyOps()
    if device not in ("auto", "cuda"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', not {device!r}")
    if cuda_available():
        return CudaOps()
    if device == "auto":
        return NumpyOps()
    raise DeviceUnavailable(
        "device='cuda' needs CuPy and an NVIDIA GPU, and none was found; install the CUDA "
        "extra matching your driver (pip install 'agentcore[cuda12]' or 'agentcore[cuda13]'), "
        "or use device='cpu'"
    )


KERNEL_FILES = ("quant.cu", "gemv_q8.cu", "ops.cu", "sample.cu", "mla.cu")
# The kernels compiled apart, on first use: gemv_q8_n (CudaOps.multi_token_gemv, off by
# default) would add 12 of a cold start's 37 s of NVRTC to every engine (sm_90, measured here).
BATCHED_FILES = ("quant.cu", "gemv_q8.cu")
KERNEL_MODULES = ("main", "batched")
NVRTC_OPTIONS = ("-std=c++17",)


def kernel_source(module: str = "main") -> str:
    """The CUDA C of one module's kernels, one translation unit (what ``_module`` compiles)."""
    files = BATCHED_FILES if module == "batched" else KERNEL_FILES
    return "\n".join((KERNELS / f).read_text() for f in files)


def kernel_names(module: str = "main") -> list[str]:
    """Every kernel instantiation of ``module`` the ops launch (its name expressions)."""
    if module == "batched":
        return [f"gemv_q8_n<{q},{m},{n}>" for q in INT8_QTYPES for m in (0, 1, 2) for n in GEMV_N]
    names = [f"gemv<{q},{m}>" for q in NATIVE_QTYPES for m in (0, 1, 2)]
    names += [f"gemv_q8<{q},{m}>" for q in INT8_QTYPES for m in (0, 1, 2)]
    names += [f"gemv_q8_swq<{q}>" for q in INT8_QTYPES]
    names += [f"dequant_f16<{q}>" for q in NATIVE_QTYPES]
    names += [f"embed<{q}>" for q in NATIVE_QTYPES]
    names += [f"attn_split<{d},{g},0>" for d in HEAD_DIMS for g in ATTN_GROUPS]
    names += [f"attn_split<{d},{g},1>" for d in Q8_HEAD_DIMS for g in ATTN_GROUPS]
    names += [f"attn_tc<{d},{q8}>" for d in TC_HEAD_DIMS for q8 in (0, 1)]
    names += [f"attn_tq8<{d}>" for d in TC_HEAD_DIMS]
    names += [f"attn_prefill_tc<{d},{q8}>" for d in PREFILL_TC_HEAD_DIMS for q8 in (0, 1)]
    names += [f"mla_attn_split<{r},{p}>" for r, p in MLA_SHAPES]
    return names


@cache
def _module(module: str = "main") -> Any:
    return _cupy().RawModule(code=kernel_source(module), options=NVRTC_OPTIONS,
                             name_expressions=kernel_names(module))  # fmt: skip


@cache
def _kernel(name: str) -> Kernel:
    module = "batched" if name.startswith("gemv_q8_n<") else "main"
    return Kernel(_module(module).get_function(name), name, _cupy())


def _ptr(a: Any) -> np.uint64:
    return _U64(0 if a is None else a.data.ptr)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------- weights


@dataclass
class QMatrix:
    """Rows of GGUF blocks on the device: ``data`` is uint8 (rows, row_bytes)."""

    qtype: int
    rows: int
    cols: int
    data: Any

    @property
    def row_bytes(self) -> int:
        return self.data.shape[1]


class ActQ8:
    """Activations quantized for ``gemv_q8``: ``rows`` rows of ``cols`` int8 (``q``) and a
    (d, sum) float pair per 32 (``s``), what ``quant_x`` writes. A decoder owns one so its
    graph never touches the ops' scratch."""

    def __init__(self, cp: Any, cols: int, rows: int = 1) -> None:
        self.capacity = cols * rows
        self.q = cp.empty(self.capacity, cp.int8)
        self.s = cp.empty(self.capacity // 16, cp.float32)


@dataclass
class CudaLinear:
    """A projection whose output rows are its parts' rows in order (fused Q/K/V, gate/up)."""

    parts: list[QMatrix]
    bias: Any = None
    w16: Any = None  # the prefill GEMMs' fp16 copy, when the ops keep it resident (CudaOps.f16_weights)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def cols(self) -> int:
        return self.parts[0].cols


def _host_blocks(t: WeightTensor) -> tuple[int, np.ndarray]:
    """(qtype id, uint8 rows) of a matrix as the kernels read it."""
    qt = int(t.qtype)
    if qt not in NATIVE_QTYPES:
        return F16, t.dequantize(np.float16).view(np.uint8).reshape(t.shape[0], -1)
    raw = np.ascontiguousarray(t.raw)
    return qt, raw.view(np.uint8).reshape(t.shape[0], -1)


def _upload_matrices(tensors: Sequence[WeightTensor]) -> list[QMatrix]:
    cp = _cupy()
    host = [_host_blocks(t) for t in tensors]
    parts: list[QMatrix] = []
    i = 0
    while i < len(host):  # stack consecutive matrices of one type: one launch for them all
        j = i
        while j + 1 < len(host) and host[j + 1][0] == host[i][0]:
            j += 1
        rows = np.concatenate([h[1] for h in host[i : j + 1]]) if j > i else host[i][1]
        parts.append(QMatrix(host[i][0], rows.shape[0], tensors[i].shape[1], cp.asarray(rows)))
        i = j + 1
    return parts


class CudaRope:
    """cos/sin tables (positions, head_dim // 2) float32 on the device, grown on demand."""

    def __init__(self, inv_freq: np.ndarray, neox: bool, positions: int, magnitude: float = 1.0) -> None:
        self.inv_freq = np.asarray(inv_freq, dtype=np.float64)
        self.neox = neox
        self.magnitude = float(magnitude)
        self.cos = self.sin = None
        self.positions = 0
        self.ensure(positions)

    def ensure(self, positions: int) -> None:
        if positions <= self.positions:
            return
        cp = _cupy()
        n = max(positions, 2 * self.positions)
        angles = np.outer(np.arange(n, dtype=np.float64), self.inv_freq)
        self.cos = cp.asarray((self.magnitude * np.cos(angles)).astype(np.float32))
        self.sin = cp.asarray((self.magnitude * np.sin(angles)).astype(np.float32))
        self.positions = n


# ---------------------------------------------------------------------------- KV cache


def pinned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A host array in page-locked memory (async, full-bandwidth copies to and from the GPU)."""
    cp = _cupy()
    count = int(np.prod(shape))
    mem = cp.cuda.alloc_pinned_memory(max(1, count * np.dtype(dtype).itemsize))
    return np.frombuffer(mem, dtype, count).reshape(shape)


def host_pinned(a: np.ndarray) -> bool:
    """Whether the host array ``a`` lies in page-locked memory (CUDA's pointer attributes)."""
    cp = _cupy()
    try:
        attrs = cp.cuda.runtime.pointerGetAttributes(a.ctypes.data)
    except cp.cuda.runtime.CUDARuntimeError:
        return False
    return attrs.type == cp.cuda.runtime.memoryTypeHost


def check_kv_dtype(spec: ModelSpec, dtype: str) -> None:
    """ValueError unless a CUDA KV of ``spec`` can hold ``dtype`` (LocalEngine checks at
    construction, before any KV exists)."""
    if dtype not in KV_DTYPES:
        raise ValueError(f"CUDA KV dtype must be one of {KV_DTYPES}, not {dtype!r}")
    if dtype == "q8_0" and spec.head_dim not in Q8_HEAD_DIMS:
        raise ValueError(f"kv_dtype='q8_0' on CUDA needs head_dim in {Q8_HEAD_DIMS}, "
                         f"not {spec.head_dim}")  # fmt: skip


class CudaKV:
    """Paged KV of one sequence: pool (n_blocks, L, 2, BS, KVH, row) and a block table.

    ``dtype`` "float16": a row is head_dim halves. "q8_0": a row is head_dim / 32 GGUF Q8_0
    blocks (an fp16 scale, then 32 int8; 34 bytes per 32 values), the bytes the CPU's
    ``Q8KV`` and every checkpoint hold, so blocks move between devices and files unchanged.
    Logical block b (positions [b*BS, (b+1)*BS)) lives in physical block ``table[b]``.
    ``length`` counts valid positions (``Transformer.forward`` sets it).
    """

    def __init__(self, spec: ModelSpec, capacity: int, block_size: int = 64,
                 dtype: str = "float16") -> None:  # fmt: skip
        cp = _cupy()
        check_kv_dtype(spec, dtype)
        self.spec = spec
        self.dtype = dtype
        self.block_size = block_size
        self.q8 = dtype == "q8_0"
        self.row_width = spec.head_dim // 32 * 34 if self.q8 else spec.head_dim
        self.np_dtype = np.dtype(np.uint8 if self.q8 else np.float16)
        n = max(1, _cdiv(capacity, block_size))
        self.pool = cp.zeros((n, spec.n_layers, 2, block_size, spec.n_kv_heads, self.row_width),
                             self.np_dtype)  # fmt: skip
        self.table = cp.arange(n, dtype=cp.int32)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.pool.shape[0] * self.block_size

    @property
    def nbytes(self) -> int:
        return int(self.pool.nbytes)

    def store(self, layer: int, pos0: int, k: Any, v: Any) -> None:
        """Write K/V (T, n_kv_heads, head_dim) at positions [pos0, pos0 + T)."""
        cp = _cupy()
        t = k.shape[0]
        self.grow(pos0 + t)
        k = cp.ascontiguousarray(k, dtype=cp.float32)
        v = cp.ascontiguousarray(v, dtype=cp.float32)
        s = self.spec
        n = t * s.n_kv_heads * s.head_dim
        _kernel("kv_store_q8" if self.q8 else "kv_store")(
            (_cdiv(n, 256),), (256,),
            (k, v, self.pool, self.table, _I32(layer), _I32(s.n_layers), _I32(self.block_size),
             _I32(s.n_kv_heads), _I32(s.head_dim), _I32(t), _I32(pos0), _U64(0)),
        )  # fmt: skip

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a KV cache of {self.length} tokens to {n}")
        self.length = n

    def grow(self, min_capacity: int) -> None:
        """Reallocate to at least ``min_capacity`` positions (doubling); keeps every slot."""
        if min_capacity <= self.capacity:
            return
        cp = _cupy()
        old = self.pool.shape[0]
        n = max(_cdiv(min_capacity, self.block_size), 2 * old)
        pool = cp.zeros((n, *self.pool.shape[1:]), self.np_dtype)
        pool[:old] = self.pool[self.table]  # logical order from now on
        self.pool, self.table = pool, cp.arange(n, dtype=cp.int32)

    # ---- moving KV between the device and host memory ----

    def _span_view(self, start: int, n: int) -> tuple[Any, int]:
        """Logical blocks covering [start, start+n) as (L, 2, positions, KVH, D) + offset."""
        bs = self.block_size
        b0, b1 = start // bs, _cdiv(start + n, bs)
        blocks = self.pool[self.table[b0:b1]]  # (nb, L, 2, BS, KVH, D), a gathered copy
        s = blocks.shape
        span = blocks.transpose(1, 2, 0, 3, 4, 5).reshape(s[1], s[2], s[0] * bs, s[4], s[5])
        return span, start - b0 * bs

    def snapshot(self, start: int, n: int) -> Any:
        """Positions [start, start+n) of every layer as a device copy (L, 2, n, KVH, row) in
        the pool's dtype, queued on the current stream: later writes to the cache do not
        change it."""
        cp = _cupy()
        if start + n > self.length:
            raise ValueError(f"cannot read positions up to {start + n} of {self.length}")
        span, off = self._span_view(start, n)
        return cp.ascontiguousarray(span[:, :, off : off + n])

    def read_span(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Positions [start, start+n) of every layer: host (L, 2, n, KVH, row), float16 or
        q8_0 bytes (uint8)."""
        dev = self.snapshot(start, n)
        if out is None:
            out = pinned_empty(dev.shape, self.np_dtype)
        dev.get(out=out)
        return out

    def write_span(self, start: int, block: np.ndarray) -> None:
        """Write ``read_span``'s output back at positions [start, start+len)."""
        cp = _cupy()
        self._check_rows(block)
        n = block.shape[2]
        self.grow(start + n)
        bs = self.block_size
        b0, b1 = start // bs, _cdiv(start + n, bs)
        ids = self.table[b0:b1]
        blocks = self.pool[ids]
        nb = b1 - b0
        span = blocks.transpose(1, 2, 0, 3, 4, 5).reshape(
            blocks.shape[1], 2, nb * bs, *blocks.shape[4:]
        )
        off = start - b0 * bs
        span[:, :, off : off + n] = cp.asarray(block, dtype=self.np_dtype)
        self.pool[ids] = span.reshape(blocks.shape[1], 2, nb, bs, *blocks.shape[4:]).transpose(
            2, 0, 1, 3, 4, 5
        )
        self.length = max(self.length, start + n)
        # The caller may reuse ``block`` once this returns (the store reads the next disk block
        # into it): the copy from it must have finished. Restored bytes differed from the
        # checkpointed ones under concurrent GPU load (test_gpu_deepseek2, 8 xdist workers)
        # while the host-to-device copy was still in flight.
        cp.cuda.get_current_stream().synchronize()

    def export_blocks(self, block_ids: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """Logical blocks as one pinned host array (len, L, 2, BS, KVH, row) of the pool's dtype."""
        cp = _cupy()
        ids = cp.asarray(np.asarray(block_ids, np.int64))
        dev = self.pool[self.table[ids]]
        if out is None:
            out = pinned_empty(dev.shape, self.np_dtype)
        dev.get(out=out)
        return out

    def import_blocks(self, block_ids: Sequence[int], host: np.ndarray, stream: Any = None) -> None:
        """Write ``export_blocks``' layout into logical blocks (one async copy a run of blocks
        when the blocks are contiguous in the pool; ``host`` should be pinned for full speed).
        The caller sets ``length``. Completes before return unless a ``stream`` is given."""
        cp = _cupy()
        self._check_rows(host)
        ids = [int(b) for b in block_ids]
        self.grow((max(ids) + 1) * self.block_size)
        phys = cp.asnumpy(self.table)[ids]
        given = stream is not None
        stream = stream or cp.cuda.get_current_stream()
        per_block = int(np.prod(self.pool.shape[1:])) * self.np_dtype.itemsize
        src = np.ascontiguousarray(host, dtype=self.np_dtype)
        i = 0
        while i < len(ids):
            j = i
            while j + 1 < len(ids) and phys[j + 1] == phys[j] + 1:
                j += 1
            dst = self.pool.data.ptr + int(phys[i]) * per_block
            cp.cuda.runtime.memcpyAsync(
                dst, src.ctypes.data + i * per_block, (j - i + 1) * per_block,
                cp.cuda.runtime.memcpyHostToDevice, stream.ptr,
            )  # fmt: skip
            i = j + 1
        if not given:
            stream.synchronize()

    def export(self, n: int) -> list[np.ndarray]:
        """Like ``DenseKV.export``: per layer a (2, n, KVH, D) host array, float32 (fp16
        pool) or the Q8_0 bytes (2, n, KVH, row) as the CPU's ``Q8KV`` exports them."""
        span = self.read_span(0, n)
        return list(span if self.q8 else span.astype(np.float32))

    def import_(self, layers: Sequence[np.ndarray]) -> None:
        """Replace the contents with ``export``'s output; ``length`` becomes its token count."""
        self.write_span(0, np.stack(layers))
        self.length = layers[0].shape[1]

    def _check_rows(self, a: Any) -> None:
        """KV rows handed in must be this pool's: a q8_0 pool takes its uint8 bytes only (a
        cast of float rows would be garbage), an fp16 one any float rows of head_dim."""
        dt = np.dtype(a.dtype)
        ok = dt == np.uint8 if self.q8 else dt.kind == "f"
        if not ok or a.shape[-1] != self.row_width:
            raise ValueError(f"KV rows of dtype {dt} and width {a.shape[-1]} do not fit a {self.dtype} "
                             f"pool of {self.row_width}-wide {self.np_dtype} rows")  # fmt: skip


# ---------------------------------------------------------------------------- ops


class CudaOps(MLAOps):
    """The ops interface on CuPy (see ``model.Ops``); arrays are cupy float32. The deepseek2
    ops (latent cache, MLA, MoE) come from ``cuda_mla.MLAOps``."""

    kv_dtype = "float16"  # or "q8_0" (LocalEngine's kv_dtype): the pool's; part of every block's identity
    prefill_chunk = 2048  # tokens per prefill chunk: GEMMs big enough for the tensor cores
    flash_prefill_chunk = 8192  # where prefill attention is flash attention (prefill_chunk_for)

    dtype = np.float32

    def __init__(self, *, int8_activations: bool = True, int8_min_bytes: int = 4 << 20,
                 tc_attention: bool | None = None, q8_in_place: bool = True,
                 pdl: bool | None = None, f16_weights: bool | int | None = None) -> None:  # fmt: skip
        """``int8_activations``: run the decode GEMVs of Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K weights
        of at least ``int8_min_bytes`` on int8 activations (dp4a; the default, as llama.cpp
        does); False keeps them fp32. Below the size the extra ``quant_x`` launch costs more
        than the integer kernel saves (SmolLM2's 0.3-1 MB matrices: 2.6-3.6 us fp32 against
        3.3-4.4 us int8 on an H200; Llama-3-8B's 9-300 MB ones: 1.3-1.8x faster int8).
        ``tc_attention``: decode attention on tensor cores for head_dim 64, 128 and 256; False
        (and other head dims) the CUDA-core ``attn_split``; None (default) tensor cores, but
        attn_split on q8_0 with head_dim 64 when ``q8_in_place`` is False (see
        ``uses_tc_attention``).
        ``q8_in_place``: tensor-core decode attention over a q8_0 KV turns the int8 rows into
        mma fragments where they land (``attn_tq8``, the default); False converts each tile to
        fp16 in shared memory first (``attn_tc<D, 1>``).
        ``pdl``: the decode graph's kernels launch programmatically (each may start while
        the one before it finishes; ``launch.py``); None (default) where the GPU (sm_90+) and
        driver can, False never, True where they can.
        ``f16_weights``: a prefill (more than GEMV_MAX_T tokens) runs its GEMMs on fp16 copies
        of the weights. Kept resident, each matrix is dequantized once per process instead of
        once per forward: a short prefill of Llama-3-8B then reads 15 GB of weights instead
        of 34 (4.4 GB of GGUF blocks read, 15 GB of fp16 written and read back): the floor
        of its GEMMs, whatever the token count. None (default) keeps copies while they fit
        in a quarter of the device's memory and half of it stays free (an 8B model's 15 GB on
        an 80 GB card; what does not fit is dequantized per forward, as before), an int that
        many bytes, True without a limit, False never."""
        if not cuda_available():
            select_ops("cuda")  # raises DeviceUnavailable with the install hint
        cp = _cupy()
        self.cp = cp
        self.device_id = cp.cuda.Device().id
        self.n_sm = cp.cuda.Device().attributes["MultiProcessorCount"]
        self._scratch16 = cp.empty(0, cp.float16)
        self.int8_activations = int8_activations
        self.int8_min_bytes = int8_min_bytes
        self.tc_attention = tc_attention
        self.q8_in_place = q8_in_place
        self.pdl = pdl is not False and pdl_supported(cp)
        self._sem: Any = None  # attend_decode's split counters when the caller has none
        self._xq: ActQ8 | None = None
        self._f16_auto = f16_weights is None  # then: a quarter of the memory, while half stays free
        if f16_weights is None:
            self.f16_budget = cp.cuda.Device().mem_info[1] // 4
        elif isinstance(f16_weights, bool):
            self.f16_budget = 1 << 62 if f16_weights else 0
        elif int(f16_weights) >= 0:
            self.f16_budget = int(f16_weights)
        else:
            raise ValueError(f"f16_weights must be None, a bool or a byte count >= 0, not {f16_weights!r}")

    # attn_tc / attn_tq8 queue a split's first tiles before PDL_WAIT (every row but the newest
    # is older than the step); False queues them after it, as before (an A/B switch, read at
    # capture: bench/experiments/decode_ab.py).
    attn_early = True
    # The decode graph's attention (fuse_quant_attn) and SwiGLU GEMV (fuse_quant_ffn) quantize
    # their outputs for the GEMV after them (kernels/gemv_q8.cu quant_warp32: the bytes a
    # quant_x launch writes), a quant_x launch a layer fewer each; False (the default until
    # an A/B on the GPU shows a gain) launches quant_x as before (A/B switches, read at
    # capture: bench/experiments/decode_ab.py). With the SwiGLU GEMV's blocks counting and
    # fencing (d164091) both on made the 8B's token 12% slower on the H100; the SwiGLU form
    # now is gemv_q8_swq (each block quantizes its own 32 rows), not yet measured.
    fuse_quant_attn = False
    fuse_quant_ffn = False
    # t of 2..GEMV_MAX_T rows on int8 activations (a forced span, a prompt-lookup verify) in
    # one gemv_q8_n launch that reads each weight once, not gemv_q8's t reads; False (the
    # default until its GPU tests and an A/B have run: it was written without a GPU) launches
    # gemv_q8 with t rows as before.
    multi_token_gemv = False

    def prefill_chunk_for(self, spec: ModelSpec) -> int:
        """Tokens per prefill chunk for ``spec``. Each chunk dequantizes every weight once to
        fp16 for its GEMMs, so the fewer chunks the better: with flash attention
        (``attn_prefill_tc``: head_dim 64/128, no T x context scores) a chunk is
        ``flash_prefill_chunk`` tokens (an 8K prompt in one pass; its largest activation,
        Llama-3-8B's fp32 gate/up output, is then 0.94 GB); the GEMM attention and MLA keep ``prefill_chunk``."""
        flash = spec.head_dim in PREFILL_TC_HEAD_DIMS and self.tc_attention is not False
        return self.flash_prefill_chunk if flash and spec.mla is None else self.prefill_chunk

    # ---- preparation ----

    def prepare_linear(
        self, weights: Sequence[WeightTensor], biases: Sequence[WeightTensor] | None = None
    ) -> CudaLinear:
        bias = None
        if biases:
            bias = self.cp.asarray(np.concatenate([b.dequantize(np.float32) for b in biases]))
        return CudaLinear(_upload_matrices(weights), bias)

    def prepare_vector(self, t: WeightTensor) -> Any:
        return self.cp.asarray(np.ascontiguousarray(t.dequantize(np.float32)))

    def prepare_embedding(self, t: WeightTensor) -> CudaLinear:
        return CudaLinear(_upload_matrices([t]))

    def tied_linear(self, embedding: CudaLinear) -> CudaLinear:
        return embedding

    def prepare_rope(self, inv_freq: np.ndarray, neox: bool, max_positions: int, *,
                     magnitude: float = 1.0) -> CudaRope:  # fmt: skip
        return CudaRope(inv_freq, neox, max_positions, magnitude)

    def compute(self) -> Any:
        """Entered around each forward: makes this ops' GPU the current device."""
        return self.cp.cuda.Device(self.device_id)

    # ---- kernels, callable from the graph capture too ----

    def int8_ready(self, part: QMatrix) -> bool:
        """Whether ``gemv`` multiplies ``part`` on int8 activations (``gemv_q8``)."""
        a = INT8_ALIGN.get(part.qtype)
        return (self.int8_activations and a is not None and part.cols % 32 == 0
                and part.data.nbytes >= self.int8_min_bytes
                and part.data.data.ptr % a == 0 and part.row_bytes % a == 0)  # fmt: skip

    def quantize(self, x: Any, cols: int, *, t: int = 1, norm: Any = None, eps: float = 0.0,
                 x_stride: int | None = None, out: ActQ8 | None = None) -> ActQ8:  # fmt: skip
        """t rows of x (``x_stride`` floats apart, default ``cols``; RMS-normalised with
        ``norm`` first when given) as int8 activations, into ``out`` or the ops' scratch."""
        if cols % 32 or not _float4_rows(x, cols if x_stride is None else x_stride):
            raise ValueError(f"int8 activations need a multiple of 32 columns and 16-byte aligned "
                             f"rows (quant_x reads float4s), not {cols} columns at {int(_as_ptr(x))}")  # fmt: skip
        if out is None:
            if t * cols <= _XQ_SCRATCH:
                if self._xq is None:
                    self._xq = ActQ8(self.cp, _XQ_SCRATCH)
                out = self._xq
            else:
                out = ActQ8(self.cp, cols, t)
        if out.capacity < t * cols:
            raise ValueError(f"int8 activation buffer holds {out.capacity} values, not {t * cols}")
        _kernel("quant_x")(
            (t, _cdiv(cols, 4 * QUANT_X_THREADS)), (QUANT_X_THREADS,),
            (_as_ptr(x), np.int64(cols if x_stride is None else x_stride), _I32(cols),
             _as_ptr(norm), _F32(eps), out.q, out.s),
        )  # fmt: skip
        return out

    def quantize_for(self, parts: Sequence[QMatrix], x: Any, **kw: Any) -> ActQ8 | None:
        """``quantize`` x once for all of ``parts`` when any of them reads int8 activations
        (and x's rows are float4-aligned; else None, and ``gemv`` keeps fp32)."""
        stride = kw.get("x_stride")
        if not any(self.int8_ready(p) for p in parts) or not _float4_rows(x, stride or parts[0].cols):
            return None
        return self.quantize(x, parts[0].cols, **kw)

    def gemv(self, part: QMatrix, x: Any, y: Any, *, t: int = 1, y_stride: int = 0,
             mode: int = 0, norm: Any = None, eps: float = 0.0, bias: Any = None,
             x_stride: int | None = None, eids: Any = None, e_stride: int = 0,
             xq: ActQ8 | None = None, scratch: ActQ8 | None = None,
             yq: ActQ8 | None = None) -> bool:  # fmt: skip
        """y (device pointer / array view) <- part @ x for t rows of x (``x_stride`` floats
        apart, default ``part.cols``; 0 broadcasts one x); with ``eids`` row i uses expert
        ``eids[i]``'s matrix, ``e_stride`` bytes after ``part``'s; see quant.cu gemv.

        When ``int8_ready(part)`` (and no experts, no broadcast x) the product runs on int8
        activations: ``xq`` if given (x already quantized, norm applied), else x quantized
        into ``scratch`` (a decoder's buffer) or the ops' own. There a SwiGLU product
        (``mode=2``) with ``yq`` also writes y quantized into ``yq``, the next GEMV's ``xq``,
        when its rows are a multiple of 32 (``gemv_q8_swq``). Returns whether it did."""
        rows = part.rows // 2 if mode == 2 else part.rows
        stride = part.cols if x_stride is None else x_stride
        usable = xq is not None or _float4_rows(x, stride)
        if eids is None and (stride or t == 1) and usable and self.int8_ready(part):
            if xq is None:
                xq = self.quantize(x, part.cols, t=t, norm=norm, eps=eps, x_stride=x_stride,
                                   out=scratch)  # fmt: skip
            if mode == 2 and yq is not None and rows % 32 == 0 and yq.capacity >= t * rows:
                _kernel(f"gemv_q8_swq<{part.qtype}>")(
                    (rows // 32, t), (256,),
                    (part.data, np.int64(part.row_bytes), xq.q, xq.s, _I32(part.cols), _as_ptr(y),
                     _I32(rows), np.int64(y_stride), _as_ptr(bias), yq.q, yq.s),
                )  # fmt: skip
                return True
            args = (part.data, np.int64(part.row_bytes), xq.q, xq.s, _I32(part.cols), _as_ptr(y),
                    _I32(rows), np.int64(y_stride), _as_ptr(bias))  # fmt: skip
            blocks = _cdiv(rows, 8 if mode == 2 else 16)
            if t > 1 and self.multi_token_gemv:
                n = next((n for n in GEMV_N if t <= n), GEMV_N[-1])
                _kernel(f"gemv_q8_n<{part.qtype},{mode},{n}>")((blocks, _cdiv(t, n)), (256,), (*args, _I32(t)))
                return False
            _kernel(f"gemv_q8<{part.qtype},{mode}>")((blocks, t), (256,), args)
            return False
        k = _kernel(f"gemv<{part.qtype},{mode}>")
        smem = (part.cols + part.cols // 32 * 4) * 4
        if smem > 48 * 1024 and k.max_dynamic_shared_size_bytes < smem:
            k.max_dynamic_shared_size_bytes = smem
        grid = _cdiv(rows, 8 if mode == 2 else 16)
        k((grid, t), (256,),
          (part.data, np.int64(part.row_bytes), _as_ptr(x), _I32(part.cols), _as_ptr(y),
           _I32(rows), np.int64(y_stride), _as_ptr(norm), _F32(eps), _as_ptr(bias),
           np.int64(part.cols if x_stride is None else x_stride), _as_ptr(eids), np.int64(e_stride)),
          shared_mem=smem)  # fmt: skip
        return False

    def dequantize(self, part: QMatrix, out: Any) -> None:
        n = part.rows * (part.cols // 32)
        _kernel(f"dequant_f16<{part.qtype}>")(
            (_cdiv(n, 128),), (128,),
            (part.data, np.int64(part.row_bytes), _I32(part.rows), _I32(part.cols), out),
        )  # fmt: skip

    # ---- compute ----

    def embed(self, table: CudaLinear, ids: Sequence[int]) -> Any:
        cp = self.cp
        part = table.parts[0]
        dev_ids = cp.asarray(np.asarray(ids, dtype=np.int32))
        out = cp.empty((len(dev_ids), part.cols), cp.float32)
        _kernel(f"embed<{part.qtype}>")(
            (len(dev_ids),), (128,),
            (part.data, np.int64(part.row_bytes), _I32(part.cols), dev_ids, out),
        )  # fmt: skip
        return out

    def matmul(self, x: Any, lin: CudaLinear) -> Any:
        """y (t, rows) fp32 = x @ lin^T. x is fp32, or fp16 when t > GEMV_MAX_T (``swiglu``'s
        output then: the GEMM's operand as it is)."""
        cp = self.cp
        t = x.shape[0]
        if t > GEMV_MAX_T and x.dtype == cp.float16:
            x16 = cp.ascontiguousarray(x)
        else:
            x = cp.ascontiguousarray(x, dtype=cp.float32)
            x16 = None
        y = cp.empty((t, lin.rows), cp.float32)
        if t <= GEMV_MAX_T:
            off = 0
            xq = self.quantize_for(lin.parts, x, t=t)
            for p in lin.parts:
                self.gemv(p, x, _Offset(y, off), t=t, y_stride=lin.rows, xq=xq)
                off += p.rows
        else:
            w16 = self._dequant_linear(lin)
            if x16 is None:
                x16 = x.astype(cp.float16)
            _gemm(w16, x16, y, m=lin.rows, n=t, k=lin.cols)
        if lin.bias is not None:
            y += lin.bias
        return y

    def norm_matmul(self, x: Any, w: Any, eps: float, lin: CudaLinear) -> Any:
        """``matmul(rmsnorm(x, w, eps), lin)``; a prefill's norm writes the GEMM's fp16
        operand directly (the same values as rmsnorm then a conversion, one launch fewer)."""
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        t, n = x.shape
        if t <= GEMV_MAX_T:
            return self.matmul(self.rmsnorm(x, w, eps), lin)
        x16 = cp.empty((t, n), cp.float16)
        _kernel("rmsnorm_f16")((t,), (256,), (x, w, x16, _I32(n), _F32(eps)))
        return self.matmul(x16, lin)

    def matmul_add(self, x: Any, h: Any, lin: CudaLinear) -> Any:
        """``add(x, matmul(h, lin))``: a prefill GEMM accumulates into x in place (beta = 1:
        no separate output and addition); shorter inputs and biased projections as before."""
        cp = self.cp
        t = h.shape[0]
        if t <= GEMV_MAX_T or lin.bias is not None or x.dtype != cp.float32 or not x.flags.c_contiguous:
            return self.add(x, self.matmul(h, lin))
        h16 = cp.ascontiguousarray(h) if h.dtype == cp.float16 else h.astype(cp.float16)
        _gemm(self._dequant_linear(lin), h16, x, m=lin.rows, n=t, k=lin.cols, accumulate=True)
        return x

    def _dequant_linear(self, lin: CudaLinear) -> Any:
        """``lin`` as fp16 (rows, cols) for a GEMM: its resident copy (made the first time
        while ``f16_budget`` allows), or a dequantization into the shared scratch."""
        if lin.w16 is not None:
            return lin.w16
        cp = self.cp
        need = lin.rows * lin.cols
        fits = 2 * need <= self.f16_budget
        if fits and self._f16_auto:
            free, total = cp.cuda.runtime.memGetInfo()
            fits = free - 2 * need >= total // 2
        if fits:
            try:
                w16 = cp.empty(need, cp.float16)
            except cp.cuda.memory.OutOfMemoryError:
                self.f16_budget = 0  # the KV needs the memory more: per-forward copies from here on
            else:
                self.f16_budget -= 2 * need
                self._dequant_into(lin, w16)
                lin.w16 = w16
                return w16
        if self._scratch16.size < need:
            self._scratch16 = cp.empty(need, cp.float16)
        w16 = self._scratch16[:need]
        self._dequant_into(lin, w16)
        return w16

    def _dequant_into(self, lin: CudaLinear, w16: Any) -> None:
        off = 0
        for p in lin.parts:
            self.dequantize(p, w16[off * lin.cols :])
            off += p.rows

    def rmsnorm(self, x: Any, w: Any, eps: float) -> Any:
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        out = cp.empty_like(x)
        n = x.shape[-1]
        _kernel("rmsnorm")((x.size // n,), (256,), (x, w, out, _I32(n), _F32(eps)))
        return out

    def rope(self, x: Any, pos0: int, rope: CudaRope) -> Any:
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        t, h, d = x.shape
        rope.ensure(pos0 + t)
        out = cp.empty_like(x)
        _kernel("rope")(
            (t * h,), (min(128, d // 2),),
            (x, out, _I32(h), _I32(d), rope.cos, rope.sin, _I32(pos0), _U64(0), _I32(rope.neox)),
        )  # fmt: skip
        return out

    def rope_kv(self, qkv: Any, pos0: int, rope: CudaRope, kv: CudaKV, layer: int, *,
                q_norm: Any = None, k_norm: Any = None, eps: float = 0.0) -> Any:  # fmt: skip
        """A prefill chunk's fused projection tail, one kernel (``rope_kv_prefill``): qkv (T,
        (H + 2 KVH) D) -> q rotated (T, H, D); K rotated and V written into ``kv`` at
        positions [pos0, pos0 + T) (fp16 or Q8_0); q and k head-normed first when the model
        has ``q_norm``/``k_norm`` (qwen3). The decode step's arithmetic (``rope_kv_decode``),
        where the unfused path took two RoPE kernels, a KV store and three copies."""
        cp, s = self.cp, kv.spec
        qkv = cp.ascontiguousarray(qkv, dtype=cp.float32)
        t, h, kvh, d = qkv.shape[0], s.n_heads, s.n_kv_heads, s.head_dim
        if qkv.shape[1] != (h + 2 * kvh) * d:
            raise ValueError(f"qkv has {qkv.shape[1]} columns, not {(h + 2 * kvh) * d}")
        kv.grow(pos0 + t)
        rope.ensure(pos0 + t)
        q = cp.empty((t, h, d), cp.float32)
        _kernel("rope_kv_prefill_q8" if kv.q8 else "rope_kv_prefill")(
            (h + 2 * kvh, t), (128,),
            (qkv, q, kv.pool, kv.table, _I32(layer), _I32(s.n_layers), _I32(kv.block_size), _I32(h),
             _I32(kvh), _I32(d), rope.cos, rope.sin, _I32(pos0), _I32(rope.neox), _as_ptr(q_norm),
             _as_ptr(k_norm), _F32(eps)),
        )  # fmt: skip
        return q

    def attention(self, q: Any, kv: CudaKV, layer: int, pos0: int) -> Any:
        cp = self.cp
        q = cp.ascontiguousarray(q, dtype=cp.float32)
        t, h, d = q.shape
        s = kv.spec
        g = h // s.n_kv_heads
        n = pos0 + t
        if t == 1:
            out = cp.empty((1, h * d), cp.float32)
            nsplit = self.decode_splits(s, n)
            po = cp.empty((h, nsplit, d), cp.float32)
            pml = cp.empty((h, nsplit, 2), cp.float32)
            self.attend_decode(q, kv, layer, po, pml, out, nsplit, n_host=n)
            return out
        kvh = s.n_kv_heads
        scale = 1.0 / math.sqrt(d)
        if d in PREFILL_TC_HEAD_DIMS and self.tc_attention is not False:
            out = cp.empty((t, h * d), cp.float32)
            k = _kernel(f"attn_prefill_tc<{d},{int(kv.q8)}>")
            smem = (128 + 2 * 64) * (d + 8) * 2  # Q rows, a K tile and a V tile, fp16
            if smem > 48 * 1024 and k.max_dynamic_shared_size_bytes < smem:
                k.max_dynamic_shared_size_bytes = smem
            k((_cdiv(t * g, 128), kvh), (256,),
              (q, kv.pool, kv.table, _I32(layer), _I32(s.n_layers), _I32(kv.block_size), _I32(kvh),
               _I32(g), _I32(t), _I32(pos0), _F32(scale), out), shared_mem=smem)  # fmt: skip
            return out
        q16 = cp.empty((kvh, t * g, d), cp.float16)
        _kernel("q_pack")((_cdiv(q.size, 256),), (256,),
                          (q, q16, _I32(t), _I32(kvh), _I32(g), _I32(d), _F32(scale)))
        k16 = cp.empty((kvh, n, d), cp.float16)
        v16 = cp.empty((kvh, n, d), cp.float16)
        _kernel("kv_gather_q8" if kv.q8 else "kv_gather")(
            (_cdiv(n * kvh * d, 256),), (256,),
            (kv.pool, kv.table, _I32(layer), _I32(s.n_layers), _I32(kv.block_size), _I32(kvh),
             _I32(d), _I32(n), k16, v16),
        )  # fmt: skip
        scores = cp.empty((kvh, t * g, n), cp.float32)
        _gemm(k16, q16, scores, m=n, n=t * g, k=d, batch=kvh, transa=True)
        probs = cp.empty((kvh, t * g, n), cp.float16)
        _kernel("softmax_causal")((kvh * t * g,), (256,),
                                  (scores, probs, _I32(t * g), _I32(g), _I32(n), _I32(pos0)))
        del scores
        o = cp.empty((kvh, t * g, d), cp.float32)
        _gemm(v16, probs, o, m=d, n=t * g, k=n, batch=kvh, transa=False)
        out = cp.empty((t, h * d), cp.float32)
        _kernel("o_unpack")((_cdiv(out.size, 256),), (256,),
                            (o, out, _I32(t), _I32(kvh), _I32(g), _I32(d)))
        return out

    @staticmethod
    def _attn_shape(spec: ModelSpec) -> tuple[int, int]:
        """(GM, tile): the attn_split instance for ``spec``'s query heads per KV head, and
        how many positions a block reads per iteration (kernels/ops.cu)."""
        d, g = spec.head_dim, spec.n_heads // spec.n_kv_heads
        if d not in HEAD_DIMS or g > ATTN_GROUPS[-1]:
            raise ValueError(f"CUDA decode attention supports head_dim {HEAD_DIMS} and at most "
                             f"{ATTN_GROUPS[-1]} query heads per KV head, not {d} and {g}")  # fmt: skip
        gm = next(x for x in ATTN_GROUPS if x >= g)
        return gm, 256 // (d // 8) * (4 if gm <= 4 else 2)

    def uses_tc_attention(self, spec: ModelSpec, q8: bool) -> bool:
        """Whether decode attention over a KV of ``spec`` runs on tensor cores (attn_tc, or
        attn_tq8 on q8_0): head_dim 64/128/256 and ``tc_attention`` True, or None (auto): yes,
        except q8_0 at head_dim 64 with ``q8_in_place`` False. All layers at 32K on an H100
        (c92b69c): the 8B shape's q8_0 takes 1.75 ms a token on attn_tq8 against 2.40 on the
        fp16-tile attn_tc<128, 1>; SmolLM2's (head_dim 64) 0.90 against 0.91. On the H200
        (66aca0f) attn_tc beat attn_split with fp16 KV (1.83 against 2.56 ms at 32K, 8B
        shape), and attn_split beat attn_tc<64, 1> on q8_0 (1.08 against 1.15 ms)."""
        if spec.head_dim not in TC_HEAD_DIMS:
            return False
        if self.tc_attention is None:
            return not q8 or self.q8_in_place or spec.head_dim >= 128
        return self.tc_attention

    def decode_splits(self, spec: ModelSpec, n: int) -> int:
        """How many context slices flash-decoding uses for ``n`` positions (fixed in graphs:
        n is then the KV's capacity). Either kernel accepts the count; attn_tc's slices hold
        at most ATTN_TC_SPLIT positions, and attn_tc / attn_tq8 give a slice at least two
        tiles (2 * ATTN_TP positions) from the live length, so short contexts use fewer
        slices than this count (the rest return at once)."""
        per_iter = self._attn_shape(spec)[1]
        nsplit = max(1, min(_cdiv(n, per_iter), 4 * self.n_sm // spec.n_kv_heads, 1024))
        if spec.head_dim in TC_HEAD_DIMS:
            nsplit = max(nsplit, _cdiv(n, ATTN_TC_SPLIT))
            if nsplit > 1024:  # the split buffers are sized for at most 1024
                raise ValueError(f"CUDA decode attention holds at most {1024 * ATTN_TC_SPLIT} positions, not {n}")
        return nsplit

    def attend_decode(self, q: Any, kv: CudaKV, layer: int, po: Any, pml: Any, out: Any,
                      nsplit: int, *, n_host: int = 0, pos_dev: Any = None,
                      sem: Any = None, xq: ActQ8 | None = None) -> bool:  # fmt: skip
        """Flash-decoding of one query (H, D) over the first n positions (n_host, or
        ``*pos_dev + 1`` read on the device) into out (H * D), in one kernel: the last
        block of each KV head to finish merges the splits (``attn_merge_last``), counting in
        ``sem`` (n_kv_heads int32, zero between launches; the kernel leaves it so). A
        decoder passes its own; the default is this ops' (one stream at a time). With ``xq``
        (and head_dim a multiple of 32) the writer of out also quantizes it there for the
        output projection's ``gemv``; returns whether it did."""
        s = kv.spec
        d, g = s.head_dim, s.n_heads // s.n_kv_heads
        gm = self._attn_shape(s)[0]
        if sem is None:
            if self._sem is None or self._sem.size < s.n_kv_heads:
                self._sem = self.cp.zeros(max(64, s.n_kv_heads), self.cp.int32)
            sem = self._sem
        args = (q, kv.pool, kv.table, _I32(layer), _I32(s.n_layers), _I32(kv.block_size),
                _I32(s.n_kv_heads), _I32(g), _I32(n_host), _as_ptr(pos_dev),
                _F32(1.0 / math.sqrt(d)), po, pml, _I32(nsplit), out, sem)  # fmt: skip
        fused = xq is not None and d % 32 == 0 and xq.capacity >= s.n_heads * d
        oq = (xq.q, xq.s) if fused else (_U64(0), _U64(0))
        if self.uses_tc_attention(s, kv.q8):
            args += (_I32(int(self.attn_early)), *oq)
            if kv.q8 and self.q8_in_place:
                k, smem = _kernel(f"attn_tq8<{d}>"), attn_tq8_smem(d)
            else:
                k, smem = _kernel(f"attn_tc<{d},{int(kv.q8)}>"), attn_tc_smem(d, kv.q8)
            if smem > 48 * 1024 and k.max_dynamic_shared_size_bytes < smem:
                k.max_dynamic_shared_size_bytes = smem
                # A hint: all of the SM's shared memory for it (3-4 blocks an SM), whatever
                # the driver would pick for L1 (an older CuPy's Function lacks the setter).
                with contextlib.suppress(AttributeError):
                    k.preferred_shared_memory_carveout = 100
            k((s.n_kv_heads, nsplit), (256,), args, shared_mem=smem)
        else:
            _kernel(f"attn_split<{d},{gm},{int(kv.q8)}>")((s.n_kv_heads, nsplit), (256,), (*args, *oq))
        return fused

    def swiglu(self, gate_up: Any) -> Any:
        cp = self.cp
        gate_up = cp.ascontiguousarray(gate_up, dtype=cp.float32)
        t, f2 = gate_up.shape
        if t > GEMV_MAX_T:  # the operand of a prefill GEMM, which takes fp16 (matmul)
            out = cp.empty((t, f2 // 2), cp.float16)
            _kernel("swiglu_f16")((_cdiv(out.size, 256),), (256,), (gate_up, out, _I32(t), _I32(f2 // 2)))
            return out
        out = cp.empty((t, f2 // 2), cp.float32)
        _kernel("swiglu")((_cdiv(out.size, 256),), (256,), (gate_up, out, _I32(t), _I32(f2 // 2)))
        return out

    def add(self, x: Any, y: Any) -> Any:
        x += y
        return x

    def logits(self, x: Any, head: CudaLinear) -> np.ndarray:
        return self.cp.asnumpy(self.matmul(x, head))


def attn_tc_smem(d: int, q8: bool) -> int:
    """Dynamic shared memory of ``attn_tc<d, q8>``: kernels/ops.cu's TcShape::BYTES (stages of
    raw rows, the q8_0 fp16 tile, scores (the probabilities overwrite them), Q)."""
    nst = 4 if d <= 128 else 3
    rw = d // 32 * 34 if q8 else d * 2
    pitch = rw if q8 else (d + 8) * 2
    tile = ATTN_TP * (d + 8) * 2 if q8 else 0
    return nst * ATTN_TP * pitch + tile + 8 * (ATTN_TC_SPLIT + 4) * 4 + 8 * (d + 8) * 2


def attn_tq8_smem(d: int) -> int:
    """Dynamic shared memory of ``attn_tq8<d>``: kernels/ops.cu's Tq8Shape::BYTES (stages of
    raw q8_0 rows at a padded pitch, scores (the probabilities overwrite them), Q)."""
    nst = 6 if d <= 64 else 4 if d <= 128 else 3
    pw = -(-(d // 32 * 34) // 16) * 4  # row words, a multiple of 4 ...
    pitch = 4 * (pw if pw % 8 else pw + 4)  # ... and odd times 4: rows in distinct banks
    return nst * ATTN_TP * pitch + 8 * (ATTN_TC_SPLIT + 4) * 4 + 8 * (d + 8) * 2


class _Offset:
    """A device pointer ``elements`` float32s into an array (a kernel argument)."""

    def __init__(self, a: Any, elements: int) -> None:
        self.ptr = a.data.ptr + 4 * elements


def _float4_rows(x: Any, stride: int) -> bool:
    """Whether rows of x, ``stride`` floats apart, start 16-byte aligned (quant_x's loads)."""
    return int(_as_ptr(x)) % 16 == 0 and stride % 4 == 0


def _as_ptr(a: Any) -> np.uint64:
    if a is None:
        return _U64(0)
    if isinstance(a, _Offset):
        return _U64(a.ptr)
    return _U64(a.data.ptr)


_ONE_F32, _ZERO_F32 = np.ones(1, np.float32), np.zeros(1, np.float32)  # cuBLAS alpha, beta (host)


def _gemm(a: Any, b: Any, c: Any, *, m: int, n: int, k: int, batch: int = 1,
          transa: bool = True, accumulate: bool = False) -> None:  # fmt: skip
    """Row-major C (batch, n, m) fp32 = B (batch, n, k) @ op(A) with fp16 A, B, fp32 accumulate
    (``accumulate``: C += B op(A)).

    transa: A is (batch, m, k) row-major (C = B A^T); else A is (batch, k, m) (C = B A).
    """
    cp = _cupy()
    from cupy_backends.cuda.libs import cublas

    handle = cp.cuda.device.get_cublas_handle()
    # The handle is shared: run on the caller's stream (a decoder's non-blocking one).
    cublas.setStream(handle, cp.cuda.get_current_stream().ptr)
    one, zero = _ONE_F32, (_ONE_F32 if accumulate else _ZERO_F32)
    r16, r32, compute32 = 2, 0, 68  # CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F
    op_a = 1 if transa else 0
    lda = k if transa else m
    if batch == 1:
        cublas.gemmEx(handle, op_a, 0, m, n, k, one.ctypes.data, a.data.ptr, r16, lda,
                      b.data.ptr, r16, k, zero.ctypes.data, c.data.ptr, r32, m, compute32, -1)
    else:
        cublas.gemmStridedBatchedEx(
            handle, op_a, 0, m, n, k, one.ctypes.data, a.data.ptr, r16, lda, m * k,
            b.data.ptr, r16, k, n * k, zero.ctypes.data, c.data.ptr, r32, m, m * n, batch,
            compute32, -1,
        )  # fmt: skip
