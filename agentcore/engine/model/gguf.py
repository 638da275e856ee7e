"""GGUF file -> ModelSpec + memory-mapped weights; the architecture registry.

The file is parsed by a small reader of our own (the ``gguf`` package supplies the type
constants and the dequantizers). Owning the parser lets every count, length, dimension and
offset be checked against the file size *before* anything is read or allocated, so a
truncated or hostile file fails fast with a typed error instead of a numpy traceback, an
endless loop or a terabyte allocation; it also parses a 128K-token vocabulary ~10x faster.

Invariants:
- Every error raised here is a ``ModelFormatError`` (or its subclasses
  ``UnsupportedArchitecture`` / ``UnsupportedQuantization``) naming the file, the tensor or
  key at fault, and what is supported.
- Tensor data is never copied at load: ``WeightTensor.raw`` is a read-only view of the mmap.
- ``WeightTensor.shape`` is in numpy order (GGUF stores ne0 = innermost first): a matrix
  with GGUF ne=[in, out] has shape (out, in).
- ``GGUFModel.fingerprint`` is a pure function of the file's header (all metadata and tensor
  infos) and samples of its tensor bytes: equal files agree, different weights differ.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf import quants as gguf_quants

from agentcore.errors import (
    ModelFormatError,
    ModelNotFound,
    UnsupportedArchitecture,
    UnsupportedQuantization,
)

if TYPE_CHECKING:
    from agentcore.engine.model.deepseek2 import MLAParams, MoEParams

__all__ = [
    "SUPPORTED_ARCHS",
    "SUPPORTED_QTYPES",
    "GGUFModel",
    "ModelSpec",
    "WeightTensor",
    "check_logits",
    "load_gguf",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "deepseek2")
_Q = GGMLQuantizationType
SUPPORTED_QTYPES = (
    _Q.F32, _Q.F16, _Q.BF16, _Q.Q8_0, _Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1,
    _Q.Q2_K, _Q.Q3_K, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K,
)  # fmt: skip

# Sanity limits: far above any real model, far below what would exhaust memory or time.
MAX_LAYERS = 1000
MAX_VOCAB = 10_000_000
MAX_DIM = 1 << 20  # n_embd, n_ff
MAX_HEADS = 4096
MAX_HEAD_DIM = 4096
MAX_CONTEXT = 1 << 26
MAX_TENSOR_ELEMENTS = 1 << 40
MAX_COUNT = 1 << 24  # metadata keys, tensors, array items

_FINGERPRINT_SAMPLE = 64 * 1024
_FINGERPRINT_PER_TENSOR = 4 * 1024

_SCALARS: dict[int, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}  # fmt: skip
_FLOAT_TYPES = (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64)


@dataclass(frozen=True)
class ModelSpec:
    """Hyperparameters of a decoder-only transformer, validated against its tensors."""

    arch: str
    name: str
    n_layers: int
    n_embd: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_ff: int
    vocab_size: int  # rows of token_embd (= number of logits); the tokenizer may differ
    context_length: int  # trained length from metadata
    rope_base: float
    # {"type": "linear", "factor"} from rope.scaling.*, or {"type": "freq_factors",
    # "tensor": "rope_freqs.weight"} when the file carries per-frequency divisors (Llama 3.1+)
    rope_scaling: dict | None
    rms_eps: float
    # False: adjacent pairs (llama; the converter permuted Q/K). True: half-offset (NEOX)
    rope_neox: bool
    qkv_bias: bool  # qwen2
    qk_norm: bool  # qwen3
    tied_embeddings: bool  # no output.weight: the LM head is token_embd.weight
    # deepseek2 only (see model/deepseek2.py): latent attention and mixture-of-experts FFNs
    mla: MLAParams | None = None
    moe: MoEParams | None = None


@dataclass
class WeightTensor:
    """One tensor as stored: its GGML type, numpy-order shape and memory-mapped bytes.

    ``raw`` is uint8 blocks of shape ``shape[:-1] + (row_bytes,)`` for quantized types,
    float32/float16 of ``shape`` for F32/F16, and uint16 of ``shape`` for BF16.
    """

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    raw: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][1]

    def dequantize(self, dtype: Any = np.float32) -> np.ndarray:
        """The whole tensor as floats, shape ``self.shape``."""
        return _dequantize(self.raw, self.qtype).reshape(self.shape).astype(dtype, copy=False)

    def dequantize_rows(self, rows: np.ndarray) -> np.ndarray:
        """Only the given rows of a matrix (an embedding gather), shape ``(len(rows), cols)``."""
        if len(self.shape) != 2:
            raise ValueError(f"dequantize_rows needs a matrix; {self.name} has shape {self.shape}")
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row ids must be in [0, {self.shape[0]}) for {self.name}")
        out = _dequantize(np.ascontiguousarray(self.raw[idx]), self.qtype)
        return out.reshape(idx.size, self.shape[1])


def _dequantize(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == _Q.BF16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if qtype in (_Q.F32, _Q.F16):
        return raw.astype(np.float32, copy=False)
    return gguf_quants.dequantize(raw, qtype)


class GGUFModel:
    """A parsed, validated GGUF file: spec, plain-python metadata, and mapped tensors."""

    def __init__(
        self,
        path: Path,
        spec: ModelSpec,
        metadata: dict[str, Any],
        tensors: dict[str, WeightTensor],
        fingerprint: str,
    ) -> None:
        self.path = path
        self.spec = spec
        self.metadata = metadata
        self.tensors = tensors
        self.fingerprint = fingerprint

    def tensor(self, name: str) -> WeightTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} is missing (the file has {len(self.tensors)} "
                f"tensors for arch {self.spec.arch!r}); the file is incomplete or not a "
                f"supported {self.spec.arch} model"
            ) from None

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"GGUFModel({str(self.path)!r}, arch={s.arch}, layers={s.n_layers}, "
            f"embd={s.n_embd}, vocab={s.vocab_size}, tensors={len(self.tensors)})"
        )


# ---------------------------------------------------------------------------- reader


class _Reader:
    """Bounds-checked little-endian cursor over the mapped file."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.size = len(buf)
        self.path = path
        self.pos = 0

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path}: {what} (at byte {self.pos} of {self.size}); the file is truncated "
            "or corrupt: download it again"
        )

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end of the file")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        start = self.take(n, what)
        try:
            return bytes(self.buf[start : start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def count(self, what: str, min_item_bytes: int) -> int:
        n = self.scalar("<Q", what)
        if n > MAX_COUNT or n * min_item_bytes > self.size - self.pos:
            raise self.fail(f"{what} claims {n} items, more than the file can hold")
        return n

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(f"metadata {key!r}")
        if vtype in _SCALARS:
            v = self.scalar(_SCALARS[vtype], f"metadata {key!r}")
            return float(v) if vtype in _FLOAT_TYPES else v
        if vtype == GGUFValueType.ARRAY and depth < 2:
            itype = self.scalar("<I", f"metadata {key!r} item type")
            if itype in _SCALARS and itype != GGUFValueType.BOOL:
                n = self.count(f"metadata {key!r}", struct.calcsize(_SCALARS[itype]))
                dt = np.dtype(_SCALARS[itype])
                start = self.take(n * dt.itemsize, f"metadata {key!r}")
                return np.frombuffer(self.buf, dt, n, start).tolist()
            min_item = {GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}.get(itype, 1)
            n = self.count(f"metadata {key!r}", min_item)
            return [self.value(itype, key, depth + 1) for _ in range(n)]
        raise self.fail(f"metadata {key!r} has unknown value type {vtype}")


def load_gguf(path: str | Path) -> GGUFModel:
    """Parse and validate a GGUF file; tensors stay memory-mapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"{path}: no such model file; pass the path of a .gguf file")
    size = path.stat().st_size
    if size < 24:
        raise ModelFormatError(
            f"{path}: {size} bytes is too small to be a GGUF file; download it again"
        )
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if buf[:4] != GGUF_MAGIC:
        raise ModelFormatError(
            f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF'); "
            "agentcore loads GGUF models only (convert with llama.cpp's convert_hf_to_gguf.py)"
        )
    r = _Reader(buf, path)
    r.pos = 4
    version = r.scalar("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        hint = " (big-endian files are not supported)" if version & 0xFFFF == 0 else ""
        raise ModelFormatError(
            f"{path}: GGUF version {version}{hint}; supported versions: {SUPPORTED_VERSIONS}"
        )
    n_tensors = r.count("tensor count", 24)
    n_kv = r.count("metadata count", 12)
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string("metadata key")
        vtype = r.scalar("<I", f"metadata {key!r} type")
        if key in metadata:
            raise r.fail(f"duplicate metadata key {key!r}")
        metadata[key] = r.value(vtype, key)
    infos = [_read_tensor_info(r) for _ in range(n_tensors)]
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFormatError(f"{path}: general.alignment={alignment!r} is not a power of two")
    header_end = r.pos
    data_start = -(-header_end // alignment) * alignment
    tensors = _map_tensors(buf, path, infos, data_start, alignment)
    spec = _build_spec(path, metadata, tensors)
    fingerprint = _fingerprint(buf, header_end, data_start, tensors)
    return GGUFModel(path, spec, metadata, tensors, fingerprint)


def _read_tensor_info(r: _Reader) -> tuple[str, tuple[int, ...], int, int]:
    name = r.string("tensor name")
    n_dims = r.scalar("<I", f"tensor {name!r} dimension count")
    if not 1 <= n_dims <= 4:
        raise r.fail(f"tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to 4)")
    ne = [r.scalar("<Q", f"tensor {name!r} dims") for _ in range(n_dims)]
    raw_type = r.scalar("<I", f"tensor {name!r} type")
    offset = r.scalar("<Q", f"tensor {name!r} offset")
    return name, tuple(reversed(ne)), raw_type, offset


def _map_tensors(
    buf: mmap.mmap,
    path: Path,
    infos: list[tuple[str, tuple[int, ...], int, int]],
    data_start: int,
    alignment: int,
) -> dict[str, WeightTensor]:
    supported = ", ".join(q.name for q in SUPPORTED_QTYPES)
    size = len(buf)
    tensors: dict[str, WeightTensor] = {}
    for name, shape, raw_type, offset in infos:
        if name in tensors:
            raise ModelFormatError(f"{path}: tensor {name!r} appears twice")
        try:
            qtype = GGMLQuantizationType(raw_type)
        except ValueError:
            qtype = None
        if qtype not in SUPPORTED_QTYPES:
            what = qtype.name if qtype is not None else f"unknown type id {raw_type}"
            raise UnsupportedQuantization(
                f"{path}: tensor {name!r} uses {what}; supported weight types: {supported}. "
                "Re-quantize the model to one of them (e.g. llama-quantize ... Q4_K_M)"
            )
        n_elements = 1
        for d in shape:
            if d < 1 or d > MAX_TENSOR_ELEMENTS:
                raise ModelFormatError(f"{path}: tensor {name!r} has invalid shape {shape}")
            n_elements *= d
        if n_elements > MAX_TENSOR_ELEMENTS:
            raise ModelFormatError(
                f"{path}: tensor {name!r} claims {n_elements} elements (shape {shape}); "
                "the file is corrupt or hostile"
            )
        block, type_size = GGML_QUANT_SIZES[qtype]
        if shape[-1] % block:
            raise ModelFormatError(
                f"{path}: tensor {name!r} rows of {shape[-1]} are not a multiple of the "
                f"{qtype.name} block size {block}"
            )
        nbytes = n_elements // block * type_size
        start = data_start + offset
        if offset % alignment:
            raise ModelFormatError(f"{path}: tensor {name!r} data offset {offset} is unaligned")
        if start + nbytes > size:
            raise ModelFormatError(
                f"{path}: tensor {name!r} needs bytes {start}..{start + nbytes} but the file "
                f"has {size}; the file is truncated: download it again"
            )
        if qtype in (_Q.F32, _Q.F16, _Q.BF16):
            dt = {_Q.F32: np.float32, _Q.F16: np.float16, _Q.BF16: np.uint16}[qtype]
            raw = np.frombuffer(buf, dt, n_elements, start).reshape(shape)
        else:
            raw_shape = (*shape[:-1], shape[-1] // block * type_size)
            raw = np.frombuffer(buf, np.uint8, nbytes, start).reshape(raw_shape)
        tensors[name] = WeightTensor(name, qtype, shape, raw)
    return tensors


# ---------------------------------------------------------------------------- spec


def _build_spec(path: Path, md: dict[str, Any], tensors: dict[str, WeightTensor]) -> ModelSpec:
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedArchitecture(
            f"{path}: architecture {arch!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHS)}"
        )

    def key(name: str, kind: type, default: Any = None, limit: float | None = None) -> Any:
        full = f"{arch}.{name}"
        v = md.get(full, default)
        if v is None:
            raise ModelFormatError(f"{path}: required metadata key {full!r} is missing")
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ModelFormatError(f"{path}: metadata {full!r}={v!r} must be an integer")
        if kind is float and not isinstance(v, int | float):
            raise ModelFormatError(f"{path}: metadata {full!r}={v!r} must be a number")
        if kind is float and not (math.isfinite(v) and v > 0):
            # Every float hyperparameter (rope base, eps, scales) is a positive quantity;
            # NaN or a negative base loads and then silently generates token 0.
            raise ModelFormatError(
                f"{path}: metadata {full!r}={v} must be a finite positive number; the file is "
                "corrupt"
            )
        if limit is not None and not 0 < v <= limit:
            raise ModelFormatError(
                f"{path}: metadata {full!r}={v} is outside (0, {limit:g}]; the file is corrupt"
            )
        return kind(v)

    if arch == "deepseek2":
        from agentcore.engine.model.deepseek2 import build_spec

        spec = build_spec(path, md, tensors, key)
        _check_shapes(path, spec, tensors)
        return spec

    n_layers = key("block_count", int, limit=MAX_LAYERS)
    n_embd = key("embedding_length", int, limit=MAX_DIM)
    n_heads = key("attention.head_count", int, limit=MAX_HEADS)
    n_kv_heads = key("attention.head_count_kv", int, n_heads, MAX_HEADS)
    head_dim = key("attention.key_length", int, n_embd // n_heads or None, MAX_HEAD_DIM)
    if key("attention.value_length", int, head_dim) != head_dim:
        raise ModelFormatError(f"{path}: key_length != value_length is not supported")
    if key("rope.dimension_count", int, head_dim) != head_dim:
        raise ModelFormatError(f"{path}: partial rotary embeddings are not supported")
    if n_heads % n_kv_heads:
        raise ModelFormatError(
            f"{path}: {n_heads} attention heads are not a multiple of {n_kv_heads} KV heads"
        )
    n_ff = key("feed_forward_length", int, limit=MAX_DIM)
    context_length = key("context_length", int, limit=MAX_CONTEXT)
    rope_base = key("rope.freq_base", float, 10000.0)
    rms_eps = key("attention.layer_norm_rms_epsilon", float, limit=1.0)

    embd = tensors.get("token_embd.weight")
    if embd is None or len(embd.shape) != 2:
        raise ModelFormatError(f"{path}: tensor 'token_embd.weight' is missing or not a matrix")
    vocab_size = embd.shape[0]
    if vocab_size > MAX_VOCAB:
        raise ModelFormatError(f"{path}: vocabulary of {vocab_size} exceeds {MAX_VOCAB}")

    spec = ModelSpec(
        arch=arch,
        name=str(md.get("general.name", path.stem)),
        n_layers=n_layers,
        n_embd=n_embd,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        n_ff=n_ff,
        vocab_size=vocab_size,
        context_length=context_length,
        rope_base=rope_base,
        rope_scaling=_rope_scaling(path, md, arch, tensors, head_dim),
        rms_eps=rms_eps,
        rope_neox=arch in ("qwen2", "qwen3"),
        qkv_bias=arch == "qwen2",
        qk_norm=arch == "qwen3",
        tied_embeddings="output.weight" not in tensors,
    )
    _check_shapes(path, spec, tensors)
    return spec


def _rope_scaling(
    path: Path, md: dict[str, Any], arch: str, tensors: dict[str, WeightTensor], head_dim: int
) -> dict | None:
    if "rope_freqs.weight" in tensors:
        return {"type": "freq_factors", "tensor": "rope_freqs.weight"}
    kind = md.get(f"{arch}.rope.scaling.type", "none")
    factor = md.get(f"{arch}.rope.scaling.factor")
    if kind == "none" or (kind in ("linear", "yarn") and factor in (None, 1.0)):
        return None
    positive = isinstance(factor, int | float) and math.isfinite(factor) and factor > 0
    if kind == "linear" and positive:
        return {"type": "linear", "factor": float(factor)}
    orig = md.get(f"{arch}.rope.scaling.original_context_length")
    if kind == "yarn" and positive and isinstance(orig, int) and orig > 0:
        # llama.cpp's YaRN (ggml rope_yarn, ext_factor 1): beta_fast/slow from the file or
        # 32/1, and the rotated dims scaled by attn_factor * (1 + 0.1 ln factor).
        fast = float(md.get(f"{arch}.rope.scaling.yarn_beta_fast", 32.0))
        slow = float(md.get(f"{arch}.rope.scaling.yarn_beta_slow", 1.0))
        attn = float(md.get(f"{arch}.rope.scaling.attn_factor", 1.0))
        return {"type": "yarn", "factor": float(factor), "original_context_length": orig,
                "beta_fast": fast, "beta_slow": slow,
                "magnitude": attn * (1.0 + 0.1 * math.log(float(factor)))}  # fmt: skip
    raise ModelFormatError(
        f"{path}: rope scaling {kind!r} (factor {factor!r}) is not supported; supported: "
        "none, linear, yarn (with original_context_length), and per-frequency factors "
        "(rope_freqs.weight, Llama 3.1 style)"
    )


def _expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    if spec.mla is not None:
        from agentcore.engine.model.deepseek2 import expected_shapes

        return expected_shapes(spec)
    e, hd = spec.n_embd, spec.head_dim
    q, kv = spec.n_heads * hd, spec.n_kv_heads * hd
    want: dict[str, tuple[int, ...]] = {
        "output_norm.weight": (e,),
        "token_embd.weight": (spec.vocab_size, e),
    }
    if not spec.tied_embeddings:
        want["output.weight"] = (spec.vocab_size, e)
    if spec.rope_scaling and spec.rope_scaling["type"] == "freq_factors":
        want["rope_freqs.weight"] = (hd // 2,)
    for i in range(spec.n_layers):
        b = f"blk.{i}."
        want |= {
            b + "attn_norm.weight": (e,),
            b + "attn_q.weight": (q, e),
            b + "attn_k.weight": (kv, e),
            b + "attn_v.weight": (kv, e),
            b + "attn_output.weight": (e, q),
            b + "ffn_norm.weight": (e,),
            b + "ffn_gate.weight": (spec.n_ff, e),
            b + "ffn_up.weight": (spec.n_ff, e),
            b + "ffn_down.weight": (e, spec.n_ff),
        }
        if spec.qkv_bias:
            want |= {b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)}
        if spec.qk_norm:
            want |= {b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)}
    return want


def check_logits(logits: Any, path: str | Path) -> None:
    """Raise ModelFormatError unless every logit is finite (call once on a first forward).

    NaN or inf weights anywhere make the logits non-finite, and argmax of NaN is token 0:
    the model would load and silently generate garbage.
    """
    # A CuPy array is copied to the host (one row of logits, once per engine).
    on_device = hasattr(logits, "get") and not isinstance(logits, np.ndarray)
    values = np.asarray(logits.get() if on_device else logits)
    if not np.isfinite(values).all():
        bad = int(values.size - np.isfinite(values).sum())
        raise ModelFormatError(
            f"{path}: {bad} of {values.size} logits of a test forward are not finite (NaN or "
            "inf): the weights are corrupt; download the model again"
        )


def _check_finite_norms(path: Path, tensors: dict[str, WeightTensor]) -> None:
    """Norm weights are small and multiply every activation: check them all at load."""
    for name, t in tensors.items():
        is_norm = name.endswith("norm.weight") and len(t.shape) == 1
        if is_norm and not np.isfinite(t.dequantize()).all():
            raise ModelFormatError(
                f"{path}: tensor {name!r} holds NaN or inf values; the weights are corrupt: "
                "download the model again"
            )


def _check_shapes(path: Path, spec: ModelSpec, tensors: dict[str, WeightTensor]) -> None:
    _check_finite_norms(path, tensors)
    for name, shape in _expected_shapes(spec).items():
        t = tensors.get(name)
        if t is None:
            raise ModelFormatError(
                f"{path}: required tensor {name!r} is missing for a {spec.n_layers}-layer "
                f"{spec.arch} model; the file is incomplete or was converted for another runtime"
            )
        if t.shape != shape:
            raise ModelFormatError(
                f"{path}: tensor {name!r} has shape {t.shape} but the hyperparameters "
                f"(n_embd={spec.n_embd}, heads={spec.n_heads}/{spec.n_kv_heads}, "
                f"head_dim={spec.head_dim}, n_ff={spec.n_ff}) require {shape}"
            )


# ---------------------------------------------------------------------------- fingerprint


def _fingerprint(
    buf: mmap.mmap, header_end: int, data_start: int, tensors: dict[str, WeightTensor]
) -> str:
    """sha256 of the header bytes (metadata + tensor infos) and samples of the data."""
    h = hashlib.sha256()
    h.update(buf[:header_end])
    end = len(buf)
    h.update(buf[data_start : min(end, data_start + _FINGERPRINT_SAMPLE)])
    h.update(buf[max(data_start, end - _FINGERPRINT_SAMPLE) : end])
    for name in sorted(tensors):
        h.update(tensors[name].raw.reshape(-1).view(np.uint8)[:_FINGERPRINT_PER_TENSOR].tobytes())
    return h.hexdigest()
