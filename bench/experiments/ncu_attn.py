"""One layer of decode attention at 32K on the 8B shape, for ncu (attn_tc and attn_split)."""
import sys
from types import SimpleNamespace

import cupy as cp
import numpy as np

from agentcore.bench.gpu import fill_kv
from agentcore.engine.backends.cuda import CudaKV, CudaOps

n = 32768
spec = SimpleNamespace(n_layers=1, n_kv_heads=8, n_heads=32, head_dim=128)
kv = CudaKV(spec, n + 64, dtype=sys.argv[1] if len(sys.argv) > 1 else "float16")
fill_kv(cp, kv, n)
for tc in (True, False):
    ops = CudaOps(tc_attention=tc)
    ns = ops.decode_splits(spec, kv.capacity)
    q = cp.asarray(np.random.default_rng(0).standard_normal((32, 128)), dtype=cp.float32)
    po, pml = cp.empty((32, ns, 128), cp.float32), cp.empty((32, ns, 2), cp.float32)
    out = cp.empty(32 * 128, cp.float32)
    for _ in range(2):
        ops.attend_decode(q, kv, 0, po, pml, out, ns, n_host=n)
cp.cuda.runtime.deviceSynchronize()
print("done")
