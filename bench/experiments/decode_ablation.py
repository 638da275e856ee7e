"""What each kernel kind costs inside the decode graph: ms per token of CudaDecoder's graph
replayed back to back (as ``generate`` runs it, PDL as the engine sets it) with one kind of
launch left out at a time. The difference to the full step is that kind's share of a token
as the graph runs it (overlap and launch gaps included), which per-kernel events cannot
show. The outputs are wrong when something is left out; only the timing is read.

    python bench/experiments/decode_ablation.py [--quick] MODEL.gguf [CTX ...]

``--quick``: only the full step and the step without attention, no carveout pass.

Prints one JSON line per context and variant.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cupy as cp

from agentcore.bench.gpu import fill_kv
from agentcore.engine.backends import cuda_graph
from agentcore.engine.backends.cuda_graph import CudaDecoder
from agentcore.engine.local import LocalEngine

VARIANTS = [
    (),
    ("attention",),
    ("rope_kv",),
    ("quant_x",),
    ("gemv_qkv",),
    ("gemv_out",),
    ("gemv_gate_up",),
    ("gemv_down",),
    ("gemv_head",),
    ("attention", "rope_kv", "quant_x"),
    ("attention", "rope_kv", "quant_x", "gemv_qkv", "gemv_out", "gemv_gate_up", "gemv_down"),
]


class _Noop:
    def __call__(self, *a, **k) -> None:
        return None


@contextlib.contextmanager
def leaving_out(eng: LocalEngine, skip: tuple[str, ...]) -> Iterator[None]:
    ops, m = eng.ops, eng.transformer
    parts: set[int] = set()
    for b in m.layers:
        for kind, lin in (("gemv_qkv", b.qkv), ("gemv_out", b.out), ("gemv_gate_up", b.gate_up),
                          ("gemv_down", b.down)):  # fmt: skip
            if kind in skip:
                parts |= {id(p) for p in lin.parts}
    if "gemv_head" in skip:
        parts |= {id(p) for p in m.head.parts}
    saved_kernel = cuda_graph._kernel
    gemv, quantize = ops.gemv, ops.quantize

    def kernel(name: str):
        return _Noop() if "rope_kv" in skip and name.startswith("rope_kv") else saved_kernel(name)

    def gemv_(part, *a, **k):
        return id(part) not in parts and gemv(part, *a, **k)

    def quantize_(x, cols, *, out=None, **k):
        if out is None:
            out = ops._xq if ops._xq is not None else quantize(x, cols, **k)
        return out

    cuda_graph._kernel = kernel
    ops.gemv = gemv_
    if "quant_x" in skip:
        ops.quantize = quantize_
    if "attention" in skip:
        ops.attend_decode = _Noop()
    try:
        yield
    finally:
        cuda_graph._kernel = saved_kernel
        for name in ("gemv", "quantize", "attend_decode"):
            ops.__dict__.pop(name, None)


def ms_per_token(eng: LocalEngine, ctx: int, skip: tuple[str, ...], steps: int = 200) -> float:
    kv = eng.ops.new_kv(eng.spec, ctx + 2 * steps + 64)
    fill_kv(cp, kv, ctx)
    with leaving_out(eng, skip):
        dec = CudaDecoder(eng.transformer, kv)
        dec.start(None, reserve=2 * steps + 16)
        dec.generate(1, 16)
        best = float("inf")
        for _ in range(3):
            kv.length = ctx
            cp.cuda.runtime.deviceSynchronize()
            t0 = time.perf_counter()
            dec.generate(1, steps)
            best = min(best, (time.perf_counter() - t0) / steps)
        dec.settle()
    del dec, kv
    return best * 1e3


def carveout(eng: LocalEngine, percent: int) -> None:
    """Set every decode kernel's preferred shared-memory carveout (-1: the driver's default;
    100: the most shared memory), so no kernel boundary reconfigures an SM's L1/shared split."""
    from agentcore.engine.backends import cuda

    q = {p.qtype for b in eng.transformer.layers for lin in (b.qkv, b.out, b.gate_up, b.down) for p in lin.parts}
    q |= {p.qtype for p in eng.transformer.head.parts}
    names = [f"gemv<{t},{m}>" for t in q & set(cuda.NATIVE_QTYPES) for m in (0, 1, 2)]
    names += [f"gemv_q8<{t},{m}>" for t in q & set(cuda.INT8_QTYPES) for m in (0, 1, 2)]
    names += [f"attn_tc<{d},{x}>" for d in (64, 128) for x in (0, 1)]
    names += ["quant_x", "rope_kv_decode", "rope_kv_decode_q8", "sample_token"]
    for name in names:
        cuda._kernel(name).preferred_shared_memory_carveout = percent


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    path = Path(argv[0])
    contexts = [int(c) for c in argv[1:]] or [64]
    eng = LocalEngine.from_gguf(path, device="cuda", context_length=40960)
    for ctx in contexts:
        full = None
        for skip in VARIANTS[:2] if quick else VARIANTS:
            ms = ms_per_token(eng, ctx, skip)
            full = ms if full is None else full
            print(json.dumps({"model": path.stem, "ctx": ctx, "left_out": list(skip),
                              "ms_per_token": round(ms, 4), "saved_ms": round(full - ms, 4),
                              "pdl": eng.ops.pdl}), flush=True)  # fmt: skip
        if quick:
            continue
        carveout(eng, 100)
        ms = ms_per_token(eng, ctx, ())
        carveout(eng, -1)
        print(json.dumps({"model": path.stem, "ctx": ctx, "left_out": [], "carveout": 100,
                          "ms_per_token": round(ms, 4), "saved_ms": round(full - ms, 4)}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
