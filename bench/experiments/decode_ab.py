"""Decode-graph A/B of CudaOps switches read at capture: ms a token of CudaDecoder's graph
replayed back to back (``decode_ablation.ms_per_token``: no host work, PDL as the engine
sets it), in one process, so the variants share the GPU's state. Variants: decode attention
queueing a split's first tiles after its wait (``base``, as before 8fd82d1) or before it
(``early``, ``CudaOps.attn_early``, the default); quant_x launched before the output and
down projections (``unfused``) or their inputs quantized by the kernels that write them
(``attn``, ``ffn``: ``CudaOps.fuse_quant_attn`` / ``fuse_quant_ffn``; ``fused``: both; off by
default). d164091 (``bench/results/2026-12-08-h100-decode-ab-fuse-d164091.jsonl``) had
another SwiGLU form (the last of each 4 blocks quantizing, after counters and a fence in every
thread) and a residual-GEMV variant, both since taken out.

    python bench/experiments/decode_ab.py MODEL[,MODEL] CTX[,CTX] [--kv=float16,q8_0]
        [--variants=base,early|unfused,attn,ffn,fused] [--git-sha=SHA]

MODEL: a name from ``agentcore.bench.gpu.MODELS`` (a synthetic GGUF at the real shape, written
to /tmp/agentcore-bench as the GPU bench does) or a path. Prints one JSON line per model, KV
dtype, context and variant, the first variant's ms beside each.

8fd82d1 also had rope_kv send the layer's later weights toward L2 before its wait (its
variants ``pfN`` / ``bothN``): every budget was slower (8B ctx 64 2.47 -> 3.40 ms a token with
8 MiB, SmolLM2 0.71 -> 0.87 with its whole 2 MB layer; H100,
``bench/results/2026-12-07-h100-decode-ab-8fd82d1.jsonl``), so it was taken out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cupy as cp

sys.path.insert(0, str(Path(__file__).parent))
from decode_ablation import ms_per_token

from agentcore.bench.gpu import MODELS
from agentcore.engine.backends.cuda import CudaOps
from agentcore.engine.local import LocalEngine
from agentcore.testing.synthetic import write_synthetic_gguf

VARIANTS = {  # name: the CudaOps switches it sets (the others at their defaults)
    "base": {"attn_early": False},
    "early": {"attn_early": True},
    "unfused": {"fuse_quant_attn": False, "fuse_quant_ffn": False},
    "attn": {"fuse_quant_attn": True, "fuse_quant_ffn": False},
    "ffn": {"fuse_quant_attn": False, "fuse_quant_ffn": True},
    "fused": {"fuse_quant_attn": True, "fuse_quant_ffn": True},
}
DEFAULTS = {k: getattr(CudaOps, k) for k in ("attn_early", "fuse_quant_attn", "fuse_quant_ffn")}


def model_path(name: str) -> Path:
    if name not in MODELS:
        return Path(name)
    path = Path("/tmp/agentcore-bench") / f"{name}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_gguf(path, **MODELS[name][0])
    return path


def main(argv: list[str]) -> int:
    opts = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.startswith("--") and "=" in a}
    args = [a for a in argv if not a.startswith("--")]
    models, contexts = args[0].split(","), [int(c) for c in args[1].split(",")]
    dtypes = opts.get("--kv", "float16").split(",")
    names = opts.get("--variants", "base,early").split(",")
    sha = opts.get("--git-sha") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, check=False,
                                                 text=True).stdout.strip()  # fmt: skip
    dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    for name in models:
        path = model_path(name)
        eng = LocalEngine.from_gguf(path, device="cuda", context_length=40960)
        ops = eng.ops
        for dtype in dtypes:
            ops.kv_dtype = dtype
            for ctx in contexts:
                first = None
                for v in names:
                    for key, value in {**DEFAULTS, **VARIANTS[v]}.items():
                        setattr(ops, key, value)
                    ms = ms_per_token(eng, ctx, ())
                    first = ms if first is None else first
                    print(json.dumps({"device": dev, "git_sha": sha, "model": path.stem, "kv_dtype": dtype,
                                      "ctx": ctx, "variant": v, "attn_early": ops.attn_early,
                                      "fuse_quant_attn": ops.fuse_quant_attn, "fuse_quant_ffn": ops.fuse_quant_ffn,
                                      "ms_per_token": round(ms, 4),
                                      "vs_first": round(ms / first, 4), "pdl": ops.pdl}), flush=True)  # fmt: skip
        del eng, ops
        cp.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
