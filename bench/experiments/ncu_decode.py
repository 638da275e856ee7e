"""A few decode steps of MODEL at context CTX (CudaDecoder's graph, as ``generate`` runs it),
for Nsight Compute: run it under ``ncu --graph-profiling node --csv`` and sum the kernel
durations by name (``ncu_sum.py``) to set each kernel's own time beside its in-graph cost
(``decode_ablation.py``).

    ncu --graph-profiling node --metrics gpu__time_duration.sum,launch__shared_mem_config_size \
        --csv python bench/experiments/ncu_decode.py MODEL.gguf CTX [STEPS]
"""

from __future__ import annotations

import sys
from pathlib import Path

import cupy as cp

from agentcore.bench.gpu import fill_kv
from agentcore.engine.backends.cuda_graph import CudaDecoder
from agentcore.engine.local import LocalEngine


def main(argv: list[str]) -> int:
    path, ctx = Path(argv[0]), int(argv[1])
    steps = int(argv[2]) if len(argv) > 2 else 2
    eng = LocalEngine.from_gguf(path, device="cuda", context_length=max(4096, 2 * ctx))
    kv = eng.ops.new_kv(eng.spec, ctx + 64)
    fill_kv(cp, kv, ctx)
    dec = CudaDecoder(eng.transformer, kv)
    dec.start(None, reserve=32)
    dec.generate(1, steps)
    dec.settle()
    cp.cuda.runtime.deviceSynchronize()
    print("done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
