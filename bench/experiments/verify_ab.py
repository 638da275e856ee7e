"""What a prompt-lookup verify costs on the CUDA decoder, against a graph step: the figure that
says whether ``CudaDecoder.verify_drafts`` pays (written without a GPU, 2026-12-08; off by
default until this and tests/test_gpu_lookup.py have run).

    python bench/experiments/verify_ab.py MODEL[,MODEL] CTX[,CTX] [--widths=2,4,8] [--git-sha=SHA]

For each model, KV context and ``CudaOps.multi_token_gemv`` setting (False: each of a batch's
t rows reads every weight again, gemv_q8; True: one gemv_q8_n launch reads it once): ms a
token of the graph replayed back to back (``decode_ablation.ms_per_token``), and ms a
``CudaDecoder.verify`` of t tokens (eager forward of the batch, the head, t sampler launches,
one synchronisation; the best of 20 after a warm-up). ``break_even`` = verify / step - 1: the
draft tokens a verify must keep on average to tie sequential steps; a transcript whose
acceptance (``python -m agentcore.bench lookup``) is above it gains (accepted + 1) x step /
verify. One JSON line per model, context, setting and width.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cupy as cp

sys.path.insert(0, str(Path(__file__).parent))
from decode_ab import model_path
from decode_ablation import ms_per_token

from agentcore.bench.gpu import fill_kv
from agentcore.engine.backends.cuda_graph import CudaDecoder
from agentcore.engine.local import LocalEngine


def ms_per_verify(eng: LocalEngine, ctx: int, width: int, reps: int = 20) -> float:
    kv = eng.ops.new_kv(eng.spec, ctx + 64)
    fill_kv(cp, kv, ctx)
    dec = CudaDecoder(eng.transformer, kv)
    dec.start(None, reserve=32)
    ids = [1 + i for i in range(width)]
    dec.verify(ids)  # compiles and warms every kernel of the batch
    best = float("inf")
    for _ in range(reps):
        kv.length = ctx
        cp.cuda.runtime.deviceSynchronize()
        t0 = time.perf_counter()
        dec.verify(ids)
        best = min(best, time.perf_counter() - t0)
    dec.settle()
    del dec, kv
    return best * 1e3


def main(argv: list[str]) -> int:
    opts = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.startswith("--") and "=" in a}
    args = [a for a in argv if not a.startswith("--")]
    models, contexts = args[0].split(","), [int(c) for c in args[1].split(",")]
    widths = [int(w) for w in opts.get("--widths", "2,4,8").split(",")]
    sha = opts.get("--git-sha") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, check=False,
                                                 text=True).stdout.strip()  # fmt: skip
    dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    for name in models:
        path = model_path(name)
        eng = LocalEngine.from_gguf(path, device="cuda", context_length=40960)
        for ctx in contexts:
            step = ms_per_token(eng, ctx, ())
            for multi in (False, True):
                eng.ops.multi_token_gemv = multi
                for w in widths:
                    ms = ms_per_verify(eng, ctx, w)
                    print(json.dumps({"device": dev, "git_sha": sha, "model": path.stem, "kv_dtype": eng.ops.kv_dtype,
                                      "ctx": ctx, "multi_token_gemv": multi, "width": w,
                                      "ms_step": round(step, 4), "ms_verify": round(ms, 4),
                                      "break_even": round(ms / step - 1, 3)}), flush=True)  # fmt: skip
        del eng
        cp.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
