"""GPU benchmark through the public path, with the raw kernel figure and llama.cpp beside it.

``python -m agentcore.bench gpu [--out DIR] [--git-sha SHA] [--quick] [--llama-bench PATH]``
builds random-weight GGUFs of real shapes under /tmp (SmolLM2-135M Q4_1; Llama-3-8B Q4_K and
Q8_0) and, per model and context, times:
- ``public``: ``LocalEngine(device="cuda").stream`` on a prompt of that many tokens (decode
  tok/s and TTFT from its ``Usage``), ``checkpoint``, and a new engine on the same kv_dir
  answering the same prompt (restore) against a cold one (recompute);
- ``raw``: the same engine's CudaDecoder replaying its graph back to back (decode) and its
  ``Transformer.forward`` (prefill), the kernel figures;
- ``peer``: llama.cpp's ``llama-bench`` on the same file in the same run
  (``-ngl 99 -fa 1``), when ``--llama-bench`` names the binary.
With ``--only gemv`` it times each decode GEMV of the Llama-3-8B shapes alone (``bench_gemv``):
per weight type and matrix, the fp32-activation kernel and the int8 one (``quant_x`` + 
``gemv_q8``), as achieved GB/s of weight bytes. With ``--only cache`` it times the KV store's tiers instead (``bench_cache``): per context, a
cold prefill, the checkpoint (its cost on the critical path, and the write-behind flush),
and the same prompt answered again from each tier: ``live`` (the session kept), ``behind``
(another session at once, while the checkpoint may still be saved behind: ``snapshot``
counts the tokens it read from the save's own copy), ``ram`` (once saved, the sessions dropped: its blocks in host
memory) and ``disk`` (a new engine on the
same kv_dir, page cache warm), with TTFT ratios and GB/s; then an agent-like session of
``--turns`` turns of ~280 new tokens, the checkpoint's cost against the turn's prefill
and the TTFT of the turn that follows it.
One JSON object per figure goes to stdout and ``DIR/results.jsonl``. The decode ceiling is
weight bytes read per token over the device-to-device copy bandwidth of the same run.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from agentcore.bench._public import agent_session, complete, followed_by, prompt_request
from agentcore.engine.backends.cuda_graph import CudaDecoder, CudaMLADecoder
from agentcore.engine.local import LocalEngine
from agentcore.testing.synthetic import LLAMA3_8B, SMOLLM2_135M, write_synthetic_gguf
from agentcore.testing.synthetic_deepseek2 import V2_LITE, write_synthetic_deepseek2

MODELS = {
    "smollm2-135m": ({**SMOLLM2_135M, "context_length": 40960}, "Q4_1"),
    "llama3-8b-q4_k": ({**LLAMA3_8B, "context_length": 40960}, "Q4_K"),
    "llama3-8b-q8_0": ({**LLAMA3_8B, "context_length": 40960, "qtype": "Q8_0"}, "Q8_0"),
    # deepseek2 (MLA + MoE) at DeepSeek-V2-Lite's shape; K-quant rows that 256 does not
    # divide (expert down, k_b) are Q8_0, as llama-quantize falls back
    "deepseek-v2-lite-q4_k": ({**V2_LITE, "qtype": "Q4_K", "arch": "deepseek2"}, "Q4_K"),
}


def _git_sha(arg: str | None) -> str:
    if arg:
        return arg
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Run:
    def __init__(self, out: Path, sha: str, device: str, command: str) -> None:
        self.path = out / "results.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        self.base = {"device": device, "git_sha": sha, "command": command}

    def emit(self, **fig: Any) -> None:
        line = json.dumps({**fig, **self.base})
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def copy_bandwidth(cp: Any) -> float:
    """Device-to-device copy, bytes read + written per second (median of 10)."""
    n = 1 << 31
    a = cp.ones(n, cp.uint8)
    b = cp.empty_like(a)
    b[...] = a
    times = []
    for _ in range(10):
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        b[...] = a
        e.record()
        e.synchronize()
        times.append(cp.cuda.get_elapsed_time(s, e) / 1e3)
    del a, b
    return 2 * n / float(np.median(times))


def weight_bytes_per_token(model: Any) -> int:
    """Bytes a decode step reads from weights: every matrix but the embedding table (one
    row), and of an MoE layer's expert stacks only the experts a token uses."""
    total = 0
    moe = getattr(model.spec, "moe", None)
    for name, t in model.tensors.items():
        if name == "token_embd.weight":
            total += t.nbytes // t.shape[0]
            if model.spec.tied_embeddings:
                total += t.nbytes
        elif moe is not None and "_exps." in name:
            total += t.nbytes * moe.n_expert_used // moe.n_expert
        else:
            total += t.nbytes
    return total


