"""Programmatic dependent launch (PDL) for the decode graph's kernels.

A decode step is a chain of ~350 small dependent kernels (8B) in one CUDA graph; between two of
them the GPU drains one grid, flushes its writes and only then starts the next, a few
microseconds each time that no weight byte moves. On Hopper (sm_90) and later a kernel
launched with ``CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`` may start while the
kernel before it is finishing: its blocks do the work that depends on no earlier kernel (the
GEMVs load their first weights, or send their rows toward L2), then wait in
``griddepcontrol.wait`` until every earlier kernel has completed and its writes are visible
(``PDL_WAIT`` in kernels/quant.cu). Every kernel in ``PDL_KERNELS`` calls it before its first
read or write of activations, KV or decode state, so the results are the same as with plain
launches; a kernel not in the set is launched plainly and fully ordered.

CuPy's ``RawKernel`` call takes no launch attributes, so these launches go to the driver's
``cuLaunchKernelEx`` through ctypes (CUDA 12.0+; captured into graphs since 12.3). They are used
only inside ``pdl_launches()`` (the decoder's warm-up, capture and profile); eager ops and
prefill launch as before.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import numpy as np

# Kernels that call PDL_WAIT() before touching anything an earlier kernel writes (by name
# before any template arguments).
PDL_KERNELS = frozenset({
    "gemv", "gemv_q8", "quant_x", "embed", "rope_kv_decode", "rope_kv_decode_q8",
    "attn_tc", "attn_tq8", "attn_split", "attn_combine", "sample_token",
})  # fmt: skip
_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID, cuda.h


class LaunchAttribute(ctypes.Structure):
    """CUlaunchAttribute: an id, 4 bytes of padding, a 64-byte value union (its first int
    is ``programmaticStreamSerializationAllowed``)."""

    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("rest", ctypes.c_char * 60)]  # fmt: skip


class LaunchConfig(ctypes.Structure):
    """CUlaunchConfig (cuda.h)."""

    _fields_ = [
        ("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
        ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
        ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(LaunchAttribute)), ("numAttrs", ctypes.c_uint),
    ]  # fmt: skip


_state = threading.local()


@contextmanager
def pdl_launches(on: bool = True) -> Iterator[None]:
    """Within this block (on this thread), kernels in ``PDL_KERNELS`` launch with the
    programmatic-serialization attribute when ``on``."""
    prev = getattr(_state, "on", False)
    _state.on = on
    try:
        yield
    finally:
        _state.on = prev


def pdl_active() -> bool:
    return getattr(_state, "on", False)


@cache
def _driver() -> Any:
    """libcuda's cuLaunchKernelEx, or None where the driver lacks it."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        fn = lib.cuLaunchKernelEx
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(LaunchConfig), ctypes.c_void_p,
                   ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]  # fmt: skip
    return fn


def pdl_supported(cp: Any) -> bool:
    """Whether this GPU and driver can launch programmatically: compute capability 9.0+ and
    a driver with cuLaunchKernelEx."""
    return int(cp.cuda.Device().compute_capability) >= 90 and _driver() is not None


def kernel_params(args: tuple) -> tuple[Any, list]:
    """(void*[] of pointers to each argument's bytes, the buffers holding them) for
    cuLaunchKernelEx: a device array passes its pointer, a NumPy scalar its own bytes (as
    CuPy's launch does)."""
    bufs = []
    for a in args:
        if isinstance(a, np.generic):
            raw = a.tobytes()
            bufs.append((ctypes.c_char * len(raw)).from_buffer_copy(raw))
        elif hasattr(a, "data") and hasattr(a.data, "ptr"):
            bufs.append(ctypes.c_uint64(a.data.ptr))
        else:
            raise TypeError(f"kernel argument of type {type(a).__name__}: pass a device array "
                            "or a NumPy scalar")  # fmt: skip
    params = (ctypes.c_void_p * max(1, len(bufs)))(*[ctypes.addressof(b) for b in bufs])
    return params, bufs


class Kernel:
    """A compiled kernel: called as CuPy's RawKernel is, ``k(grid, block, args,
    shared_mem=0)``. Inside ``pdl_launches()``, a kernel in ``PDL_KERNELS`` goes through
    cuLaunchKernelEx with the programmatic attribute on the current CuPy stream; otherwise
    through CuPy. Attribute reads and writes (``max_dynamic_shared_size_bytes``) reach the
    RawKernel."""

    def __init__(self, raw: Any, name: str, cp: Any) -> None:
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "_pdl", name.split("<", 1)[0] in PDL_KERNELS)
        object.__setattr__(self, "_cp", cp)

    def __getattr__(self, key: str) -> Any:
        return getattr(self._raw, key)

    def __setattr__(self, key: str, value: Any) -> None:
        setattr(self._raw, key, value)

    def __call__(self, grid: tuple, block: tuple, args: tuple, *, shared_mem: int = 0) -> None:
        if not (self._pdl and pdl_active()):
            self._raw(grid, block, args, shared_mem=shared_mem)
            return
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        attr = LaunchAttribute(id=_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
        cfg = LaunchConfig(*g, *b, int(shared_mem), self._cp.cuda.get_current_stream().ptr,
                           ctypes.pointer(attr), 1)  # fmt: skip
        params, bufs = kernel_params(args)
        err = _driver()(ctypes.byref(cfg), self._raw.kernel.ptr, params, None)
        del bufs
        if err:
            raise RuntimeError(f"cuLaunchKernelEx failed for {self._raw.name}: CUresult {err}")
