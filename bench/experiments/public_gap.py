"""Where a public decode turn spends the time the raw graph replays do not: per-step host
timing of ``LocalEngine.stream`` (each ``Session.step`` / ``sample`` call timed on the host,
the rest of the loop by difference), then back-to-back replays of the same session's
decoder (its own KV, graph and split count), then a fresh raw decoder as the bench runs it.

    python bench/experiments/public_gap.py MODEL.gguf [CTX ...] [--kv float16,q8_0]

Prints one JSON line per kv dtype and context.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time

import cupy as cp

from agentcore.bench.gpu import public_turn, raw_decode
from agentcore.engine.local import LocalEngine
from agentcore.engine.session import Session


def main(argv: list[str]) -> int:
    kvs = ["float16", "q8_0"]
    if "--kv" in argv:
        i = argv.index("--kv")
        kvs = argv[i + 1].split(",")
        del argv[i : i + 2]
    path, ctxs = argv[0], [int(c) for c in argv[1:]] or [64]
    steps = 128
    times: dict[str, list[float]] = {"step": [], "sample": []}
    real_step, real_sample = Session.step, Session.sample

    def step(self, token, mask=None):
        t0 = time.perf_counter()
        out = real_step(self, token, mask)
        times["step"].append(time.perf_counter() - t0)
        return out

    def sample(self, mask=None):
        t0 = time.perf_counter()
        out = real_sample(self, mask)
        times["sample"].append(time.perf_counter() - t0)
        return out

    Session.step, Session.sample = step, sample
    for kv_dtype in kvs:
        eng = LocalEngine.from_gguf(path, device="cuda", context_length=40960,
                                    kv_dir=tempfile.mkdtemp(), kv_dtype=kv_dtype)  # fmt: skip
        public_turn(eng, 64, 16, "warm-up")
        for ctx in ctxs:
            for v in times.values():
                v.clear()
            sid = f"gap-{ctx}"
            _, done = public_turn(eng, ctx, steps, sid)
            u = done.usage
            st = sorted(times["step"])
            sess = eng.sessions[sid]
            dec = sess.decoder
            info = {"kv_dtype": kv_dtype, "ctx": u.prompt_tokens, "public_tok_s": round(u.decode_tokens_per_s, 1),
                    "decode_s": round((u.completion_tokens - 1) / u.decode_tokens_per_s, 4) if u.decode_tokens_per_s else None,
                    "steps_timed": len(st), "step_sum_s": round(sum(st), 4),
                    "step_ms_median": round(statistics.median(st) * 1e3, 3) if st else None,
                    "step_ms_p10_p90_max": [round(st[len(st) // 10] * 1e3, 3), round(st[9 * len(st) // 10] * 1e3, 3),
                                            round(st[-1] * 1e3, 3)] if st else None,
                    "sample_ms": [round(t * 1e3, 3) for t in times["sample"]],
                    "covers": dec._covers, "nsplit": getattr(dec, "nsplit", None),
                    "kv_capacity": sess.kv.capacity, "kv_length": sess.kv.length}  # fmt: skip
            # The same session's decoder, replayed back to back from where the turn ended.
            dec.settle()
            n0 = sess.kv.length
            steps2 = min(steps, sess.kv.capacity - n0 - 2)
            cp.cuda.runtime.deviceSynchronize()
            t0 = time.perf_counter()
            dec.generate(1, steps2)
            info["same_decoder_replays_tok_s"] = round(steps2 / (time.perf_counter() - t0), 1)
            sess.kv.length = n0
            fast, synced, rdec = raw_decode(cp, eng, ctx, steps)
            info["raw_tok_s"], info["raw_sync_tok_s"] = round(fast, 1), round(synced, 1)
            info["raw_covers"], info["raw_nsplit"] = rdec._covers, rdec.nsplit
            del rdec
            print(json.dumps(info), flush=True)
            eng.forget(sid)
        del eng
        cp.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
