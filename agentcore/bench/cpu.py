"""CPU benchmark: SmolLM2 decode and prefill on this machine, llama-cpp-python as the peer.

``python -m agentcore.bench cpu [--model smollm2] [--threads N]`` prints one JSON object per
figure; the peer runs in the same process on the same file when llama-cpp-python is
installed (otherwise its figure is reported as absent, never invented).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from agentcore.model_cache import resolve_model


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GIT_SHA", "unknown")


def ours(path, prompt_ids: list[int], n_decode: int) -> tuple[float, float]:
    """(prefill tok/s over prompt_ids, decode tok/s for n_decode tokens after it)."""
    from agentcore.engine.local import LocalEngine

    eng = LocalEngine.from_gguf(path, device="cpu", context_length=len(prompt_ids) + n_decode + 8)
    tr = eng.transformer
    kv = eng.ops.new_kv(eng.spec, len(prompt_ids) + n_decode + 8)
    t0 = time.perf_counter()
    logits = tr.forward(prompt_ids, 0, kv)
    prefill = len(prompt_ids) / (time.perf_counter() - t0)
    tok = int(np.argmax(logits))
    t0 = time.perf_counter()
    for i in range(n_decode):
        tok = int(np.argmax(tr.forward([tok], len(prompt_ids) + i, kv)))
    decode = n_decode / (time.perf_counter() - t0)
    return prefill, decode


def peer(path, prompt_ids: list[int], n_decode: int, threads: int) -> tuple[float, float] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(str(path), n_ctx=len(prompt_ids) + n_decode + 8, n_threads=threads,
                n_batch=512, verbose=False)
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    prefill = len(prompt_ids) / (time.perf_counter() - t0)
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        # Without logits_all, llama-cpp-python keeps no scores; read the context's last row.
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    t0 = time.perf_counter()
    for _ in range(n_decode):
        tok = int(np.argmax(last_logits()))
        llm.eval([tok])
    decode = n_decode / (time.perf_counter() - t0)
    return prefill, decode


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m agentcore.bench cpu")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--decode-tokens", type=int, default=64)
    args = p.parse_args(argv)
    path = resolve_model(args.model)
    from agentcore.engine.model.gguf import load_gguf
    from agentcore.engine.model.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(load_gguf(path))
    text = Path(__file__).read_text(encoding="utf-8") * 20
    corpus = tok.encode(text)
    base = {"model": path.name, "device": f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()}",
            "git_sha": git_sha(), "command": "python -m agentcore.bench cpu " + " ".join(argv)}
    for ctx in (64, 2048):
        ids = corpus[:ctx]
        mine = ours(path, ids, args.decode_tokens)
        other = peer(path, ids, args.decode_tokens, args.threads)
        figures = [("decode", 1)] + ([("prefill", 0)] if ctx == 2048 else [])
        for figure, k in figures:
            peer_value = None if other is None else round(other[k], 1)
            row = {"figure": figure, "ctx": ctx, "value": round(mine[k], 1), "unit": "tok/s",
                   "peer": {"name": "llama-cpp-python", "value": peer_value},
                   "ratio_to_peer": None if peer_value is None else round(mine[k] / peer_value, 3), **base}
            print(json.dumps(row), flush=True)
    return 0
