"""Where a short prefill's time goes: host enqueue against GPU work (an agent turn adds a
few hundred tokens to a live session; its TTFT is this prefill).

For each size: ``wall`` (synchronized before and after), ``host`` (the Python that enqueues
the forward while a spin kernel keeps the GPU busy, so nothing it queues can run yet) and
``gpu`` (events around the queued work once the spin ends: the kernels back to back, no
host gaps). host > gpu means the turn is bound by its launches. ``wall_fresh_thread``: the
same forward on a new thread each time, as ``LocalEngine.stream`` runs every turn. Then a cProfile of one
enqueue, and agent-like public turns (checkpoint, then stream of the same prompt) with their
TTFTs. Prints JSON lines.

    python bench/experiments/turn_profile.py MODEL.gguf [SIZES] [--ctx=2048] [--profile=280]
"""

import cProfile
import io
import json
import pstats
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import cupy as cp
import numpy as np

from agentcore.bench._public import agent_session
from agentcore.engine.local import LocalEngine

SPIN = cp.RawKernel(r"""
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}""", "spin")


def split(eng, ids, pos0, kv, spin_ms=400.0):
    """(host ms to enqueue, gpu ms of the queued work, wall ms synchronized)."""
    tr = eng.transformer
    cp.cuda.runtime.deviceSynchronize()
    kv.length = pos0
    t0 = time.perf_counter()
    tr.hidden(ids, pos0, kv)
    cp.cuda.runtime.deviceSynchronize()
    wall = (time.perf_counter() - t0) * 1000
    kv.length = pos0
    s = cp.cuda.get_current_stream()
    SPIN((1,), (1,), (np.uint64(spin_ms * 1e6),), stream=s)
    e0 = cp.cuda.Event()
    e0.record(s)
    t0 = time.perf_counter()
    tr.hidden(ids, pos0, kv)
    host = (time.perf_counter() - t0) * 1000
    e1 = cp.cuda.Event()
    e1.record(s)
    e1.synchronize()
    gpu = cp.cuda.get_elapsed_time(e0, e1)
    return host, gpu, wall, host < spin_ms


def main(argv):
    path = Path(argv[0])
    sizes = [int(x) for x in (argv[1] if len(argv) > 1 and not argv[1].startswith("--") else "16,64,280,512,2048").split(",")]
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))
    ctx, prof_n = int(opts.get("ctx", 2048)), int(opts.get("profile", 280))
    eng = LocalEngine.from_gguf(path, device="cuda", context_length=40960,
                                kv_dir=Path(tempfile.mkdtemp()), kv_ram_mb=16384, kv_disk_mb=65536)
    dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    base = {"model": path.stem, "device": dev, "git_sha": opts.get("git-sha"), "pos0": ctx}
    rng = np.random.default_rng(0)
    kv = eng.ops.new_kv(eng.spec, ctx + max(sizes) + 64)
    eng.transformer.hidden(rng.integers(0, eng.spec.vocab_size, ctx).tolist(), 0, kv)  # the live context
    for n in sizes:
        ids = rng.integers(0, eng.spec.vocab_size, n).tolist()
        split(eng, ids, ctx, kv, 50)  # warm-up: compile, cuBLAS plans, pool
        rows = [split(eng, ids, ctx, kv) for _ in range(3)]
        host, gpu, wall, ok = (min(r[i] for r in rows) for i in range(4))
        fresh = []  # the same forward on a thread of its own each time (as stream() runs a turn)
        for _ in range(3):
            th = threading.Thread(target=lambda f=fresh, i=ids: f.append(split(eng, i, ctx, kv, 50)[2]))
            th.start()
            th.join()
        print(json.dumps({"figure": "prefill_split", "tokens": n, "host_ms": round(host, 2), "gpu_ms": round(gpu, 2),
                          "wall_ms": round(wall, 2), "wall_fresh_thread_ms": [round(x, 2) for x in fresh],
                          "host_inside_spin": bool(ok), **base}), flush=True)
    ids = rng.integers(0, eng.spec.vocab_size, prof_n).tolist()
    pr = cProfile.Profile()
    cp.cuda.runtime.deviceSynchronize()
    kv.length = ctx
    pr.enable()
    eng.transformer.hidden(ids, ctx, kv)
    cp.cuda.runtime.deviceSynchronize()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(25)
    print(buf.getvalue(), file=sys.stderr, flush=True)
    # Public: agent-like sessions, each turn ~280 new tokens, checkpoint then stream; with the
    # engine's compute thread, then with a fresh thread per call (as before 2026-12-07).
    for variant in ("compute-thread", "thread-per-call") if hasattr(eng, "_worker") else ("old",):
        if variant == "thread-per-call":
            eng._worker.submit = thread_per_call
        agent_turns(eng, variant, base, ctx)
    eng.close()


def thread_per_call(fn, *args):
    fut = Future()

    def run():
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001
            fut.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return fut


def agent_turns(eng, variant, base, ctx, turns=6):
    sid = f"agent-{variant}"
    for turn, done, info in agent_session(eng, sid, ctx, turns):
        u = done.usage
        print(json.dumps({"figure": "agent_turn", "variant": variant, "turn": turn, "prompt": u.prompt_tokens,
                          "cached": u.cached_tokens, "ttft_ms": round(u.ttft_s * 1000, 2),
                          "decode_tok_s": round(u.decode_tokens_per_s, 1),
                          "next_checkpoint_prefill_ms": round(info.prefill_ms, 2),
                          "next_checkpoint_new": info.tokens - u.prompt_tokens - u.completion_tokens,
                          "next_checkpoint_ms": round(info.ms, 2), "next_checkpoint_store_ms": round(info.store_ms, 2),
                          **base}), flush=True)
    eng.forget(sid)


if __name__ == "__main__":
    main(sys.argv[1:])
