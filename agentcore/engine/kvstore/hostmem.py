"""A fixed set of page-locked host buffers for KV blocks, pinned once and reused.

On CUDA a checkpoint saved behind the turn copies its blocks to host memory. Pinning fresh
memory there (``cudaHostAlloc``) takes the driver's lock and stalls the next turn's kernel
launches, so the save may only reuse buffers pinned ahead. CuPy's pinned pool cannot say
whether it holds a free buffer of a given size (``n_free_blocks`` counts every size, and
CuPy stages ``cupy.asarray`` of pageable arrays through that pool, leaving free buffers of
other sizes behind), so asking it risks exactly the allocation to avoid. ``PinnedBlocks``
keeps its own buffers: ``take`` hands one out or None (the caller then uses pageable
memory). A buffer is free again once no array uses it: every view NumPy makes of the array
handed out (or of its views) has the buffer's root array as its ``base``, so the root's
reference count says whether any is alive.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

import numpy as np


def _root(a: np.ndarray) -> np.ndarray:
    """The array every view of ``a`` takes as its base (NumPy collapses view chains to it)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class PinnedBlocks:
    """``count`` host buffers of ``nbytes`` each from ``alloc(nbytes)`` (a uint8 array, pinned
    on CUDA), allocated at construction and never freed while this object lives."""

    def __init__(self, alloc: Callable[[int], np.ndarray], nbytes: int, count: int) -> None:
        self.nbytes = int(nbytes)
        self._lock = threading.Lock()
        self._roots = [self._new_root(alloc) for _ in range(max(0, count))]
        self._idle = [self._refs(i) for i in range(len(self._roots))]  # references when unused
        self._out: set[int] = set()  # handed out, not yet seen unused again (_reclaim)
        self._free = list(range(len(self._roots)))

    def _new_root(self, alloc: Callable[[int], np.ndarray]) -> np.ndarray:
        root = _root(alloc(self.nbytes))
        if root.nbytes < self.nbytes or not root.flags.c_contiguous:
            raise ValueError(f"alloc({self.nbytes}) gave {root.nbytes} bytes")
        return root

    @property
    def count(self) -> int:
        return len(self._roots)

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self._roots[i])

    @property
    def free(self) -> int:
        """Buffers no array uses."""
        with self._lock:
            self._reclaim()
            return len(self._free)

    def _reclaim(self) -> None:
        for i in list(self._out):
            if self._refs(i) <= self._idle[i]:
                self._out.discard(i)
                self._free.append(i)

    def take(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray | None:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` in a free buffer, or
        None when none is free (or it would not fit)."""
        dtype = np.dtype(dtype)
        need = int(np.prod(shape)) * dtype.itemsize
        if need > self.nbytes:
            return None
        with self._lock:
            if not self._free:
                self._reclaim()
            if not self._free:
                return None
            i = self._free.pop()
            self._out.add(i)
            return self._roots[i].reshape(-1).view(np.uint8)[:need].view(dtype).reshape(shape)
