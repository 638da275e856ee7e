"""Experiment: attn_tc GB/s with heads interleaved (8B layout) vs one KV head (rows contiguous)."""
from types import SimpleNamespace

import cupy as cp
import numpy as np

from agentcore.bench.gpu import _attention_step, _graph_ms, fill_kv
from agentcore.engine.backends.cuda import CudaKV, CudaOps

for name, layers, kvh, heads, n in [("8B 32K", 32, 8, 32, 32768), ("kvh1 256K", 32, 1, 4, 262144),
                                    ("8B 32K 1 layer", 1, 8, 32, 32768)]:
    spec = SimpleNamespace(n_layers=layers, n_kv_heads=kvh, n_heads=heads, head_dim=128)
    for dtype in ("float16", "q8_0"):
        kv = CudaKV(spec, n + 64, dtype=dtype)
        fill_kv(cp, kv, n)
        ops = CudaOps()
        ns = ops.decode_splits(spec, kv.capacity)
        q = cp.asarray(np.random.default_rng(0).standard_normal((heads, 128)), dtype=cp.float32)
        bufs = (q, cp.empty((heads, ns, 128), cp.float32), cp.empty((heads, ns, 2), cp.float32),
                cp.empty(heads * 128, cp.float32), cp.asarray(np.array([n - 1], np.int32)))
        ms = _graph_ms(cp, _attention_step(ops, kv, bufs, ns), 10)
        b = layers * 2 * n * kvh * kv.row_width * kv.np_dtype.itemsize
        print(f"{name} {dtype}: nsplit {ns} {ms:.3f} ms {b / ms / 1e6:.0f} GB/s", flush=True)
        del kv
        cp.get_default_memory_pool().free_all_blocks()
