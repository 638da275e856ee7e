"""The block file format: a fixed binary header, the token ids, an aligned KV payload.

Layout of one file (little-endian):
- header (``HEADER``, 92 bytes): magic ``ACKB``, format version, flags (bit 0: a partial
  tail block), layout tag (16 bytes of a hash of the model fingerprint, dtype, shape and
  block size), key and parent (the chained block hashes, 16 bytes each), n_tokens, dtype
  name, payload offset, payload length, and an xxh3-64 checksum of the header bytes before
  it, the token ids and the payload;
- ``n_tokens`` token ids as int32;
- zero padding up to ``ALIGN``, then the payload: the block's KV in C order of
  ``(n_layers, 2, n_tokens, n_kv_heads, head_dim)``.

The payload is copied from a read-only mapping of the file straight into the caller's
destination (one view per (layer, K|V) slab, so a dense KV cache or a pinned staging buffer
is filled without an intermediate buffer), 1 MiB at a time, and each piece is hashed right
after it is copied, while it is still in cache: the checksum verifies the bytes the caller
will use, not the file. On the 2-core CI machine this reads a warm page cache at about
4.5 GB/s, where ``preadv`` (the kernel's ``rep movsb`` copy) manages 1.8. Any mismatch is a
``BlockRejected``: the caller counts a miss and must not use the destination past what was
verified before.

Block files are immutable once renamed into place (a newer block gets a new file), which is
what makes mapping them safe: a file truncated in place by another program while it is being
read would fault the reader (SIGBUS), as it would for any mmap-based reader.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

from agentcore.engine.kvstore.blocks import KVLayout

__all__ = ["ALIGN", "HEADER", "BlockHeader", "BlockRejected", "encode", "layout_tag", "read_into", "slabs"]

MAGIC = b"ACKB"
VERSION = 2
ALIGN = 4096
FLAG_TAIL = 1
HEADER = struct.Struct("<4sHH16s16s16sI8sQQQ")
_CHECKED = HEADER.size - 8  # the checksum covers every header byte before itself
_CHUNK = 1 << 20  # copy-then-hash granularity: big enough to amortise, small enough for L2


class BlockRejected(Exception):
    """A block file that must not be used; ``remove`` says whether it is ours to delete."""

    def __init__(self, why: str, *, remove: bool = True) -> None:
        super().__init__(why)
        self.remove = remove


@dataclass(frozen=True)
class BlockHeader:
    key: str
    parent: str
    tail: bool
    n_tokens: int


def layout_tag(layout: KVLayout) -> bytes:
    return hashlib.blake2b(layout.salt, digest_size=16).digest()


def _payload_offset(n_tokens: int) -> int:
    end = HEADER.size + 4 * n_tokens
    return -(-end // ALIGN) * ALIGN


def encode(layout: KVLayout, head: BlockHeader, tokens: Sequence[int], payload: np.ndarray) -> list:
    """The buffers of a block file, in order (header + ids + padding, then the payload)."""
    ids = np.asarray(tokens, dtype=np.int32).tobytes()
    body = memoryview(np.ascontiguousarray(payload)).cast("B")
    offset = _payload_offset(head.n_tokens)
    fields = HEADER.pack(
        MAGIC, VERSION, FLAG_TAIL if head.tail else 0, layout_tag(layout),
        bytes.fromhex(head.key), bytes.fromhex(head.parent), head.n_tokens,
        layout.dtype.encode(), offset, body.nbytes, 0,
    )[:_CHECKED]
    h = xxhash.xxh3_64(fields)
    h.update(ids)
    h.update(body)
    lead = fields + struct.pack("<Q", h.intdigest()) + ids
    return [lead + bytes(offset - len(lead)), body]


def slabs(dest: np.ndarray, start: int, n: int) -> list[memoryview]:
    """Byte views of positions [start, start+n) of a (layers, 2, positions, ...) array, in payload order."""
    part = dest[:, :, start : start + n]
    if part.flags.c_contiguous:
        return [memoryview(part).cast("B")]
    views = []
    for layer in range(part.shape[0]):
        for kv in range(part.shape[1]):  # K and V, or one latent plane
            slab = part[layer, kv]
            if not slab.flags.c_contiguous:
                raise ValueError("the destination's (position, head, dim) axes must be C-contiguous")
            views.append(memoryview(slab).cast("B"))
    return views


def read_into(
    fd: int, layout: KVLayout, head: BlockHeader, tokens: Sequence[int], dest: list[memoryview]
) -> int:
    """Read one open block file into ``dest`` (views from ``slabs``) and verify it; bytes read.

    Raises ``BlockRejected`` for anything that is not exactly the block we asked for, and
    lets ``OSError`` through (the caller decides whether the disk tier is at fault).
    """
    n = head.n_tokens
    lead = os.pread(fd, HEADER.size + 4 * n, 0)
    if len(lead) < HEADER.size:
        raise BlockRejected(f"truncated header ({len(lead)} bytes)")
    magic, version, flags, tag, key, parent, n_tokens, dtype, offset, length, checksum = HEADER.unpack_from(lead)
    if magic != MAGIC:
        raise BlockRejected("bad magic")
    if version != VERSION:
        raise BlockRejected(f"format version {version}", remove=False)
    if tag != layout_tag(layout) or dtype.rstrip(b"\0").decode("ascii", "replace") != layout.dtype:
        raise BlockRejected("foreign model or layout", remove=False)
    if key.hex() != head.key or parent.hex() != head.parent or bool(flags & FLAG_TAIL) != head.tail:
        raise BlockRejected("header names another block")
    expected = sum(v.nbytes for v in dest)
    if n_tokens != n or length != expected or offset != _payload_offset(n) or len(lead) != HEADER.size + 4 * n:
        raise BlockRejected(f"header shape differs (tokens={n_tokens} payload={length} of {expected})")
    ids = lead[HEADER.size :]
    if ids != np.asarray(tokens, dtype=np.int32).tobytes():
        raise BlockRejected("token ids differ")
    size = os.fstat(fd).st_size
    if size < offset + expected:
        raise BlockRejected(f"truncated payload ({max(0, size - offset)} of {expected} bytes)")
    if size > offset + expected:
        raise BlockRejected("trailing bytes after the payload")
    h = xxhash.xxh3_64(lead[:_CHECKED])
    h.update(ids)
    with _map(fd, size) as mapped:
        src = memoryview(mapped)
        try:
            pos = offset
            for view in dest:
                for a in range(0, view.nbytes, _CHUNK):
                    piece = view[a : a + _CHUNK]
                    _copy(piece, src[pos : pos + piece.nbytes])
                    h.update(piece)
                    pos += piece.nbytes
        finally:
            src.release()
    if h.intdigest() != checksum:
        raise BlockRejected("checksum mismatch")
    return expected


def _map(fd: int, size: int) -> mmap.mmap:
    """A read-only mapping of a whole block file (a seam for the fault-injection tests)."""
    return mmap.mmap(fd, size, prot=mmap.PROT_READ)


def _copy(dst: memoryview, src: memoryview) -> None:
    """``dst[:] = src`` through a NumPy SIMD loop rather than ``memcpy``: for copies of a few
    hundred KiB glibc picks ``rep movsb``, which on some virtual CPUs (the CI machine's among
    them) runs at 1.9 GB/s against 4.8 for the loop; the loop also releases the GIL."""
    if dst.nbytes % 8 == 0:
        np.positive(np.frombuffer(src, np.uint64), out=np.frombuffer(dst, np.uint64))
    else:
        dst[:] = src
