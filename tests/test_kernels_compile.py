"""Every CUDA kernel compiles, on a machine without a GPU.

NVRTC (the compiler CuPy runs on the GPU machine) from the ``nvidia-cuda-nvrtc`` wheel and
the CUDA headers from ``nvidia-cuda-runtime`` (both in the dev extra on x86-64 Linux) compile
``cuda.kernel_source()`` with ``cuda.kernel_names()`` as name expressions and CuPy's options,
for sm_90 (H100/H200: programmatic launch) and sm_80 (A100: the same kernels without it).
A syntax or template error in a kernel then fails CI, not only the scarce GPU runs; whether
the kernels compute the right thing is tests/test_ops_cuda.py's job, on the GPU.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import pytest

from agentcore.engine.backends import cuda


def _cu13() -> Path | None:
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else ():
        base = Path(root) / "cu13"
        if (base / "lib" / "libnvrtc.so.13").exists() and (base / "include" / "cuda_fp16.h").exists():
            return base
    return None


CU13 = _cu13()
pytestmark = pytest.mark.skipif(CU13 is None, reason="needs the nvidia-cuda-nvrtc and nvidia-cuda-runtime wheels (CUDA 13)")


def _nvrtc():
    ctypes.CDLL(str(CU13 / "lib" / "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(CU13 / "lib" / "libnvrtc.so.13"))


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_every_kernel_compiles_with_nvrtc(arch):
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), cuda.kernel_source().encode(), b"agentcore.cu", 0, None, None) == 0
    names = cuda.kernel_names()
    for name in names:
        assert lib.nvrtcAddNameExpression(prog, name.encode()) == 0, name
    opts = [o.encode() for o in (*cuda.NVRTC_OPTIONS, f"--gpu-architecture={arch}", f"-I{CU13 / 'include'}")]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    errors = [line for line in log.value.decode(errors="replace").splitlines() if "error" in line]
    assert rc == 0, "\n".join(errors[:20])
    lowered = ctypes.c_char_p()
    missing = [n for n in names if lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(lowered)) != 0]
    assert not missing
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
