"""The turns right after a cold checkpoint, and where their time goes (CUDA).

    python bench/experiments/turn_after_checkpoint.py MODEL.gguf 8192,32768 [asis,nopin,flushed] [F16_BUDGET]

Per variant a fresh engine (as the cache bench's: context 40960, a 16 GB RAM tier); per
context: a cold turn, ``checkpoint``, then the same session's turn again (``live``: its own
KV) and another session's with the same prompt (``behind``: the save in flight's snapshot,
or the store), each with a frame sampler on the compute and save threads (their top
stacks), the save's phases (the copy to the host, ``store.save``) timed against the live
turn, and the device pool before and after. Variants: ``asis``; ``nopin`` (no block pinned
ahead: every block goes through the stages); ``flushed`` (``flush()`` before the turns).
Prints JSON lines: one per (variant, context), then the top stacks.
"""

import collections
import gc
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio
import cupy as cp

from agentcore.bench._public import complete, prompt_request
from agentcore.engine.local import LocalEngine

path = Path(sys.argv[1])
contexts = [int(x) for x in sys.argv[2].split(",")]
variants = sys.argv[3].split(",") if len(sys.argv) > 3 else ["asis", "flushed"]
f16 = None if len(sys.argv) <= 4 else int(sys.argv[4])



def new_engine():
    t0 = time.perf_counter()
    e = LocalEngine.from_gguf(path, device="cuda", context_length=40960, kv_dir=tempfile.mkdtemp(prefix="probe-kv-"),
                              kv_ram_mb=16384, kv_disk_mb=65536)
    if f16 is not None:
        e.ops.f16_budget = f16
    print(json.dumps({"engine_init_s": round(time.perf_counter() - t0, 2), "pinned_blocks": e._pinned.count,
                      "pinned_bytes": e._pinned.count * e._pinned.nbytes}), flush=True)
    anyio.run(complete, e, prompt_request(e, 64, "warm", 4))
    wrap(e, "_copy_behind", "copy_behind")
    wrap(e.store, "save", "store_save")
    return e


pool = cp.get_default_memory_pool()
events = []


def wrap(obj, name, tag):
    orig = getattr(obj, name)

    def inner(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            events.append((tag, t0, time.perf_counter()))

    setattr(obj, name, inner)




class Sampler(threading.Thread):
    def __init__(self, names):
        super().__init__(daemon=True)
        self.names, self.stop, self.counts, self.n = names, threading.Event(), {}, collections.Counter()

    def run(self):
        ids = {t.ident: t.name for t in threading.enumerate()}
        while not self.stop.is_set():
            frames = sys._current_frames()
            for tid, fr in frames.items():
                name = ids.get(tid, "")
                tag = next((n for n in self.names if name.startswith(n)), None)
                if tag is None:
                    continue
                stack = []
                f = fr
                while f is not None and len(stack) < 4:
                    stack.append(f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}:{f.f_lineno}")
                    f = f.f_back
                self.counts.setdefault(tag, collections.Counter())[" < ".join(stack)] += 1
                self.n[tag] += 1
            time.sleep(0.0005)


def measured(eng, req, sampler_names=("agentcore-compute", "agentcore-kv-snapshot")):
    before = (pool.used_bytes() >> 20, pool.total_bytes() >> 20, cp.cuda.runtime.memGetInfo()[0] >> 20)
    s = Sampler(list(sampler_names))
    s.start()
    t0 = time.perf_counter()
    u = anyio.run(complete, eng, req).usage
    t1 = time.perf_counter()
    s.stop.set()
    s.join()
    after = (pool.used_bytes() >> 20, pool.total_bytes() >> 20, cp.cuda.runtime.memGetInfo()[0] >> 20)
    rec = eng.turns[-1]
    return t0, t1, {"ttft_ms": round(u.ttft_s * 1000, 1), "wall_ms": round((t1 - t0) * 1000, 1),
                    "prefill_ms": round(rec.prefill_ms, 2), "load_ms": round(rec.load_ms, 2),
                    "snapshot": rec.snapshot, "source": u.cache_source, "cached": u.cached_tokens,
                    "pool_mb_before": before, "pool_mb_after": after, "samples": dict(s.n)}, s


for v in variants:
    eng = new_engine()
    pinned = eng._pinned
    for ctx in contexts:
        eng._pinned = None if v == "nopin" else pinned
        sid = f"p{ctx}{v}"
        req = prompt_request(eng, ctx, sid, 1, seed=ctx + 7 * len(sid))
        cold = anyio.run(complete, eng, req).usage
        events.clear()
        t_ck0 = time.perf_counter()
        info = anyio.run(eng.checkpoint, req)
        t_ck1 = time.perf_counter()
        if v == "flushed":
            eng.flush()
        t0, t1, live, s1 = measured(eng, req)
        other = req.model_copy(update={"session_id": sid + "-other"})
        t2, t3, beh, s2 = measured(eng, other)
        eng.flush()
        t4 = time.perf_counter()
        ev = [(tag, round((a - t0) * 1000, 1), round((b - t0) * 1000, 1)) for tag, a, b in events]
        print(json.dumps({"ctx": ctx, "variant": v, "cold_ttft_ms": round(cold.ttft_s * 1000, 1), "cold_cached": cold.cached_tokens,
                          "ck_ms": round((t_ck1 - t_ck0) * 1000, 1), "store_ms": round(info.store_ms, 1),
                          "live": live, "behind": beh, "behind_start_rel_live_ms": round((t2 - t0) * 1000, 1),
                          "flush_after_ms": round((t4 - t3) * 1000, 1), "events_rel_live_ms": ev,
                          "pinned_free": pinned.free if pinned else None}), flush=True)
        for name, smp in (("live", s1), ("behind", s2)):
            for tag, c in smp.counts.items():
                for stack, n in c.most_common(5):
                    print(json.dumps({"ctx": ctx, "variant": v, "turn": name, "thread": tag[11:], "n": n,
                                      "stack": stack}), flush=True)
        eng.forget(sid)
        eng.forget(other.session_id)
    eng.close()
    del eng
    gc.collect()
    pool.free_all_blocks()
