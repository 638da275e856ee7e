"""Decode-graph A/B of the work done before PDL_WAIT: ms a token of CudaDecoder's graph
replayed back to back (``decode_ablation.ms_per_token``: no host work, PDL as the engine
sets it) with decode attention queueing its first tiles before or after its wait
(``CudaOps.attn_early``) and rope_kv's L2 prefetch of the layer's later weights at several
budgets (``CudaOps.l2_prefetch``), in one process, so the variants share the GPU's state.

    python bench/experiments/decode_ab.py MODEL[,MODEL] CTX[,CTX] [--kv float16,q8_0]
        [--variants base,early,prefetch,both,...] [--git-sha SHA]

MODEL: a name from ``agentcore.bench.gpu.MODELS`` (a synthetic GGUF at the real shape, written
to /tmp/agentcore-bench as the GPU bench does) or a path. Variant names: ``base`` (neither),
``early`` (attention only), ``pfN`` (prefetch of N MiB a layer only), ``bothN`` (both),
``both`` = ``both24`` (the defaults). Prints one JSON line per model, KV dtype, context and
variant, the first variant's ms beside each.
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
from agentcore.engine.local import LocalEngine
from agentcore.testing.synthetic import write_synthetic_gguf


def variant(name: str) -> tuple[bool, int]:
    """(attn_early, l2_prefetch bytes) of a variant name."""
    if name == "base":
        return False, 0
    if name == "early":
        return True, 0
    if name == "both":
        return True, 24 << 20
    for prefix, early in (("both", True), ("pf", False)):
        if name.startswith(prefix):
            return early, int(name[len(prefix):]) << 20
    raise ValueError(f"unknown variant {name!r}")


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
    names = opts.get("--variants", "base,early,pf24,both").split(",")
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
                    ops.attn_early, ops.l2_prefetch = variant(v)
                    ms = ms_per_token(eng, ctx, ())
                    first = ms if first is None else first
                    print(json.dumps({"device": dev, "git_sha": sha, "model": path.stem, "kv_dtype": dtype,
                                      "ctx": ctx, "variant": v, "attn_early": ops.attn_early,
                                      "l2_prefetch_mib": ops.l2_prefetch >> 20, "ms_per_token": round(ms, 4),
                                      "vs_first": round(ms / first, 4), "pdl": ops.pdl}), flush=True)  # fmt: skip
        del eng, ops
        cp.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
