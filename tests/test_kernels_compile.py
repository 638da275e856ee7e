"""Every CUDA kernel compiles, on a machine without a GPU.

NVRTC (the compiler CuPy runs on the GPU machine) from the ``nvidia-cuda-nvrtc`` wheel and
the CUDA headers from ``nvidia-cuda-runtime`` (both in the dev extra on x86-64 Linux) compile
``cuda.kernel_source(m)`` with ``cuda.kernel_names(m)`` as name expressions and CuPy's options,
for each module m CuPy compiles (``cuda.KERNEL_MODULES``),
(``agentcore.engine.backends.nvrtc``), for sm_90 (H100/H200: programmatic launch) and sm_80
(A100: the same kernels without it). A syntax or template error in a kernel then fails CI,
not only the scarce GPU runs; whether the kernels compute the right thing is
tests/test_ops_cuda.py's job, on the GPU.
"""

from __future__ import annotations

import pytest

from agentcore.engine.backends import cuda
from agentcore.engine.backends.nvrtc import KernelCompileError, compile_ptx, find_cuda_wheels

WHEELS = find_cuda_wheels()
pytestmark = pytest.mark.skipif(WHEELS is None, reason="needs the nvidia-cuda-nvrtc and nvidia-cuda-runtime wheels")


@pytest.mark.parametrize("module", cuda.KERNEL_MODULES)
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_every_kernel_compiles_with_nvrtc(arch, module):
    lib, include = WHEELS
    names = cuda.kernel_names(module)
    ptx = compile_ptx(lib, cuda.kernel_source(module),
                      [*cuda.NVRTC_OPTIONS, f"--gpu-architecture={arch}", f"-I{include}"], names)  # fmt: skip
    assert b".entry" in ptx and ptx.count(b".entry") >= len(names)


def test_a_kernel_error_is_reported_with_nvrtcs_log():
    lib, include = WHEELS
    bad = cuda.kernel_source() + "\n__global__ void broken() { undefined_name = 1; }\n"
    with pytest.raises(KernelCompileError, match="undefined_name"):
        compile_ptx(lib, bad, [*cuda.NVRTC_OPTIONS, "--gpu-architecture=sm_90", f"-I{include}"], ["broken"])
