"""Cache benchmark: restore vs recompute, restore bandwidth, and per-turn reuse of a session.

``python -m agentcore.bench cache [--sizes 2048,8192] [--device cpu]`` prints JSON lines:
- ``restore``: N prompt tokens restored from the disk tier into a fresh engine's KV vs the
  cold prefill of the same N tokens, with the ratio and restore GB/s (from disk, through the
  page cache as a reused kv_dir would be);
- ``reuse``: common/prompt of every turn of a 30-turn tool-calling session on the real model
  (assistant turns teacher-forced so the run is deterministic; prefill and KV are real), and
  the same session's next turn in a new engine on the same kv_dir (reuse after restart).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np

from agentcore.bench.cpu import git_sha
from agentcore.engine.base import GenerationRequest
from agentcore.engine.kvstore.blocks import block_hashes, read_span, write_span
from agentcore.engine.local import LocalEngine
from agentcore.model_cache import resolve_model
from agentcore.messages import (
    AssistantMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)

SPEC = ToolSpec(name="read_file", description="Read a file.",
                parameters={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})


def restore_vs_recompute(path, n: int, device: str, kv_dir: str) -> dict:
    eng = LocalEngine.from_gguf(path, device=device, context_length=n + 64, kv_dir=kv_dir)
    text = Path(__file__).read_text(encoding="utf-8")
    ids = (eng.tokenize(text) * (n // 1000 + 2))[:n]
    kv = eng.ops.new_kv(eng.spec, n)
    t0 = time.perf_counter()
    eng.transformer.forward(ids, 0, kv)
    prefill_s = time.perf_counter() - t0
    hashes = block_hashes(ids, eng.layout)
    eng.store.save("bench", ids, hashes, lambda s, k: read_span(kv, s, k), None)
    fresh = LocalEngine.from_gguf(path, device=device, context_length=n + 64, kv_dir=kv_dir)
    target = fresh.ops.new_kv(fresh.spec, n)
    t0 = time.perf_counter()
    got = fresh.store.restore(ids, hashes, lambda s, b: write_span(target, s, b))
    restore_s = time.perf_counter() - t0
    assert got.source == "disk" and got.tokens == n, got
    return {"figure": "restore", "tokens": n, "restore_ms": round(restore_s * 1000, 1),
            "recompute_ms": round(prefill_s * 1000, 1), "ratio": round(prefill_s / restore_s, 1),
            "value": round(got.bytes_read / restore_s / 1e9, 2), "unit": "GB/s restored (disk -> KV)",
            "bytes": got.bytes_read}


def transcript(turn: int) -> list:
    msgs = [SystemMessage(content="You are a coding agent. Read files before you answer. " * 8),
            UserMessage(content="Summarise every file in the project.")]
    for i in range(turn):
        call = ToolCall(id=f"c{i}", name="read_file", arguments={"path": f"src/module_{i}.py"})
        msgs.append(AssistantMessage(content=f"Reading module {i}.", tool_calls=[call]))
        msgs.append(ToolMessage(call_id=f"c{i}", name="read_file",
                                content=f"def f{i}(x):\n    return x * {i}  # module {i}\n" * 3))
    return msgs


async def session_reuse(path, device: str, kv_dir: str, turns: int) -> list[dict]:
    eng = LocalEngine.from_gguf(path, device=device, context_length=8192, kv_dir=kv_dir)
    rows = []
    for turn in range(turns + 1):
        req = GenerationRequest(session_id="s", messages=transcript(turn), tools=[SPEC], max_tokens=1)
        async for done in eng.stream(req):
            pass
        rows.append({"figure": "reuse", "turn": turn + 1, "prompt": done.usage.prompt_tokens,
                     "common": done.usage.cached_tokens, "value": round(done.usage.reuse, 4),
                     "unit": "common/prompt", "source": done.usage.cache_source})
        await eng.checkpoint(GenerationRequest(session_id="s", messages=transcript(turn + 1), tools=[SPEC]))
    restarted = LocalEngine.from_gguf(path, device=device, context_length=8192, kv_dir=kv_dir)
    req = GenerationRequest(session_id="s", messages=transcript(turns + 1), tools=[SPEC], max_tokens=1)
    async for done in restarted.stream(req):
        pass
    rows.append({"figure": "reuse_after_restart", "turn": turns + 2, "prompt": done.usage.prompt_tokens,
                 "common": done.usage.cached_tokens, "value": round(done.usage.reuse, 4),
                 "unit": "common/prompt", "source": done.usage.cache_source})
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m agentcore.bench cache")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="2048,8192", help="prefix sizes for restore vs recompute")
    p.add_argument("--turns", type=int, default=30)
    args = p.parse_args(argv)
    path = resolve_model(args.model)
    base = {"model": path.name, "device": args.device, "git_sha": git_sha(),
            "command": "python -m agentcore.bench cache " + " ".join(argv)}
    for n in [int(s) for s in args.sizes.split(",") if s]:
        with tempfile.TemporaryDirectory() as kv_dir:
            print(json.dumps({**restore_vs_recompute(path, n, args.device, kv_dir), **base}), flush=True)
    with tempfile.TemporaryDirectory() as kv_dir:
        rows = anyio.run(session_reuse, path, args.device, kv_dir, args.turns)
    for row in rows:
        print(json.dumps({**row, **base}), flush=True)
    later = [r["value"] for r in rows[1:-1]]
    print(json.dumps({"figure": "reuse_min", "value": min(later), "mean": round(float(np.mean(later)), 4),
                      "turns": len(later), "unit": "common/prompt, turns after the first", **base}))
    return 0
