"""The CUDA block decoders (kernels/quant.cu) agree with the gguf package's dequantizers.

quant.cu compiles as plain C++ too, so its per-type decode of GGUF blocks is checked here
on the CPU, without CuPy or a GPU; the GPU tests then only have to trust the arithmetic.
"""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

SRC = Path(__file__).parents[1] / "agentcore" / "engine" / "backends" / "kernels" / "quant.cu"
QTYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q2_K", "Q4_K", "Q5_K", "Q6_K"]
# Offsets of the fp16 scale fields, set to finite values so random blocks decode to numbers.
SCALES = {"Q4_0": (0,), "Q4_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82), "Q4_K": (0, 2),
          "Q5_K": (0, 2), "Q6_K": (208,)}  # fmt: skip


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the decoders for the CPU")
    out = tmp_path_factory.mktemp("quant") / "libquant.so"
    subprocess.run([cxx, "-x", "c++", "-O1", "-shared", "-fPIC", str(SRC), "-o", str(out)],
                   check=True)  # fmt: skip
    return ctypes.CDLL(str(out))


def random_rows(qt: GGMLQuantizationType, rows: int, cols: int, rng) -> np.ndarray:
    if qt == GGMLQuantizationType.F32:
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    if qt in (GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        h = x.astype(np.float16) if qt == GGMLQuantizationType.F16 else (x.view(np.uint32) >> 16).astype(np.uint16)
        return h.view(np.uint8)
    block, size = GGML_QUANT_SIZES[qt]
    blocks = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    for off in SCALES[qt.name]:
        blocks[:, off : off + 2] = rng.uniform(-0.1, 0.1, len(blocks)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("name", QTYPES)
def test_decoder_matches_gguf_dequantize(lib, name):
    qt = GGMLQuantizationType[name]
    rows, cols = 3, 512
    raw = np.ascontiguousarray(random_rows(qt, rows, cols, np.random.default_rng(1)))
    if qt == GGMLQuantizationType.F32:
        ref = raw.view(np.float32)
    elif qt == GGMLQuantizationType.F16:
        ref = raw.view(np.float16).astype(np.float32)
    elif qt == GGMLQuantizationType.BF16:
        ref = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        ref = gguf_quants.dequantize(raw, qt).reshape(rows, cols)
    out = np.empty((rows, cols), np.float32)
    rc = lib.deq_rows_host(int(qt), raw.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(raw.shape[1]),
                           rows, cols, out.ctypes.data_as(ctypes.c_void_p))  # fmt: skip
    assert rc == 0
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
