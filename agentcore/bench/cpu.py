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

import numpy as np

from agentcore.model_cache import resolve_model


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GIT_SHA", "unknown")


def ours(path, n_prompt: int, n_decode: int) -> dict[str, float]:
    """Through ``LocalEngine.stream`` (a cold turn of ``n_prompt`` tokens): prefill tok/s from
    its TTFT and decode tok/s from its Usage; the raw ``Transformer.forward`` loop beside it."""
    import anyio

    from agentcore.bench._public import complete, prompt_request
    from agentcore.engine.local import LocalEngine

    eng = LocalEngine.from_gguf(path, device="cpu", context_length=n_prompt + n_decode + 64)
    anyio.run(complete, eng, prompt_request(eng, 16, "warm-up", 2))  # first-forward costs, once
    req = prompt_request(eng, n_prompt, "bench", n_decode)
    done = anyio.run(complete, eng, req)
    u = done.usage
    ids = eng._prompt(req, generation=True)[0]
    tr, kv = eng.transformer, eng.ops.new_kv(eng.spec, len(ids) + n_decode + 8)
    t0 = time.perf_counter()
    logits = tr.forward(ids, 0, kv)
    raw_prefill = len(ids) / (time.perf_counter() - t0)
    tok = int(np.argmax(logits))
    t0 = time.perf_counter()
    for i in range(n_decode):
        tok = int(np.argmax(tr.forward([tok], len(ids) + i, kv)))
    raw_decode = n_decode / (time.perf_counter() - t0)
    return {"prompt": u.prompt_tokens, "prefill": u.prompt_tokens / u.ttft_s,
            "decode": u.decode_tokens_per_s, "raw_prefill": raw_prefill, "raw_decode": raw_decode,
            "ids": ids}


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
    base = {"model": path.name, "device": f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()}",
            "git_sha": git_sha(), "command": "python -m agentcore.bench cpu " + " ".join(argv)}
    for ctx in (64, 2048):
        mine = ours(path, ctx, args.decode_tokens)
        other = peer(path, mine["ids"], args.decode_tokens, args.threads)
        figures = [("decode", 1)] + ([("prefill", 0)] if ctx == 2048 else [])
        for figure, k in figures:
            peer_value = None if other is None else round(other[k], 1)
            row = {"figure": figure, "ctx": mine["prompt"], "value": round(mine[figure], 1),
                   "unit": "tok/s (LocalEngine.stream)", "raw": round(mine[f"raw_{figure}"], 1),
                   "peer": {"name": "llama-cpp-python", "value": peer_value},
                   "ratio_to_peer": None if peer_value is None else round(mine[figure] / peer_value, 3),
                   **base}  # fmt: skip
            print(json.dumps(row), flush=True)
    return 0
