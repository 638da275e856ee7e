"""Prefill with fp16 weight copies resident (``CudaOps.f16_weights``, the default where they
fit) against dequantizing every weight every forward, in one process on the same engine.

Per mode: ``raw`` forwards of N tokens appended at position 2048 of a live KV (synchronized,
best of 3), a cold public turn (``LocalEngine.stream``, TTFT) of 512 and 2048 tokens, and an
agent-like session (``agent_session``: each checkpoint prefills a ~280-token tool result; its
``prefill_ms``, then the TTFT of the turn after it). Prints JSON lines.

    python bench/experiments/prefill_f16.py MODEL.gguf [--sizes 16,64,280,512,2048]
"""

import json
import sys
import time

import anyio
import cupy as cp
import numpy as np

from agentcore.bench._public import agent_session, complete, prompt_request
from agentcore.bench.gpu import best_forward_s
from agentcore.engine.backends.cuda import CudaLinear
from agentcore.engine.local import LocalEngine


def linears(obj, seen=None):
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, CudaLinear):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from linears(o, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("agentcore"):
        for o in vars(obj).values():
            yield from linears(o, seen)


def main() -> None:
    path = sys.argv[1]
    sizes = [16, 64, 280, 512, 2048]
    if "--sizes" in sys.argv:
        sizes = [int(s) for s in sys.argv[sys.argv.index("--sizes") + 1].split(",")]
    eng = LocalEngine.from_gguf(path, device="cuda", context_length=16384)
    anyio.run(complete, eng, prompt_request(eng, 64, "warm-up", 4))
    lins = list(linears(eng.transformer))
    f16_bytes = sum(2 * lin.rows * lin.cols for lin in lins)
    base = {"model": eng.spec.name, "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
            "linears": len(lins), "f16_bytes": f16_bytes}
    rng = np.random.default_rng(0)
    budget = 1 << 62  # resident mode: every matrix (the warm-up has already spent the default budget)
    for mode in ("per-forward", "resident", "per-forward", "resident"):
        for lin in lins:
            lin.w16 = None
        eng.ops.f16_budget = 0 if mode == "per-forward" else budget
        eng.ops._f16_auto = False
        kv = eng.ops.new_kv(eng.spec, 2048 + max(sizes) + 64)
        eng.transformer.forward(rng.integers(0, eng.spec.vocab_size, 2048).tolist(), 0, kv)
        for n in sizes:
            ids = rng.integers(0, eng.spec.vocab_size, n).tolist()
            best = best_forward_s(cp, eng, ids, kv, pos0=2048, reps=3)
            print(json.dumps({"figure": "raw_prefill_at_2048", "mode": mode, "tokens": n,
                              "ms": round(best * 1000, 2), "resident": sum(lin.w16 is not None for lin in lins),
                              **base}), flush=True)  # fmt: skip
        del kv
        for n in (512, 2048):
            sid = f"cold-{n}-{mode}-{time.perf_counter()}"
            done = anyio.run(complete, eng, prompt_request(eng, n, sid, 1))
            print(json.dumps({"figure": "public_cold_ttft", "mode": mode, "tokens": done.usage.prompt_tokens,
                              "ttft_ms": round(done.usage.ttft_s * 1000, 2), **base}), flush=True)  # fmt: skip
            eng.forget(sid)
        sid = f"agent-{mode}-{time.perf_counter()}"
        for turn, done, info in agent_session(eng, sid, 2048, 4):
            print(json.dumps({"figure": "agent_turn", "mode": mode, "turn": turn,
                              "ttft_ms": round(done.usage.ttft_s * 1000, 2), "cached": done.usage.cached_tokens,
                              "prompt": done.usage.prompt_tokens,
                              "next_checkpoint_prefill_ms": round(info.prefill_ms, 2),
                              "next_checkpoint_ms": round(info.ms, 2), **base}), flush=True)  # fmt: skip
        eng.forget(sid)
        eng.flush()
    eng.close()


if __name__ == "__main__":
    main()
