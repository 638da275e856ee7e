"""Decode attention A/B across kernel versions in one process: JSON lines.

    python bench/experiments/attention_ab.py VARIANTS [CTX,CTX] [--old DIR]

VARIANTS (comma list): ``new`` (this checkout's kernels), ``old`` (the kernels in DIR, e.g.
``mkdir k && for f in quant gemv_q8 ops sample mla; do git show SHA:agentcore/engine/backends/kernels/$f.cu > k/$f.cu; done``),
``fp16nst3`` / ``tq8nst6`` (this checkout with 3 fp16 / 6 attn_tq8 stages at head_dim 128),
``split1`` / ``split4`` (this checkout with splits of at least one / four tiles; the kernels
take at least two since 2026-12-07: one split, no merge, up to 128 positions). Each variant's module is compiled with only the attention kernels; ``cuda._kernel`` and the shared-memory
sizes are swapped per variant (read from that module's ``attn_tc_smem``). Every layer once,
graph replays, the 8B and SmolLM2 shapes, both KV dtypes (q8_0: ``tc`` is the fp16-tile kernel,
``tq8`` attn_tq8). ``max_abs_diff_vs_first``: against the first variant's output.
"""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import cupy as cp
import numpy as np

import agentcore.engine.backends.cuda as cu
from agentcore.bench.gpu import _attention_step, _graph_ms, fill_kv

OLD = Path(sys.argv[sys.argv.index("--old") + 1]) if "--old" in sys.argv else None
ARGS = [a for i, a in enumerate(sys.argv) if a != "--old" and (i == 0 or sys.argv[i - 1] != "--old")]
CUR = Path(cu.KERNELS)
def variant_src(name):
    files = ("quant.cu", "gemv_q8.cu", "ops.cu", "sample.cu", "mla.cu")
    d = OLD if name == "old" else CUR
    code = "\n".join((d / f).read_text() for f in files)
    if name == "fp16nst3":
        a = "static constexpr int TP = ATTN_TP, NST = D <= 128 ? 4 : 3;"
        assert code.count(a) == 1
        code = code.replace(a, "static constexpr int TP = ATTN_TP, NST = Q8 ? (D <= 128 ? 4 : 3) : (D <= 64 ? 4 : 3);")
    if name == "tq8nst6":
        a = "static constexpr int TP = ATTN_TP, NST = D <= 64 ? 6 : (D <= 128 ? 4 : 3), NB = D / 32;"
        assert code.count(a) == 1
        code = code.replace(a, "static constexpr int TP = ATTN_TP, NST = D <= 128 ? 6 : 3, NB = D / 32;")
    if name in ("split1", "split4"):
        a = "const int per = max(2 * TP, ((n + nsplit - 1) / nsplit + TP - 1) / TP * TP);"
        assert code.count(a) == 2
        lo = "TP" if name == "split1" else "4 * TP"
        code = code.replace(a, f"const int per = max({lo}, ((n + nsplit - 1) / nsplit + TP - 1) / TP * TP);")
    return code
mods = {}
def module(name):
    if name not in mods:
        code = variant_src(name)
        names = [f"attn_tc<{d},{q}>" for d in (64, 128) for q in (0, 1)]
        if "attn_tq8" in code:
            names += [f"attn_tq8<{d}>" for d in (64, 128)]
        mods[name] = (cp.RawModule(code=code, options=("-std=c++17",), name_expressions=names), "attn_tq8" in code)
    return mods[name]
def use(name):
    mod, has_tq8 = module(name)
    out = cp.zeros(9, cp.int32)
    mod.get_function("attn_tc_smem")((1,), (1,), (out,))
    sm = out.get().tolist()
    idx = {64: 0, 128: 2, 256: 4}
    cu._kernel = lambda n: cu.Kernel(mod.get_function(n), n, cp)
    cu.attn_tc_smem = lambda d, q8: sm[idx[d] + int(q8)]
    cu.attn_tq8_smem = lambda d: sm[6 + {64: 0, 128: 1, 256: 2}[d]]
    return has_tq8
SHAPES = [("llama3-8b shape", 32, 8, 32, 128), ("smollm2-135m shape", 30, 3, 9, 64)]
VARIANTS = ARGS[1].split(",") if len(ARGS) > 1 else ["new"]
CTX = [int(c) for c in (ARGS[2].split(",") if len(ARGS) > 2 else ["4096", "32768"])]
dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
for model, layers, kvh, heads, hd in SHAPES:
    spec = SimpleNamespace(n_layers=layers, n_kv_heads=kvh, n_heads=heads, head_dim=hd)
    for ctx in CTX:
        for dtype in ("float16", "q8_0"):
            kv = cu.CudaKV(spec, ctx + 64, dtype=dtype)
            fill_kv(cp, kv, ctx)
            covers = max(1024, 1 << (ctx - 1).bit_length())
            q = cp.asarray(np.random.default_rng(0).standard_normal((heads, hd)), dtype=cp.float32)
            pos = cp.asarray(np.array([ctx - 1], np.int32))
            kv_bytes = layers * 2 * ctx * kvh * kv.row_width * kv.np_dtype.itemsize
            ref = None
            for v in VARIANTS:
                has_tq8 = use(v)
                kinds = [("tc", {"tc_attention": True, "q8_in_place": False})]
                if dtype == "q8_0" and has_tq8:
                    kinds.append(("tq8", {"tc_attention": True, "q8_in_place": True}))
                for kname, kw in kinds:
                    # (it once replaced an old variant's kw by {"tc_attention": True}: both of
                    # its q8_0 rows then ran attn_tq8, 2026-12-07-h100-NOTES-448b6fc.md)
                    ops = cu.CudaOps(**kw)
                    ops.q8_in_place = kw.get("q8_in_place", False)
                    nsplit = ops.decode_splits(spec, min(covers, kv.capacity))
                    po = cp.empty((heads, nsplit, hd), cp.float32)
                    pml = cp.empty((heads, nsplit, 2), cp.float32)
                    out = cp.empty(heads * hd, cp.float32)
                    ms = _graph_ms(cp, _attention_step(ops, kv, (q, po, pml, out, pos), nsplit), 20)
                    o = out.get()
                    if ref is None:
                        ref = o
                    print(json.dumps({"device": dev, "model": model, "ctx": ctx, "kv_dtype": dtype, "variant": v,
                                      "kernel": kname, "ms": round(ms, 4), "GB/s": round(kv_bytes / ms / 1e6, 1),
                                      "max_abs_diff_vs_first": float(np.abs(o - ref).max())}), flush=True)
            del kv
            cp.get_default_memory_pool().free_all_blocks()
