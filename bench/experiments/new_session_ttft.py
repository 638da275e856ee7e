"""What a short prompt's TTFT pays besides its forward (CUDA), by session kind.

    python bench/experiments/new_session_ttft.py MODEL.gguf [N_TOKENS ...] [--profile] [--gc-freeze]

For each prompt size, three turns of a fresh random prompt: ``new`` (a session id never
seen, no retired session to reuse: a KV pool and a decoder are built and a graph captured),
``spare`` (a new id right after another session was forgotten: its buffers are reused),
``same`` (the same id with a different prompt: the live KV is truncated to the common
prefix). Each row: TTFT, and host milliseconds of the steps on the compute thread
(``_new_session``, ``CudaKV.grow``, ``CudaDecoder.prefill`` with the graph capture it may
record inside it, ``start``, the first ``sample``), timed with no device syncs added
(``prefill`` ends with its stream's sync, so its time includes the GPU's), the cyclic
garbage collector's pauses during the turn (any thread; ``gc.callbacks``), and the raw
forward (``Transformer.forward`` alone, synced) of the same size for reference.
``--gc-freeze``: ``gc.freeze()`` after the warm-up (an A/B of the collector's share). ``--profile``: one more new session per size under cProfile (on the compute thread), its
top functions by cumulative time. Prints JSON lines.
"""

import cProfile
import functools
import gc
import json
import pstats
import sys
import time
from pathlib import Path

import anyio
import cupy as cp

from agentcore.bench._public import complete, prompt_request
from agentcore.bench.gpu import raw_prefill
from agentcore.engine.backends.cuda import CudaKV
from agentcore.engine.backends.cuda_graph import CudaDecoder
from agentcore.engine.local import LocalEngine

path = Path(sys.argv[1])
profile = "--profile" in sys.argv
freeze = "--gc-freeze" in sys.argv
sizes = [int(x) for x in sys.argv[2:] if not x.startswith("--")] or [16, 512, 2048]
parts: dict[str, list[float]] = {}
gc_pauses: list[tuple[int, float]] = []  # (generation, ms) of each cyclic collection
_gc_t0 = [0.0]


def _on_gc(phase, info):
    if phase == "start":
        _gc_t0[0] = time.perf_counter()
    else:
        gc_pauses.append((info["generation"], round((time.perf_counter() - _gc_t0[0]) * 1000, 2)))


gc.callbacks.append(_on_gc)


def timed(owner, name, label=None):
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def inner(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            parts.setdefault(label or name, []).append(round((time.perf_counter() - t0) * 1000, 2))

    setattr(owner, name, inner)


eng = LocalEngine.from_gguf(path, device="cuda", context_length=40960)
anyio.run(complete, eng, prompt_request(eng, 64, "warm", 4))
for owner, name in ((LocalEngine, "_new_session"), (CudaKV, "grow"), (CudaDecoder, "prefill"),
                    (CudaDecoder, "_capture"), (CudaDecoder, "start"), (CudaDecoder, "sample")):
    timed(owner, name)
if freeze:  # every object so far out of the collector's sight: its pauses then scan new objects only
    gc.collect()
    gc.freeze()


def raw_forward(n: int) -> float:
    """ms of the bare forward of n tokens (the GPU bench's raw prefill: best of two, synced)."""
    return round(n / raw_prefill(cp, eng, n) * 1000, 2)


for n in sizes:
    for sid in list(eng.sessions):
        eng.forget(sid)
    eng._spare.clear()  # nothing to reuse: the next session is built from scratch
    for kind, sid in (("new", f"a{n}"), ("spare", f"b{n}"), ("same", f"b{n}")):
        if kind == "spare":
            eng.forget(f"a{n}")  # retired: its buffers are kept for the next new session
        req = prompt_request(eng, n, sid, 4, seed=1000 + 10 * n + len(kind))
        parts.clear()
        gc_pauses.clear()
        done = anyio.run(complete, eng, req)
        rec = eng.turns[-1]
        print(json.dumps({"tokens": done.usage.prompt_tokens, "kind": kind, "ttft_ms": round(done.usage.ttft_s * 1000, 2),
                          "prefill_ms_record": round(rec.prefill_ms, 2), "cached": done.usage.cached_tokens,
                          "parts_ms": dict(parts), "gc_ms": round(sum(ms for _, ms in gc_pauses), 2),
                          "gc_pauses": [p for p in gc_pauses if p[1] >= 1.0]}), flush=True)
    print(json.dumps({"tokens": n, "kind": "raw_forward", "ms": raw_forward(n)}), flush=True)
    if profile:  # one more new session, under cProfile on the compute thread
        for sid in list(eng.sessions):
            eng.forget(sid)
        eng._spare.clear()
        prof = cProfile.Profile()
        eng._worker.submit(prof.enable).result()
        done = anyio.run(complete, eng, prompt_request(eng, n, f"p{n}", 4, seed=7 * n))
        eng._worker.submit(prof.disable).result()
        st = pstats.Stats(prof)
        rows = sorted(((v[3], v[2], v[0], f"{Path(k[0]).name}:{k[1]}:{k[2]}") for k, v in st.stats.items()), reverse=True)
        print(json.dumps({"tokens": n, "kind": "new_profiled", "ttft_ms": round(done.usage.ttft_s * 1000, 2),
                          "top_cumulative_ms": [(round(c * 1000, 2), round(t * 1000, 2), calls, name)
                                                for c, t, calls, name in rows[:45]]}), flush=True)
