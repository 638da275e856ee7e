"""Cache benchmark: restore vs recompute through the public API, the raw store beside it, and
a 30-turn session's per-turn reuse.

``python -m agentcore.bench cache [--sizes 2048,8192,32768] [--turns 30] [--skip ...]`` prints
JSON lines (each with the command, git sha, device and the load average at the start):
- ``restore``: a cold LocalEngine on the real model answers an N-token prompt (the recompute
  TTFT) and checkpoints it (``await engine.checkpoint(request)``); a NEW LocalEngine on the
  same kv_dir answers the same prompt (its TTFT: disk restore + the last tokens), with the
  ratio, and so does a new process (``restart``: what a restarted app sees, without this
  process's memory history); ``context_length`` is sized to N;
- ``store``: the CheckpointStore alone on the same KV layout: save latency (the part a
  checkpoint puts on the turn's critical path), write-behind flush, restore GB/s with the
  page cache warm and cold (pages dropped with POSIX_FADV_DONTNEED), and xxh3 GB/s;
- ``reuse``: reused/reusable and common/prompt of every turn of a tool-calling session
  (assistant turns teacher-forced so the run is deterministic; prefill and KV are real), the
  checkpoint cost per turn, and whether each block was written once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np
import xxhash

from agentcore.bench.cpu import git_sha
from agentcore.engine.base import GenerationRequest
from agentcore.engine.kvstore.blocks import KVLayout, block_hashes
from agentcore.engine.kvstore.store import CheckpointStore
from agentcore.engine.local import LocalEngine
from agentcore.messages import (
    AssistantMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)
from agentcore.model_cache import pull

SPEC = ToolSpec(name="read_file", description="Read a file.",
                parameters={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})


def _long_prompt(eng: LocalEngine, n: int) -> GenerationRequest:
    """A request whose prompt is about ``n`` tokens (a long document to answer about)."""
    text = Path(__file__).read_text(encoding="utf-8")
    per = max(1, eng.count_text(text))
    doc = text * (n // per + 1)
    ids = eng.tokenize(doc)
    messages = [SystemMessage(content="You answer questions about a document."), UserMessage(content="")]
    overhead = eng.count_tokens(GenerationRequest(session_id="b", messages=messages, max_tokens=1))
    body = eng.detokenize(ids[: max(1, n - overhead)])
    messages[1] = UserMessage(content=body + "\nWhat does this file do?")
    return GenerationRequest(session_id="bench", messages=messages, max_tokens=1)


async def _first_token(eng: LocalEngine, request: GenerationRequest):
    done = None
    async for item in eng.stream(request):
        done = item
    return done


async def restore_vs_recompute(path: Path, n: int, kv_dir: str) -> dict:
    """A cold engine answers an N-token prompt (its TTFT is the recompute figure) and
    checkpoints it; a NEW engine on the same kv_dir answers the same prompt from disk."""
    ctx = n + 512
    writer = LocalEngine.from_gguf(path, device="cpu", context_length=ctx, kv_dir=kv_dir)
    request = _long_prompt(writer, n)
    cold = await _first_token(writer, request)
    info = await writer.checkpoint(request)
    t0 = time.perf_counter()
    writer.store.flush()
    flush_ms = (time.perf_counter() - t0) * 1000
    restorer = LocalEngine.from_gguf(path, device="cpu", context_length=ctx, kv_dir=kv_dir)
    warm = await _first_token(restorer, request)
    turn = restorer.stats()["turns"][-1]
    restart = _restore_in_new_process(path, ctx, kv_dir, request)
    return {
        "figure": "restore", "tokens": warm.usage.prompt_tokens, "restored_tokens": warm.usage.cached_tokens,
        "source": warm.usage.cache_source, "restore_ttft_ms": round(warm.usage.ttft_s * 1000, 1),
        "restore_load_ms": turn["load_ms"], "restore_prefill_ms": turn["prefill_ms"],
        "recompute_ttft_ms": round(cold.usage.ttft_s * 1000, 1),
        "value": round(cold.usage.ttft_s / warm.usage.ttft_s, 1), "unit": "x (cold prefill TTFT / restore TTFT)",
        "restore_gbs": round(info.bytes_written / turn["load_ms"] / 1e6, 2) if turn["load_ms"] else None,
        "checkpoint_store_ms": round(info.store_ms, 1), "checkpoint_flush_ms": round(flush_ms, 1),
        "checkpoint_bytes": info.bytes_written, "same_first_token": warm.token_ids == cold.token_ids,
        "restart": {**restart, "value": round(cold.usage.ttft_s * 1000 / restart["ttft_ms"], 1),
                    "same_first_token": restart["token_ids"] == cold.token_ids},
    }


def _restore_in_new_process(path: Path, ctx: int, kv_dir: str, request: GenerationRequest) -> dict:
    """The same restore by a new process on the same kv_dir (what a restart sees): its TTFT,
    load and prefill ms, source and first tokens."""
    job = json.dumps({"path": str(path), "ctx": ctx, "kv_dir": kv_dir, "request": request.model_dump(mode="json")})
    code = "from agentcore.bench.cache import _restore_child; _restore_child()"
    out = subprocess.run([sys.executable, "-c", code], input=job, capture_output=True, text=True, check=True,
                         timeout=600)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _restore_child() -> None:
    job = json.loads(sys.stdin.read())
    eng = LocalEngine.from_gguf(job["path"], device="cpu", context_length=job["ctx"], kv_dir=job["kv_dir"])
    done = anyio.run(_first_token, eng, GenerationRequest.model_validate(job["request"]))
    turn = eng.stats()["turns"][-1]
    print(json.dumps({"ttft_ms": round(done.usage.ttft_s * 1000, 1), "load_ms": turn["load_ms"],
                      "prefill_ms": turn["prefill_ms"], "source": done.usage.cache_source,
                      "restored_tokens": done.usage.cached_tokens, "token_ids": done.token_ids}))  # fmt: skip


def _drop_pages(root: str) -> None:
    for d, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def store_alone(layout: KVLayout, n: int, repeats: int = 5) -> dict:
    """The CheckpointStore by itself on ``n`` tokens of random KV in ``layout``."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40000, n).tolist()
    hashes = block_hashes(ids, layout)
    kv = rng.standard_normal(layout.block_shape(n)).astype(layout.array_dtype)
    dest = np.zeros(layout.block_shape(n), layout.array_dtype)
    with tempfile.TemporaryDirectory() as kv_dir:
        store = CheckpointStore(layout, kv_dir=kv_dir, ram_bytes=4 * kv.nbytes, disk_bytes=4 * kv.nbytes)
        t0 = time.perf_counter()
        store.save("s", ids, hashes, lambda s, k: kv[:, :, s : s + k], None)
        save_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        store.flush()
        flush_ms = (time.perf_counter() - t0) * 1000
        fresh = CheckpointStore(layout, kv_dir=kv_dir)
        warm = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = fresh.restore(ids, hashes, into=dest)
            warm.append(time.perf_counter() - t0)
            assert got.tokens == n and got.source == "disk", got
        assert np.array_equal(dest, kv)
        cold = []
        for _ in range(2):
            _drop_pages(kv_dir)
            t0 = time.perf_counter()
            fresh.restore(ids, hashes, into=dest)
            cold.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(repeats):
        xxhash.xxh3_64_intdigest(kv)
    xxh = repeats * kv.nbytes / (time.perf_counter() - t0)
    return {
        "figure": "store", "tokens": n, "bytes": kv.nbytes, "save_ms": round(save_ms, 1),
        "flush_ms": round(flush_ms, 1), "value": round(kv.nbytes / min(warm) / 1e9, 2),
        "unit": "GB/s restored from disk, page cache warm (best of runs)",
        "warm_median_gbs": round(kv.nbytes / float(np.median(warm)) / 1e9, 2),
        "cold_gbs": round(kv.nbytes / min(cold) / 1e9, 2), "xxh3_gbs": round(xxh / 1e9, 2),
    }


