"""Compile the CUDA module with NVRTC through ctypes, without CuPy or a GPU.

What CuPy does on the GPU machine (``cuda._module(m)``: ``cuda.kernel_source(m)``,
``cuda.NVRTC_OPTIONS``, ``cuda.kernel_names(m)`` as name expressions), done with the
``nvidia-cuda-nvrtc`` wheel's libnvrtc and the ``nvidia-cuda-runtime`` wheel's headers, so a
kernel that does not compile fails on any x86-64 Linux machine
(``tests/test_kernels_compile.py``, ``scripts/check_kernels.py``). No driver is loaded.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

__all__ = ["KernelCompileError", "compile_ptx", "find_cuda_wheels"]


class KernelCompileError(RuntimeError):
    """NVRTC rejected the module; the message holds its log."""


def find_cuda_wheels() -> tuple[Path, Path] | None:
    """(libnvrtc, include dir) from the installed nvidia-* wheels (CUDA 13's ``nvidia/cu13``
    layout, or CUDA 12's ``nvidia/cuda_nvrtc`` + ``nvidia/cuda_runtime``), else None."""
    spec = importlib.util.find_spec("nvidia")
    for root in map(Path, spec.submodule_search_locations if spec else ()):
        pairs = [(root / "cu13/lib/libnvrtc.so.13", root / "cu13/include")]
        pairs += [(lib, root / "cuda_runtime/include") for lib in sorted(root.glob("cuda_nvrtc/lib/libnvrtc.so.*"))]
        for lib, inc in pairs:
            if lib.exists() and (inc / "cuda_fp16.h").exists():
                return lib, inc
    return None


def compile_ptx(lib_path: Path, code: str, options: list[str], names: list[str]) -> bytes:
    """PTX of ``code`` with every name expression in ``names`` instantiated; raises
    KernelCompileError with NVRTC's log when it fails or leaves a name unresolved."""
    builtins = sorted(lib_path.parent.glob("libnvrtc-builtins.so.*"))  # libnvrtc dlopens it by name
    if builtins:
        ctypes.CDLL(str(builtins[0]), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(lib_path))
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"agentcore.cu", 0, None, None):
        raise KernelCompileError("nvrtcCreateProgram failed")
    try:
        for n in names:
            if lib.nvrtcAddNameExpression(prog, n.encode()):
                raise KernelCompileError(f"nvrtcAddNameExpression({n!r}) failed")
        opts = [o.encode() for o in options]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if rc:
            raise KernelCompileError(f"NVRTC failed ({rc}):\n{log.value.decode(errors='replace')}")
        lowered = ctypes.c_char_p()
        missing = [n for n in names if lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(lowered))]
        if missing:
            raise KernelCompileError(f"name expressions not instantiated: {missing}")
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, ptx)
        return ptx.value
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