def fill_kv(cp: Any, kv: Any, n: int) -> None:
    """Random K/V for positions [0, n): decode speed does not depend on the values. A q8_0
    pool gets random int8 and one finite scale per block."""
    for b in range(kv.pool.shape[0]):  # a paged block at a time: no pool-sized temporaries
        blk = kv.pool[b]
        if getattr(kv, "q8", False):
            blk.view(cp.float16)[...] = cp.random.standard_normal(blk.size // 2, dtype=cp.float32).reshape(
                blk.view(cp.float16).shape).astype(cp.float16)  # fmt: skip
            blk.reshape(-1, 34)[:, :2] = cp.asarray(np.full(1, 0.004, np.float16).view(np.uint8))
        else:
            blk[...] = (cp.random.standard_normal(blk.shape, dtype=cp.float32) * 0.5).astype(cp.float16)
    kv.length = n


def raw_decode(cp: Any, eng: LocalEngine, ctx: int, steps: int) -> tuple[float, float, Any]:
    """(tok/s of graph replays back to back, tok/s with one read-back per token) at ``ctx``."""
    kv = eng.ops.new_kv(eng.spec, ctx + steps + 64)
    fill_kv(cp, kv, ctx)
    dec = (CudaMLADecoder if eng.spec.mla is not None else CudaDecoder)(eng.transformer, kv)
    dec.start(None, reserve=steps + 8)
    dec.generate(1, 8)
    kv.length = ctx
    cp.cuda.runtime.deviceSynchronize()
    t0 = time.perf_counter()
    dec.generate(1, steps)
    fast = steps / (time.perf_counter() - t0)
    kv.length = ctx
    tok = 1
    t0 = time.perf_counter()
    for _ in range(steps):
        tok = dec.step(tok)
    synced = steps / (time.perf_counter() - t0)
    # The last step ran the next one ahead: it must finish before this KV's memory (freed on
    # return) is reused, or it writes into whatever takes it (as generate() settles a turn).
    dec.settle()
    return fast, synced, dec


def best_forward_s(cp: Any, eng: LocalEngine, ids: list[int], kv: Any, pos0: int = 0, reps: int = 2) -> float:
    """Seconds of the fastest of ``reps`` bare forwards of ``ids`` at ``pos0`` on ``kv``
    (its length reset to ``pos0`` each time), the device synchronised around each."""
    best = float("inf")
    for _ in range(reps):
        kv.length = pos0
        cp.cuda.runtime.deviceSynchronize()
        t0 = time.perf_counter()
        eng.transformer.forward(ids, pos0, kv)
        cp.cuda.runtime.deviceSynchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def raw_prefill(cp: Any, eng: LocalEngine, n: int) -> float:
    ids = np.random.default_rng(0).integers(0, eng.spec.vocab_size, n).tolist()
    kv = eng.ops.new_kv(eng.spec, n + 64)
    eng.transformer.forward(ids[: min(n, 600)], 0, kv)  # warm-up: compile, cuBLAS, scratch
    return n / best_forward_s(cp, eng, ids, kv)


def public_turn(eng: LocalEngine, ctx: int, steps: int, session: str) -> tuple[Any, Any]:
    """A cold turn of ``ctx`` prompt tokens through ``stream``: (request, Completion)."""
    req = prompt_request(eng, ctx, session, steps)
    return req, anyio.run(complete, eng, req)


