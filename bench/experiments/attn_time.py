"""Decode attention per token (all layers, attn + combine) on the 8B shape, default kernels."""
from types import SimpleNamespace

import cupy as cp
import numpy as np

from agentcore.bench.gpu import _attention_step, _graph_ms, fill_kv
from agentcore.engine.backends.cuda import CudaKV, CudaOps

spec = SimpleNamespace(n_layers=32, n_kv_heads=8, n_heads=32, head_dim=128)
for n in (32768, 4096):
    for dtype in ("float16", "q8_0"):
        kv = CudaKV(spec, n + 64, dtype=dtype)
        fill_kv(cp, kv, n)
        ops = CudaOps()
        ns = ops.decode_splits(spec, kv.capacity)
        q = cp.asarray(np.random.default_rng(0).standard_normal((32, 128)), dtype=cp.float32)
        bufs = (q, cp.empty((32, ns, 128), cp.float32), cp.empty((32, ns, 2), cp.float32),
                cp.empty(32 * 128, cp.float32), cp.asarray(np.array([n - 1], np.int32)))
        ms = _graph_ms(cp, _attention_step(ops, kv, bufs, ns), 10)
        print(f"8B shape {n} {dtype} tc={ops.uses_tc_attention(spec, kv.q8)}: {ms:.3f} ms per token", flush=True)
        del kv
        cp.get_default_memory_pool().free_all_blocks()
