"""Compile agentcore's CUDA module on a machine without a GPU and report registers and spills.

    pip install --target /tmp/nvcc nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12  # ptxas, headers
    python scripts/check_kernels.py [REGEX] [--nvcc DIR]

libnvrtc (CUDA C++ -> PTX) and the headers come from the dev extra's nvidia-cuda-nvrtc and
nvidia-cuda-runtime wheels (``agentcore.engine.backends.nvrtc.find_cuda_wheels``);
``--nvrtc DIR`` takes a ``pip install --target DIR nvidia-cuda-nvrtc-cu12`` instead.

The module is the one ``agentcore.engine.backends.cuda`` builds (same sources, options and
name expressions); NVRTC compiles it for compute_90, ptxas for sm_90 with ``-v``, and each
kernel whose mangled name matches REGEX (default ``attn``) gets one line: registers, stack
and spill bytes. A compile error exits non-zero with NVRTC's log. A development aid, not a
test: register counts decide how many blocks an SM holds (attn_tq8 is written for 64).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import agentcore.engine.backends.cuda as cu
from agentcore.engine.backends.nvrtc import KernelCompileError, compile_ptx, find_cuda_wheels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("regex", nargs="?", default="attn")
    ap.add_argument("--nvrtc", default=None, help="pip --target dir of nvidia-cuda-nvrtc-cu12 (default: the dev extra's)")
    ap.add_argument("--nvcc", default="/tmp/nvcc", help="pip --target dir of nvidia-cuda-nvcc-cu12 + runtime")
    a = ap.parse_args()
    ptxas = Path(a.nvcc) / "nvidia/cuda_nvcc/bin/ptxas"
    found = find_cuda_wheels()
    if a.nvrtc:
        libs = sorted(Path(a.nvrtc).glob("nvidia/cuda_nvrtc/lib/libnvrtc.so*"))
        found = (libs[0], Path(a.nvcc) / "nvidia/cuda_runtime/include") if libs else None
    if found is None or not ptxas.exists():
        sys.exit(f"no libnvrtc (dev extra or --nvrtc) or no ptxas under {a.nvcc}: see the install lines in this file")
    lib, include = found
    lines, pat = [], re.compile(a.regex)
    for module in cu.KERNEL_MODULES:
        try:
            ptx = compile_ptx(lib, cu.kernel_source(module),
                              [*cu.NVRTC_OPTIONS, "--gpu-architecture=compute_90", f"-I{include}"],
                              cu.kernel_names(module))  # fmt: skip
        except KernelCompileError as e:
            sys.exit(str(e))
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "m.ptx").write_bytes(ptx)
            r = subprocess.run([str(ptxas), "-arch=sm_90", "-v", f"{d}/m.ptx", "-o", f"{d}/m.cubin"],
                               check=False, capture_output=True, text=True)  # fmt: skip
        if r.returncode:
            sys.exit(f"ptxas failed:\n{r.stderr[-4000:]}")
        lines += r.stderr.splitlines()
    for i, line in enumerate(lines):
        if "Compiling entry function" in line and pat.search(line):
            info = " | ".join(x.split("ptxas info    :")[-1].strip() for x in lines[i + 1 : i + 4])
            print(line.split("'")[1], "|", re.sub(r"Function properties for \S+", "", info))


if __name__ == "__main__":
    main()