def llama_bench(binary: str | None, path: Path, depths: list[int], kv_dtype: str = "float16",
                prefill: bool = True) -> dict[tuple[str, int], float]:  # fmt: skip
    """{("decode", depth) | ("prefill", n): tok/s} from llama-bench's JSON lines (its K and V
    cache types matching ``kv_dtype``: f16 or q8_0)."""
    if not binary:
        return {}
    cache = "q8_0" if kv_dtype == "q8_0" else "f16"
    cmd = [binary, "-m", str(path), "-ngl", "99", "-fa", "1", "-p", "512,8192" if prefill else "0", "-n", "128",
           "-ctk", cache, "-ctv", cache,
           "-d", ",".join(map(str, depths)), "-r", "2", "-o", "jsonl"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        print(f"# llama-bench failed: {out.stderr[-2000:]}", file=sys.stderr)
        return {}
    got: dict[tuple[str, int], float] = {}
    for line in out.stdout.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        depth = int(r.get("n_depth", 0))
        if r.get("n_gen", 0) > 0:
            got[("decode", depth)] = float(r["avg_ts"])
        elif depth == 0:
            got[("prefill", int(r["n_prompt"]))] = float(r["avg_ts"])
    return got


def _wait_for(binary: str | None, timeout_s: float = 600.0) -> str | None:
    """``binary`` once it exists (a build may still be running), or None after the timeout."""
    if not binary:
        return None
    t0 = time.perf_counter()
    while not Path(binary).exists():
        if time.perf_counter() - t0 > timeout_s:
            print(f"# {binary} did not appear in {timeout_s:.0f}s: no peer figures", file=sys.stderr)
            return None
        time.sleep(2.0)
    return binary


# Llama-3-8B's decode GEMVs: (label, rows, cols, mode); mode 2 is the fused gate/up + SwiGLU.
GEMV_SHAPES = [("qkv", 6144, 4096, 0), ("out", 4096, 4096, 1), ("gate_up", 28672, 4096, 2),
               ("down", 4096, 14336, 1), ("head", 128256, 4096, 0)]  # fmt: skip
# SmolLM2-135M's (the small-model end: latency, not bandwidth)
GEMV_SHAPES_SMALL = [("qkv", 960, 576, 0), ("out", 576, 576, 1), ("gate_up", 3072, 576, 2),
                     ("down", 576, 1536, 1), ("head", 49152, 576, 0)]  # fmt: skip


def _graph_ms(cp: Any, step: Any, reps: int) -> float:
    """ms per call of ``step`` (kernel launches) replayed ``reps`` times in one CUDA graph."""
    stream = cp.cuda.Stream(non_blocking=True)
    # The inputs were filled on the null stream, which a non-blocking one does not wait for.
    cp.cuda.runtime.deviceSynchronize()
    with stream:
        step()  # compiles, sets attributes: outside the capture
        stream.begin_capture()
        for _ in range(reps):
            step()
        graph = stream.end_capture()
        graph.launch(stream)
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record(stream)
        graph.launch(stream)
        e.record(stream)
        e.synchronize()
    return cp.cuda.get_elapsed_time(s, e) / reps


def bench_gemv(run: Run, cp: Any, types: list[str], reps: int = 100,
               shapes: list[tuple[str, int, int, int]] = GEMV_SHAPES, model: str = "llama3-8b shape") -> None:  # fmt: skip
    """GB/s of weight bytes for each decode GEMV alone (CUDA events around one CUDA graph of
    ``reps`` launches, as the decode graph runs them): fp32 activations (``gemv``) against
    int8 (``quant_x`` + ``gemv_q8``, both kernels timed)."""
    from gguf import GGMLQuantizationType

    from agentcore.engine.backends.cuda import CudaOps
    from agentcore.engine.model.gguf import WeightTensor
    from agentcore.testing.synthetic import _random_tensor

    rng = np.random.default_rng(0)
    variants = {"fp32_act": CudaOps(int8_activations=False), "int8_act": CudaOps(int8_min_bytes=0)}
    min_bytes = CudaOps().int8_min_bytes  # what the decoder picks by default
    for tname in types:
        qt = GGMLQuantizationType[tname]
        for label, rows, cols, mode in shapes:
            raw = _random_tensor(rng, "matrix", (rows, cols), qt)
            w = WeightTensor("w", qt, (rows, cols), raw)
            fig: dict[str, Any] = {"figure": "gemv", "model": model, "quant": tname,
                                   "matrix": label, "rows": rows, "cols": cols, "bytes": raw.nbytes,
                                   "default": "int8_act" if raw.nbytes >= min_bytes else "fp32_act"}  # fmt: skip
            for vname, ops in variants.items():
                part = ops.prepare_linear([w]).parts[0]
                x = cp.asarray(rng.standard_normal(cols).astype(np.float32))
                y = cp.zeros(rows // 2 if mode == 2 else rows, cp.float32)
                # As the decoder runs them: captured in a graph, no host launches.
                us = _graph_ms(cp, functools.partial(ops.gemv, part, x, y, mode=mode), reps) * 1e3
                fig[vname] = {"us": round(us, 2), "GB/s": round(raw.nbytes / us / 1e3, 1),
                              "int8": ops.int8_ready(part)}  # fmt: skip
                del part
            run.emit(**fig, value=fig["int8_act"]["GB/s"], unit="GB/s of weights (int8 activations)")


def _attention_step(ops: Any, kv: Any, bufs: tuple, nsplit: int) -> Any:
    """A decode step's attention launches: every layer of ``kv`` once."""
    q, po, pml, out, pos = bufs

    def step() -> None:
        for layer in range(kv.spec.n_layers):
            ops.attend_decode(q, kv, layer, po, pml, out, nsplit, pos_dev=pos)

    return step


# (model, n_layers, n_kv_heads, n_heads, head_dim) of the decode attention figures.
ATTN_SHAPES = [("llama3-8b shape", 32, 8, 32, 128), ("smollm2-135m shape", 30, 3, 9, 64)]


def bench_attention(run: Run, cp: Any, contexts: list[int], reps: int = 20) -> None:
    """Decode attention alone (every layer once, slices sized as the decode graph sizes
    them): ms per token and GB/s of K/V bytes read, for the tensor-core (``attn_tc``; on q8_0
    ``attn_tq8``, and ``attn_tc_convert`` the kernel that converts tiles to fp16 first) and
    CUDA-core (``attn_split``) kernels on fp16 and q8_0 pools. CUDA events around one graph
    of ``reps`` tokens' launches."""
    from types import SimpleNamespace

    from agentcore.engine.backends.cuda import CudaKV, CudaOps

    for model, layers, kvh, heads, hd in ATTN_SHAPES:
        spec = SimpleNamespace(n_layers=layers, n_kv_heads=kvh, n_heads=heads, head_dim=hd)
        for ctx in contexts:
            for dtype in ("float16", "q8_0"):
                kv = CudaKV(spec, ctx + 64, dtype=dtype)
                fill_kv(cp, kv, ctx)
                row: dict[str, Any] = {}
                covers = max(1024, 1 << (ctx - 1).bit_length())  # as the decode graph sizes its slices
                kernels = [("attn_tc", {"tc_attention": True}), ("attn_split", {"tc_attention": False})]
                if dtype == "q8_0":  # attn_tc is attn_tq8 (rows read in place); the fp16-tile kernel
                    kernels.insert(1, ("attn_tc_convert", {"tc_attention": True, "q8_in_place": False}))
                for kname, kw in kernels:
                    ops = CudaOps(**kw)
                    nsplit = ops.decode_splits(spec, min(covers, kv.capacity))
                    q = cp.asarray(np.random.default_rng(0).standard_normal((heads, hd)), dtype=cp.float32)
                    po = cp.empty((heads, nsplit, hd), cp.float32)
                    pml = cp.empty((heads, nsplit, 2), cp.float32)
                    out = cp.empty(heads * hd, cp.float32)
                    pos = cp.asarray(np.array([ctx - 1], np.int32))
                    ms = _graph_ms(cp, _attention_step(ops, kv, (q, po, pml, out, pos), nsplit), reps)
                    kv_bytes = layers * 2 * ctx * kvh * kv.row_width * kv.np_dtype.itemsize
                    row[kname] = {"ms_per_token": round(ms, 4), "gb_per_s": round(kv_bytes / ms / 1e6, 1)}
                run.emit(figure="decode_attention", model=model, quant=None, kv_dtype=dtype, ctx=ctx,
                         value=row["attn_tc"]["ms_per_token"], unit="ms per token (all layers, attn_tc)",
                         kv_bytes_per_token=layers * 2 * ctx * kvh * kv.row_width * kv.np_dtype.itemsize,
                         **row)  # fmt: skip
                del kv
                cp.get_default_memory_pool().free_all_blocks()


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def bench_model(run: Run, cp: Any, name: str, path: Path, quant: str, bw: float,
                contexts: list[int], peer_bin: str | None, only: str | None = None,
                kv_dtype: str = "float16") -> None:  # fmt: skip
    big = "8b" in name
    steps = 128 if big else 256
    kv_dir = Path(tempfile.mkdtemp(prefix="agentcore-kv-"))
    eng = LocalEngine.from_gguf(path, device="cuda", context_length=40960, kv_dir=kv_dir,
                                kv_ram_mb=16384, kv_disk_mb=65536, kv_dtype=kv_dtype)  # fmt: skip
    wbytes = weight_bytes_per_token(eng.model)
    ceiling = bw / wbytes
    public_turn(eng, 64, 16, "warm-up")  # compiles the kernels, as a first user request would
    figs: list[tuple[tuple[str, int], str, dict]] = []  # emitted once the peer has run
    for ctx in contexts if only != "prefill" else ():
        req, done = public_turn(eng, ctx, steps, f"decode-{ctx}")
        fast, synced, dec = raw_decode(cp, eng, ctx, steps)
        u = done.usage
        fig = {"figure": "decode", "model": name, "quant": quant, "kv_dtype": kv_dtype, "ctx": u.prompt_tokens,
               "value": round(u.decode_tokens_per_s, 1), "unit": "tok/s (LocalEngine.stream)",
               "tokens": u.completion_tokens, "raw": round(fast, 1),
               "raw_sync_per_token": round(synced, 1),
               "public_over_raw": _ratio(u.decode_tokens_per_s, fast),
               "ceiling": round(ceiling, 1),
               "ratio_to_ceiling": _ratio(u.decode_tokens_per_s, ceiling),
               "weight_bytes_per_token": wbytes}  # fmt: skip
        if ctx in (64, contexts[-1]):
            fig["profile_ms"] = {k: round(v, 4) for k, v in dec.profile().items()}
        del dec
        eng.ops.int8_activations = False  # the same graph with every GEMV on fp32 activations
        fig["raw_fp32_activations"] = round(raw_decode(cp, eng, ctx, steps)[0], 1)
        eng.ops.int8_activations = True
        if eng.ops.pdl:  # the same graph with plain launches (no programmatic dependent launch)
            eng.ops.pdl = False
            fig["raw_plain_launch"] = round(raw_decode(cp, eng, ctx, steps)[0], 1)
            eng.ops.pdl = True
        fig["pdl"] = eng.ops.pdl
        figs.append((("decode", 0 if ctx <= 64 else ctx), "llama.cpp llama-bench tg128", fig))
        eng.forget(f"decode-{ctx}")
    for n in (512, 8192) if only != "decode" else ():
        raw = raw_prefill(cp, eng, n)
        req, done = public_turn(eng, n, 1, f"prefill-{n}")
        public = done.usage.prompt_tokens / done.usage.ttft_s
        fig = {"figure": "prefill", "model": name, "quant": quant, "kv_dtype": kv_dtype,
               "ctx": done.usage.prompt_tokens,
               "value": round(public, 1), "unit": "tok/s (prompt / TTFT of LocalEngine.stream)",
               "ttft_ms": round(done.usage.ttft_s * 1000, 1), "raw": round(raw, 1),
               "public_over_raw": _ratio(public, raw)}  # fmt: skip
        figs.append((("prefill", n), f"llama.cpp llama-bench pp{n}", fig))
        if n == 8192:
            info = anyio.run(eng.checkpoint, followed_by(req, done))
            eng.close()
            run.emit(figure="checkpoint", model=name, quant=quant, kv_dtype=kv_dtype, ctx=info.tokens,
                     value=round(info.ms, 1), unit="ms (LocalEngine.checkpoint, cold session)",
                     bytes=info.bytes_written,
                     bytes_per_token=eng.layout.bytes_per_token())  # fmt: skip
            cold_ttft = done.usage.ttft_s
            fresh = LocalEngine.from_gguf(path, device="cuda", context_length=40960, kv_dir=kv_dir,
                                          kv_ram_mb=16384, kv_disk_mb=65536, kv_dtype=kv_dtype)  # fmt: skip
            public_turn(fresh, 64, 4, "warm-up")
            again = anyio.run(complete, fresh, req)
            u = again.usage
            run.emit(figure="restore_vs_recompute", model=name, quant=quant, kv_dtype=kv_dtype,
                     ctx=u.prompt_tokens,
                     value=_ratio(cold_ttft, u.ttft_s), unit="x (cold TTFT / TTFT of a new engine on the same kv_dir)",
                     source=u.cache_source, cached=u.cached_tokens,
                     ttft_restored_ms=round(u.ttft_s * 1000, 1),
                     ttft_cold_ms=round(cold_ttft * 1000, 1))  # fmt: skip
            del fresh
        eng.forget(f"prefill-{n}")  # the next new session reuses its buffers, as a user's would
    del eng
    gc.collect()
    cp.get_default_memory_pool().free_all_blocks()
    # The peer runs last in the same run (on the same file and GPU), so a llama-bench still
    # being built when the run starts is ready by then.
    peer = llama_bench(_wait_for(peer_bin), path, [0 if c <= 64 else c for c in contexts], kv_dtype,
                       prefill=only != "decode")
    for key, label, fig in figs:
        p = peer.get(key)
        if p:
            fig["peer"] = {"name": label, "value": round(p, 1)}
            fig["ratio_to_peer"] = _ratio(fig["value"], p)
        run.emit(**fig)


def _new_engine(path: Path, kv_dir: Path, ram_mb: int = 16384) -> LocalEngine:
    eng = LocalEngine.from_gguf(path, device="cuda", context_length=40960, kv_dir=kv_dir,
                                kv_ram_mb=ram_mb, kv_disk_mb=65536)  # fmt: skip
    public_turn(eng, 64, 4, "warm-up")  # compiles the kernels, as a first user request would
    return eng


def bench_cache(run: Run, cp: Any, name: str, path: Path, quant: str, contexts: list[int],
                turns: int) -> None:  # fmt: skip
    """Restore from each tier vs recompute, and the checkpoint's cost, through the public API."""
    kv_dir = Path(tempfile.mkdtemp(prefix="agentcore-kv-"))
    eng = _new_engine(path, kv_dir)
    base = {"model": name, "quant": quant, "bytes_per_token": eng.layout.bytes_per_token()}
    for ctx in contexts:
        sid = f"cache-{ctx}"
        # Its own seed: prompts of one seed share their first tokens, and a longer one would
        # restore the shorter one's checkpoint instead of being cold.
        req = prompt_request(eng, ctx, sid, 1, seed=ctx)
        cold = anyio.run(complete, eng, req).usage
        info = anyio.run(eng.checkpoint, req)
        # The same session's next turn (its live KV), then another session with the same
        # prompt while the checkpoint may still be saved behind (its snapshot, if so).
        got = {"live": anyio.run(complete, eng, req).usage}
        other = req.model_copy(update={"session_id": f"{sid}-other"})
        got["behind"] = anyio.run(complete, eng, other).usage
        behind_turn = {"load_ms": round(eng.turns[-1].load_ms, 2), "snapshot": eng.turns[-1].snapshot}
        t0 = time.perf_counter()
        eng.flush()
        flush_ms = (time.perf_counter() - t0) * 1000
        run.emit(figure="checkpoint", ctx=info.tokens, value=round(info.store_ms, 1),
                 unit="ms on the critical path (CheckpointInfo.store_ms: a device snapshot, saved behind)",
                 bytes=info.bytes_written, ms=round(info.ms, 1), flush_ms=round(flush_ms, 1),
                 cold_prefill_ms=round(cold.ttft_s * 1000, 1), cold_cached=cold.cached_tokens,
                 store_over_prefill=_ratio(info.store_ms, cold.ttft_s * 1000), **base)  # fmt: skip
        eng.forget(sid)
        eng.forget(other.session_id)
        got["ram"] = anyio.run(complete, eng, req).usage
        ram_turn = eng.stats()["turns"][-1]
        fresh = _new_engine(path, kv_dir, ram_mb=1024)
        got["disk"] = anyio.run(complete, fresh, req).usage
        disk_turn = fresh.stats()["turns"][-1]
        for tier, u in got.items():
            turn = {"behind": behind_turn, "ram": ram_turn, "disk": disk_turn}.get(tier)
            fig = {"figure": "restore_vs_recompute", "tier": tier, "ctx": u.prompt_tokens,
                   "value": _ratio(cold.ttft_s, u.ttft_s), "unit": "x (cold TTFT / TTFT restored)",
                   "source": u.cache_source, "cached": u.cached_tokens,
                   "ttft_ms": round(u.ttft_s * 1000, 1), "cold_ttft_ms": round(cold.ttft_s * 1000, 1)}
            if turn is not None and "snapshot" in turn:
                fig["snapshot"] = turn["snapshot"]
            if turn is not None and turn["load_ms"]:
                fig["load_ms"] = turn["load_ms"]
                fig["load_gbs"] = round(u.cached_tokens * base["bytes_per_token"] / turn["load_ms"] / 1e6, 2)
            run.emit(**fig, **base)
        fresh.close()
        del fresh
        eng.forget(sid)
        gc.collect()
    # An agent-like session: each turn adds ~280 tokens (a tool result and a reply).
    for turn, done, info in agent_session(eng, "agent", 2048, turns):
        run.emit(figure="agent_checkpoint", turn=turn + 1, ctx=info.tokens, value=round(info.store_ms, 2),
                 unit="ms on the critical path (CheckpointInfo.store_ms)", bytes=info.bytes_written,
                 turn_prefill_ms=round(info.prefill_ms, 2),
                 store_over_turn_prefill=_ratio(info.store_ms, info.prefill_ms),
                 reused=done.usage.cached_tokens, prompt=done.usage.prompt_tokens,
                 ttft_ms=round(done.usage.ttft_s * 1000, 2), **base)  # fmt: skip
    eng.close()
    del eng
    gc.collect()
    cp.get_default_memory_pool().free_all_blocks()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m agentcore.bench gpu")
    p.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    p.add_argument("--git-sha", default=None)
    p.add_argument("--quick", action="store_true", help="SmolLM2 and 8B Q4_K only, ctx 64/8K")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--llama-bench", default=None, help="llama-bench binary: the peer")
    p.add_argument("--tmp", default="/tmp/agentcore-bench")
    p.add_argument("--only", choices=("decode", "prefill", "cache", "gemv", "attention"), default=None,
                   help="one kind of figure (prefill includes the checkpoint and restore; cache "
                        "times every KV tier and the checkpoint's cost)")
    p.add_argument("--contexts", default=None, help="comma list of prompt sizes")
    p.add_argument("--turns", type=int, default=8, help="turns of the agent session (--only cache)")
    p.add_argument("--kv-dtype", choices=("float16", "q8_0"), default="float16",
                   help="the KV cache's dtype (decode/prefill figures; llama-bench gets the same)")
    args = p.parse_args(argv)
    import cupy as cp

    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    run = Run(Path(args.out), _git_sha(args.git_sha), device,
              "python -m agentcore.bench gpu " + " ".join(argv))  # fmt: skip
    bw = copy_bandwidth(cp)
    run.emit(figure="copy_bandwidth", model=None, quant=None, ctx=None, value=round(bw / 1e9, 1),
             unit="GB/s (read+write)")  # fmt: skip
    if args.only == "gemv":
        bench_gemv(run, cp, ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1"])
        bench_gemv(run, cp, ["Q4_1", "Q8_0"], shapes=GEMV_SHAPES_SMALL, model="smollm2-135m shape")
        return 0
    if args.only == "attention":
        bench_attention(run, cp, [int(c) for c in (args.contexts or "4096,32768").split(",")])
        return 0
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    if args.quick:
        names = [n for n in names if n not in ("llama3-8b-q8_0", "deepseek-v2-lite-q4_k")]
    contexts = [64, 8192] if args.quick else [64, 8192, 32768]
    if args.contexts:
        contexts = [int(c) for c in args.contexts.split(",")]
    for name in names:
        preset, quant = MODELS[name]
        path = tmp / f"{name}.gguf"
        t0 = time.perf_counter()
        if not path.exists():
            if preset.get("arch") == "deepseek2":
                write_synthetic_deepseek2(path, **{k: v for k, v in preset.items() if k != "arch"})
            else:
                write_synthetic_gguf(path, **preset)
        print(f"# {name}: file {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        if args.only == "cache":
            bench_cache(run, cp, name, path, quant, contexts, args.turns)
        else:
            bench_model(run, cp, name, path, quant, bw, contexts, args.llama_bench, args.only,
                        args.kv_dtype)
    return 0
