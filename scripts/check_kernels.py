"""Compile agentcore's CUDA module on a machine without a GPU and report registers and spills.

    pip install --target /tmp/nvrtc nvidia-cuda-nvrtc-cu12          # libnvrtc (CUDA C++ -> PTX)
    pip install --target /tmp/nvcc nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12  # ptxas, headers
    python scripts/check_kernels.py [REGEX] [--nvrtc DIR] [--nvcc DIR]

The module is the one ``agentcore.engine.backends.cuda`` builds (same sources, options and
name expressions); NVRTC compiles it for compute_90, ptxas for sm_90 with ``-v``, and each
kernel whose mangled name matches REGEX (default ``attn``) gets one line: registers, stack
and spill bytes. A compile error exits non-zero with NVRTC's log. A development aid, not a
test: register counts decide how many blocks an SM holds (attn_tq8 is written for 64).
"""

from __future__ import annotations

import argparse
import ctypes
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import agentcore.engine.backends.cuda as cu


def module_source() -> tuple[str, tuple[str, ...], list[str]]:
    """(code, options, name expressions) exactly as ``cuda._module`` passes them to CuPy."""
    got: dict = {}

    class _Capture:
        @staticmethod
        def RawModule(code: str, options: tuple[str, ...], name_expressions: list[str]) -> None:
            got.update(code=code, options=options, names=name_expressions)

    real = cu._cupy
    cu._cupy = lambda: _Capture  # type: ignore[assignment]
    try:
        cu._module.__wrapped__()
    finally:
        cu._cupy = real
    return got["code"], got["options"], got["names"]


def nvrtc_ptx(lib: ctypes.CDLL, code: str, options: list[str], names: list[str]) -> bytes:
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"agentcore.cu", 0, None, None):
        raise RuntimeError("nvrtcCreateProgram failed")
    for n in names:
        lib.nvrtcAddNameExpression(prog, n.encode())
    opts = [o.encode() for o in options]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc:
        sys.exit(f"NVRTC failed ({rc}):\n{log.value.decode(errors='replace')}")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    return ptx.value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("regex", nargs="?", default="attn")
    ap.add_argument("--nvrtc", default="/tmp/nvrtc", help="pip --target dir of nvidia-cuda-nvrtc-cu12")
    ap.add_argument("--nvcc", default="/tmp/nvcc", help="pip --target dir of nvidia-cuda-nvcc-cu12 + runtime")
    a = ap.parse_args()
    libs = sorted(Path(a.nvrtc).glob("nvidia/cuda_nvrtc/lib/libnvrtc.so*"))
    ptxas = Path(a.nvcc) / "nvidia/cuda_nvcc/bin/ptxas"
    include = Path(a.nvcc) / "nvidia/cuda_runtime/include"
    if not libs or not ptxas.exists():
        sys.exit(f"no libnvrtc under {a.nvrtc} or ptxas under {a.nvcc}: see the install lines in this file")
    code, options, names = module_source()
    ptx = nvrtc_ptx(ctypes.CDLL(str(libs[0])), code, [*options, "--gpu-architecture=compute_90", f"-I{include}"],
                    names)  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "m.ptx").write_bytes(ptx)
        r = subprocess.run([str(ptxas), "-arch=sm_90", "-v", f"{d}/m.ptx", "-o", f"{d}/m.cubin"],
                           check=False, capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        sys.exit(f"ptxas failed:\n{r.stderr[-4000:]}")
    lines, pat = r.stderr.splitlines(), re.compile(a.regex)
    for i, line in enumerate(lines):
        if "Compiling entry function" in line and pat.search(line):
            info = " | ".join(x.split("ptxas info    :")[-1].strip() for x in lines[i + 1 : i + 4])
            print(line.split("'")[1], "|", re.sub(r"Function properties for \S+", "", info))


if __name__ == "__main__":
    main()
