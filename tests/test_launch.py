"""CPU checks of the programmatic-launch plumbing (engine/backends/launch.py): the ctypes
structures match cuda.h's layout, arguments marshal as CuPy passes them, and outside
``pdl_launches()`` (or for kernels without PDL_WAIT) a call goes to the RawKernel unchanged.
The launches themselves run on the GPU (tests/test_ops_cuda.py)."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import numpy as np
import pytest

from agentcore.engine.backends import launch
from agentcore.engine.backends.launch import Kernel, LaunchAttribute, LaunchConfig, kernel_params

KERNELS = Path(launch.__file__).parent / "kernels"


def test_structures_have_cuda_h_layout():
    # CUlaunchAttribute: int id, 4 pad bytes, a 64-byte union; CUlaunchConfig: 7 uints, then
    # (8-aligned) the stream, the attribute pointer and their count.
    assert ctypes.sizeof(LaunchAttribute) == 72
    assert LaunchAttribute.value.offset == 8
    assert ctypes.sizeof(LaunchConfig) == 56
    assert LaunchConfig.hStream.offset == 32
    assert LaunchConfig.attrs.offset == 40
    assert LaunchConfig.numAttrs.offset == 48


class _Ptr:
    def __init__(self, ptr):
        self.ptr = ptr


class _DevArray:
    def __init__(self, ptr):
        self.data = _Ptr(ptr)


def test_kernel_params_pass_scalars_by_value_and_arrays_by_pointer():
    args = (np.int32(-7), np.float32(1.5), np.int64(1 << 40), np.uint64(0xDEADBEEF), _DevArray(0x7F0012345600))
    params, bufs = kernel_params(args)
    read = [
        ctypes.c_int32.from_address(params[0]).value,
        ctypes.c_float.from_address(params[1]).value,
        ctypes.c_int64.from_address(params[2]).value,
        ctypes.c_uint64.from_address(params[3]).value,
        ctypes.c_uint64.from_address(params[4]).value,
    ]
    assert read == [-7, 1.5, 1 << 40, 0xDEADBEEF, 0x7F0012345600]
    assert len(bufs) == 5
    with pytest.raises(TypeError, match="NumPy scalar"):
        kernel_params((3,))


class _Raw:
    name = "gemv_q8<12,0>"

    def __init__(self):
        self.calls = []
        self.max_dynamic_shared_size_bytes = 0

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem))


def test_kernel_calls_cupy_outside_the_pdl_scope_and_forwards_attributes():
    raw = _Raw()
    k = Kernel(raw, raw.name, cp=None)
    k((3, 1), (256,), (np.int32(1),), shared_mem=128)
    assert raw.calls == [((3, 1), (256,), (np.int32(1),), 128)]
    k.max_dynamic_shared_size_bytes = 99 * 1024
    assert raw.max_dynamic_shared_size_bytes == 99 * 1024 == k.max_dynamic_shared_size_bytes
    # A kernel without PDL_WAIT launches plainly even inside the scope (no driver touched).
    other = _Raw()
    with launch.pdl_launches(True):
        assert launch.pdl_active()
        Kernel(other, "swiglu", cp=None)((1,), (256,), ())
    assert not launch.pdl_active()
    assert len(other.calls) == 1


def test_every_pdl_kernel_waits_before_touching_its_inputs():
    # Each kernel in PDL_KERNELS calls PDL_WAIT() in its body (or the body it forwards to):
    # launched programmatically without it, it would race the kernel before it.
    code = "\n".join(p.read_text() for p in sorted(KERNELS.glob("*.cu")))
    code = re.sub(r"//[^\n]*", "", code)  # a comment naming a kernel is not its definition
    for name in launch.PDL_KERNELS:
        m = re.search(rf"\b{name}\s*\((?:[^;{{]*)\)\s*\{{", code)
        assert m, name
        body = code[m.end() : m.end() + 4000]
        fwd = re.match(r"\s*(\w+)<", body)  # rope_kv_decode forwards to rope_kv_body<Q8>
        if fwd:
            b = re.search(rf"\b{fwd.group(1)}\s*\((?:[^;{{]*)\)\s*\{{", code)
            body = code[b.end() : b.end() + 4000]
        assert "PDL_WAIT()" in body.split("\n}\n")[0], name


@pytest.mark.parametrize(
    ("head_dim", "q8", "setting", "in_place", "want"),
    [(128, False, None, True, True), (128, True, None, True, True), (64, True, None, True, True),
     (64, True, None, False, False), (64, False, None, True, True), (256, True, None, True, True),
     (96, False, None, True, False), (128, True, False, True, False), (64, True, True, False, True),
     (96, False, True, True, False)],
)  # fmt: skip
def test_decode_attention_kernel_choice(head_dim, q8, setting, in_place, want):
    # Auto: tensor cores for fp16 KV and for q8_0 read in place (attn_tq8); with q8_0 tiles
    # converted to fp16 first (q8_in_place=False) tensor cores from head_dim 128 (faster there
    # on the H200, 66aca0f), CUDA cores at head_dim 64. An explicit setting wins where a
    # tensor-core kernel has an instance; other head dims always take attn_split.
    from types import SimpleNamespace

    from agentcore.engine.backends.cuda import CudaOps

    ops = SimpleNamespace(tc_attention=setting, q8_in_place=in_place)
    spec = SimpleNamespace(head_dim=head_dim)
    assert CudaOps.uses_tc_attention(ops, spec, q8) is want


def test_capture_errors_worth_recording_again():
    # Invalidated (901) and implicit-dependency (906) captures, by our launcher's CUresult code
    # or by CuPy's error names, are recorded again; any other CUDA error is not.
    from agentcore.engine.backends.cuda_graph import capture_invalidated

    assert capture_invalidated(RuntimeError("cuLaunchKernelEx failed for k: CUresult 901"))
    assert capture_invalidated(RuntimeError("cuLaunchKernelEx failed for k: CUresult 906"))
    assert capture_invalidated(RuntimeError("cudaErrorStreamCaptureInvalidated: operation failed"))
    assert capture_invalidated(RuntimeError("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: invalidated"))
    assert not capture_invalidated(RuntimeError("cuLaunchKernelEx failed for k: CUresult 700"))
    assert not capture_invalidated(ValueError("boom"))
