"""Where 8B prefill time goes (CUDA events around each CudaOps op) and what the public
path adds to TTFT (capture, KV allocation). Scratch: not part of the package."""
import sys, time, tempfile, functools
from pathlib import Path
import numpy as np
import anyio
import cupy as cp
from agentcore.engine.local import LocalEngine
from agentcore.engine.backends import cuda as cu
from agentcore.engine.backends.cuda_graph import CudaDecoder
from agentcore.bench._public import prompt_request, complete

path = Path(sys.argv[1])
eng = LocalEngine.from_gguf(path, device="cuda", context_length=40960,
                            kv_dir=Path(tempfile.mkdtemp()), kv_ram_mb=16384, kv_disk_mb=65536)
ops = eng.ops
acc = {}
events = []
def wrap(obj, name, label=None):
    f = getattr(obj, name)
    @functools.wraps(f)
    def g(*a, **k):
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record(); r = f(*a, **k); e.record()
        events.append((label or name, s, e)); return r
    setattr(obj, name, g)
for n in ("_dequant_linear", "attention", "rmsnorm", "rope", "swiglu", "add", "embed", "logits"):
    wrap(ops, n)
orig_gemm = cu._gemm
def gemm(*a, **k):
    s, e = cp.cuda.Event(), cp.cuda.Event(); s.record(); r = orig_gemm(*a, **k); e.record()
    events.append(("gemm", s, e)); return r
cu._gemm = gemm
# kv.store: wrap on the class
wrap(cu.CudaKV, "store", "kv_store")
def flush():
    cp.cuda.runtime.deviceSynchronize()
    out = {}
    for lab, s, e in events:
        out[lab] = out.get(lab, 0.0) + cp.cuda.get_elapsed_time(s, e)
    events.clear(); return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda x: -x[1])}

for n in (512, 8192):
    ids = np.random.default_rng(0).integers(0, eng.spec.vocab_size, n).tolist()
    kv = ops.new_kv(eng.spec, n + 64)
    eng.transformer.forward(ids[:600], 0, kv); flush()
    kv.length = 0
    cp.cuda.runtime.deviceSynchronize(); t0 = time.perf_counter()
    eng.transformer.forward(ids, 0, kv)
    cp.cuda.runtime.deviceSynchronize(); wall = (time.perf_counter() - t0) * 1000
    prof = flush()
    print(f"prefill {n}: wall {wall:.1f} ms, ops sum {sum(prof.values()):.1f} ms: {prof}", flush=True)
    del kv

# public path: what TTFT holds besides the forward
times = {}
def timed(cls, name, sync=True):  # sync=False: host time only (keeps a capture overlapping the prefill)
    f = getattr(cls, name)
    def g(self, *a, **k):
        if sync: cp.cuda.runtime.deviceSynchronize()
        t0 = time.perf_counter()
        r = f(self, *a, **k)
        if sync: cp.cuda.runtime.deviceSynchronize()
        times.setdefault(name, []).append(round((time.perf_counter() - t0) * 1000, 2)); return r
    setattr(cls, name, g)
timed(CudaDecoder, "_capture", sync=False); timed(CudaDecoder, "prefill", sync=False)
timed(CudaDecoder, "start", sync=False); timed(CudaDecoder, "__init__")
timed(cu.CudaOps, "new_kv"); timed(cu.CudaKV, "grow")
import cProfile, pstats
PROFILE = [False]
_gen = LocalEngine._generate_in_thread
def _profiled(self, *a, **k):  # the turn runs on the engine's worker thread
    if not PROFILE[0]:
        return _gen(self, *a, **k)
    pr = cProfile.Profile(); pr.enable()
    try:
        return _gen(self, *a, **k)
    finally:
        pr.disable(); pstats.Stats(pr).sort_stats("tottime").print_stats(15)
LocalEngine._generate_in_thread = _profiled
for n, sess in ((64, "w"), (512, "a"), (512, "b"), (8192, "c"), (8192, "d")):
    times.clear(); events.clear()
    req = prompt_request(eng, n, sess, 1)
    t0 = time.perf_counter()
    PROFILE[0] = sess == "d"
    done = anyio.run(complete, eng, req)
    print(f"public {n} ({sess}): ttft {done.usage.ttft_s*1000:.1f} ms, total {(time.perf_counter()-t0)*1000:.1f} ms, parts {times}", flush=True)
    events.clear()
