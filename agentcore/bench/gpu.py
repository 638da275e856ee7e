"""GPU benchmark: decode, prefill, KV restore and copy bandwidth on synthetic GGUFs.

``python -m agentcore.bench gpu [--out DIR] [--git-sha SHA] [--quick]`` builds random-weight
GGUFs of real shapes under /tmp (SmolLM2-135M Q4_1; Llama-3-8B Q4_K and Q8_0), times the CUDA
backend (decode as CUDA-graph replays at several context lengths, prefill through
``Transformer.forward``, restore of KV blocks from pinned host memory) and HF transformers
eager bf16 on the same shapes as the peer, and writes one JSON object per figure to stdout
and ``DIR/results.jsonl``. The decode ceiling is weight bytes read per token over the
device-to-device copy bandwidth measured in the same run (bytes read + written).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agentcore.engine.model.gguf import load_gguf
from agentcore.engine.model.transformer import Transformer
from agentcore.engine.backends.cuda import CudaOps, GraphDecoder
from agentcore.testing.synthetic import LLAMA3_8B, SMOLLM2_135M, write_synthetic_gguf

MODELS = {
    "smollm2-135m": ({**SMOLLM2_135M, "context_length": 40960}, "Q4_1"),
    "llama3-8b-q4_k": ({**LLAMA3_8B, "context_length": 40960}, "Q4_K"),
    "llama3-8b-q8_0": ({**LLAMA3_8B, "context_length": 40960, "qtype": "Q8_0"}, "Q8_0"),
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
    """Bytes a decode step reads from weights: every matrix but the embedding table (one row)."""
    total = 0
    for name, t in model.tensors.items():
        if name == "token_embd.weight":
            total += t.nbytes // t.shape[0]
            if model.spec.tied_embeddings:
                total += t.nbytes
        else:
            total += t.nbytes
    return total


def fill_kv(cp: Any, kv: Any, n: int) -> None:
    """Random fp16 K/V for positions [0, n): decode speed does not depend on the values."""
    kv.pool[...] = (cp.random.standard_normal(kv.pool.shape, dtype=cp.float32) * 0.5).astype(
        cp.float16
    )
    kv.length = n


def time_decode(cp: Any, tr: Any, ctx: int, steps: int) -> tuple[float, float, Any]:
    """(tok/s with graph replays back to back, tok/s with one host read-back per token)."""
    kv = tr.ops.new_kv(tr.spec, ctx + steps + 64)
    fill_kv(cp, kv, ctx)
    dec = GraphDecoder(tr, kv)
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
    return fast, synced, dec


def time_prefill(cp: Any, tr: Any, n: int, vocab: int) -> float:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, n).tolist()
    kv = tr.ops.new_kv(tr.spec, n + 64)
    tr.forward(ids[: min(n, 600)], 0, kv)  # warm-up: compile, cuBLAS handles, scratch
    kv.length = 0
    best = float("inf")
    for _ in range(2):
        kv.length = 0
        cp.cuda.runtime.deviceSynchronize()
        t0 = time.perf_counter()
        tr.forward(ids, 0, kv)
        best = min(best, time.perf_counter() - t0)
    return n / best


def time_restore(cp: Any, tr: Any, n: int) -> tuple[float, float, int]:
    """(restore GB/s pinned host -> device blocks, export GB/s device -> pinned, bytes)."""
    kv = tr.ops.new_kv(tr.spec, n)
    fill_kv(cp, kv, n)
    ids = list(range(n // kv.block_size))
    host = kv.export_blocks(ids)
    t0 = time.perf_counter()
    kv.export_blocks(ids, out=host)
    t_exp = time.perf_counter() - t0
    kv.import_blocks(ids, host)
    best = float("inf")
    for _ in range(3):
        cp.cuda.runtime.deviceSynchronize()
        t0 = time.perf_counter()
        kv.import_blocks(ids, host)
        best = min(best, time.perf_counter() - t0)
    return host.nbytes / best / 1e9, host.nbytes / t_exp / 1e9, host.nbytes


def hf_peer(spec: Any, contexts: list[int], prefills: list[int], steps: int) -> dict[str, float]:
    """HF transformers eager bf16 LlamaForCausalLM with random weights at the same shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.n_embd, intermediate_size=spec.n_ff,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads, head_dim=spec.head_dim, rms_norm_eps=spec.rms_eps,
        rope_theta=spec.rope_base, max_position_embeddings=65536,
        tie_word_embeddings=spec.tied_embeddings,
    )  # fmt: skip
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    out: dict[str, float] = {}
    with torch.inference_mode():
        for ctx in contexts:
            ids = torch.randint(0, spec.vocab_size, (1, ctx), device="cuda")
            res = model(ids, use_cache=True)
            past, nxt = res.past_key_values, res.logits[:, -1:].argmax(-1)
            for i in range(steps + 3):
                if i == 3:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                res = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = res.past_key_values, res.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            out[f"decode{ctx}"] = steps / (time.perf_counter() - t0)
            del past, res
        for n in prefills:
            ids = torch.randint(0, spec.vocab_size, (1, n), device="cuda")
            model(ids[:, :64], use_cache=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(ids, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            out[f"prefill{n}"] = n / (time.perf_counter() - t0)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m agentcore.bench gpu")
    p.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    p.add_argument("--git-sha", default=None)
    p.add_argument("--quick", action="store_true", help="SmolLM2 and 8B Q4_K only, ctx 64/8K")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--tmp", default="/tmp/agentcore-bench")
    args = p.parse_args(argv)
    import cupy as cp

    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    run = Run(Path(args.out), _git_sha(args.git_sha), device,
              "python -m agentcore.bench gpu " + " ".join(argv))  # fmt: skip
    bw = copy_bandwidth(cp)
    run.emit(figure="copy_bandwidth", model=None, quant=None, ctx=None, value=round(bw / 1e9, 1),
             unit="GB/s (read+write)")  # fmt: skip
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    if args.quick:
        names = [n for n in names if n != "llama3-8b-q8_0"]
    contexts = [64, 8192] if args.quick else [64, 8192, 32768]
    for name in names:
        preset, quant = MODELS[name]
        path = tmp / f"{name}.gguf"
        t0 = time.perf_counter()
        if not path.exists():
            write_synthetic_gguf(path, **preset)
        model = load_gguf(path)
        tr = Transformer(model, CudaOps(), chunk=2048)
        print(f"# {name}: file+load {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        wbytes = weight_bytes_per_token(model)
        ceiling = bw / wbytes  # BENCHMARKS.md: weight bytes per token / copy bandwidth
        big = "8b" in name
        steps = 64 if big else 256
        peer = {} if args.no_peer else hf_peer(tr.spec, [64], [512, 8192], 16 if big else 32)
        for ctx in contexts:
            fast, synced, dec = time_decode(cp, tr, ctx, steps)
            fig = {"figure": "decode", "model": name, "quant": quant, "ctx": ctx, "value": round(fast, 1),
                       "unit": "tok/s", "value_sync_per_token": round(synced, 1),
                       "ceiling": round(ceiling, 1), "ratio_to_ceiling": round(fast / ceiling, 3),
                       "weight_bytes_per_token": wbytes}  # fmt: skip
            if f"decode{ctx}" in peer:
                fig["peer"] = {"name": "hf-transformers-eager-bf16", "value": round(peer[f"decode{ctx}"], 1)}
            if ctx in (64, contexts[-1]):
                fig["profile_ms"] = {k: round(v, 4) for k, v in dec.profile().items()}
            run.emit(**fig)
            del dec
        for n in (512, 8192):
            tps = time_prefill(cp, tr, n, tr.spec.vocab_size)
            fig = {"figure": "prefill", "model": name, "quant": quant, "ctx": n, "value": round(tps, 1),
                       "unit": "tok/s"}  # fmt: skip
            if f"prefill{n}" in peer:
                fig["peer"] = {"name": "hf-transformers-eager-bf16", "value": round(peer[f"prefill{n}"], 1)}
            run.emit(**fig)
        if big and quant == "Q4_K":
            for n in (8192, 32768):
                gbs, exp_gbs, nbytes = time_restore(cp, tr, n)
                run.emit(figure="restore", model=name, quant=quant, ctx=n, value=round(gbs, 2),
                         unit="GB/s (pinned host -> device KV blocks)", bytes=nbytes,
                         export_gbs=round(exp_gbs, 2))  # fmt: skip
        del tr, model
        gc.collect()
        cp.get_default_memory_pool().free_all_blocks()
    return 0
