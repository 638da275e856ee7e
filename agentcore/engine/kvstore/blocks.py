"""Paged KV bookkeeping: fixed-size blocks, chained block hashes, per-session block tables.

A block holds ``block_size`` consecutive positions of every layer's K and V, laid out as one
contiguous array ``(n_layers, 2, block_size, n_kv_heads, head_dim)`` so it moves between a
device, host memory and a file as one copy. A block's identity is the chained hash of
(parent block hash, its token ids, the model fingerprint, the KV dtype and layout): equal
hashes mean equal KV, so sessions that share a prefix share its blocks, and a checkpoint
stores only blocks nobody stored before.

The live KV a model computes with (``DenseKV`` on the CPU, the CUDA backend's cache on a
GPU) is addressed by position; ``read_span``/``write_span`` copy a block between it and the
block form. The session ledger that says which ids the live KV holds is engine/session.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KVLayout", "block_hashes", "common_prefix", "read_span", "write_span"]

ROOT = "0" * 32
Q8_BLOCK_BYTES = 34  # a Q8_0 block: fp16 scale, then 32 int8 values (GGUF's layout)


@dataclass(frozen=True)
class KVLayout:
    """What a block's bytes mean; part of every block's identity."""

    fingerprint: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    dtype: str
    block_size: int
    # K and V (2), or one latent row per token and layer (1: MLA, deepseek2).
    planes: int = 2

    def block_shape(self, n_tokens: int) -> tuple[int, ...]:
        """A block's array shape; its last axis is ``row_width`` elements of ``array_dtype``."""
        return (self.n_layers, self.planes, n_tokens, self.n_kv_heads, self.row_width)

    @property
    def array_dtype(self) -> str:
        """The NumPy dtype of a block's array: bytes for the block-quantized ``q8_0``."""
        return "uint8" if self.dtype == "q8_0" else self.dtype

    @property
    def row_width(self) -> int:
        """Elements per (position, head) row: head_dim, or its Q8_0 bytes (34 per 32 values)."""
        return self.head_dim // 32 * Q8_BLOCK_BYTES if self.dtype == "q8_0" else self.head_dim

    def bytes_per_token(self) -> int:
        return (self.n_layers * self.planes * self.n_kv_heads * self.row_width
                * np.dtype(self.array_dtype).itemsize)  # fmt: skip

    @property
    def salt(self) -> bytes:
        return (
            f"{self.fingerprint}|{self.dtype}|{self.n_layers}x{self.n_kv_heads}x{self.head_dim}"
            f"|{self.block_size}" + ("" if self.planes == 2 else f"|planes={self.planes}")
        ).encode()


def chain_hash(parent: str, tokens: Sequence[int], salt: bytes) -> str:
    h = hashlib.sha256(bytes.fromhex(parent))
    h.update(salt)
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def block_hashes(ids: Sequence[int], layout: KVLayout) -> list[str]:
    """Chained hashes of every full block of ``ids``."""
    out: list[str] = []
    parent = ROOT
    bs = layout.block_size
    for start in range(0, len(ids) - bs + 1, bs):
        parent = chain_hash(parent, ids[start : start + bs], layout.salt)
        out.append(parent)
    return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if len(diff) else n


def read_span(kv: Any, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """Positions [start, start+n) of every layer as one contiguous host array of its own
    (``out`` when given: pinned memory on CUDA), never a view of the live KV."""
    if hasattr(kv, "read_span"):
        return kv.read_span(start, n, out=out)
    if out is None:
        return np.array(kv.data[:, :, start : start + n], order="C")
    np.copyto(out, kv.data[:, :, start : start + n])
    return out


def write_span(kv: Any, start: int, block: np.ndarray) -> None:
    """Write a block read by ``read_span`` back at positions [start, start+len)."""
    if hasattr(kv, "write_span"):
        kv.write_span(start, block)
        return
    n = block.shape[2]
    kv.grow(start + n)
    kv.data[:, :, start : start + n] = block