def transcript(turn: int) -> list:
    msgs = [SystemMessage(content="You are a coding agent. Read files before you answer. " * 8),
            UserMessage(content="Summarise every file in the project.")]
    for i in range(turn):
        call = ToolCall(id=f"c{i}", name="read_file", arguments={"path": f"src/module_{i}.py"})
        msgs.append(AssistantMessage(content=f"Reading module {i}.", tool_calls=[call]))
        msgs.append(ToolMessage(call_id=f"c{i}", name="read_file",
                                content=f"def f{i}(x):\n    return x * {i}  # module {i}\n" * 3))
    return msgs


async def session_reuse(path: Path, kv_dir: str, turns: int) -> list[dict]:
    eng = LocalEngine.from_gguf(path, device="cpu", context_length=8192, kv_dir=kv_dir)
    rows = []
    reusable = 0  # tokens the session had computed and checkpointed before this turn
    for turn in range(turns + 1):
        req = GenerationRequest(session_id="s", messages=transcript(turn), tools=[SPEC], max_tokens=1)
        done = await _first_token(eng, req)
        u = done.usage
        rec = eng.stats()["turns"][-1]
        info = await eng.checkpoint(GenerationRequest(session_id="s", messages=transcript(turn + 1), tools=[SPEC]))
        rows.append({"figure": "reuse", "turn": turn + 1, "prompt": u.prompt_tokens, "reused": u.cached_tokens,
                     "reusable": reusable, "value": round(u.cached_tokens / reusable, 4) if reusable else None,
                     "unit": "reused/reusable", "common_over_prompt": round(u.cached_tokens / u.prompt_tokens, 4),
                     "source": u.cache_source, "prefill_ms": rec["prefill_ms"],
                     "checkpoint_ms": round(info.ms, 1), "checkpoint_store_ms": round(info.store_ms, 1),
                     "checkpoint_prefill_ms": round(info.prefill_ms, 1), "checkpoint_bytes": info.bytes_written})
        reusable = info.tokens
    blocks = eng.store.stats.blocks_written
    rows.append({"figure": "blocks_written_once", "value": blocks == reusable // eng.layout.block_size,
                 "blocks_written": blocks, "blocks_in_session": reusable // eng.layout.block_size,
                 "unit": "each block of the session written once"})
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m agentcore.bench cache")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--sizes", default="2048,8192", help="prompt sizes for restore vs recompute (add 32768)")
    p.add_argument("--turns", type=int, default=30)
    p.add_argument("--skip", default="", help="comma list of figures to skip: restore,store,reuse")
    p.add_argument("--plot", metavar="FILE.png", help="draw per-turn reuse and TTFT (needs [plot])")
    args = p.parse_args(argv)
    skip = set(args.skip.split(","))
    path = pull(args.model, progress=False) if args.model == "smollm2" else Path(args.model)
    base = {"model": path.name, "device": f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()}",
            "git_sha": git_sha(), "command": "python -m agentcore.bench cache " + " ".join(argv),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if "store" not in skip:
        layout = LocalEngine.from_gguf(path, device="cpu").layout
        for n in sizes:
            print(json.dumps({**store_alone(layout, n), **base}), flush=True)
    if "restore" not in skip:
        for n in sizes:
            with tempfile.TemporaryDirectory() as kv_dir:
                row = anyio.run(restore_vs_recompute, path, n, kv_dir)
            print(json.dumps({**row, **base, "load_avg_1m_end": round(os.getloadavg()[0], 2)}), flush=True)
    if "reuse" not in skip:
        with tempfile.TemporaryDirectory() as kv_dir:
            rows = anyio.run(session_reuse, path, kv_dir, args.turns)
        for row in rows:
            print(json.dumps({**row, **base}), flush=True)
        later = [r["value"] for r in rows if r["figure"] == "reuse" and r["value"] is not None]
        print(json.dumps({"figure": "reuse_min", "value": min(later), "turns": len(later),
                          "unit": "reused/reusable, turns after the first", **base}), flush=True)
        if args.plot:
            from agentcore.bench.plot import plot_session

            plot_session([{**row, **base} for row in rows], args.plot)
    return 0
