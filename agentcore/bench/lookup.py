"""Prompt-lookup speculative decoding on agent transcripts: acceptance and speedup.

``python -m agentcore.bench lookup [--model smollm2] [--draft-tokens 8] [--device cpu|cuda] [--out DIR]``

Each transcript is what an agent loop sends for its next reply: a system prompt, the task,
the model's tool call, the tool's result (a file), and the follow-up request. The reply is
generated twice through ``LocalEngine.stream`` on fresh engines, greedy: with
``draft_tokens=0`` and with drafts. The figures: decode tok/s of both, draft tokens checked
and kept, tokens per model step, and whether the two replies are the same tokens (they must
be: the kept prefix is what the model draws itself). One JSON line per transcript.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from agentcore.bench._public import complete
from agentcore.bench.cpu import git_sha
from agentcore.engine import GenerationRequest, LocalEngine, Sampling
from agentcore.messages import (
    AssistantMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)

CONFIG_PY = '''def read_config(path):
    with open(path) as f:
        lines = f.readlines()
    config = {}
    for line in lines:
        key, value = line.strip().split("=")
        config[key] = value
    return config


def write_config(path, config):
    with open(path, "w") as f:
        for key, value in config.items():
            f.write(f"{key}={value}\\n")
'''

NOTES_MD = """# Release checklist

1. Run the full test suite on a clean checkout.
2. Update the version in pyproject.toml and the changelog.
3. Build the wheel and the sdist with `python -m build`.
4. Upload to the test index first, then to PyPI.
5. Tag the release and push the tag.
"""

READ_FILE = ToolSpec(
    name="read_file",
    description="Read one project file.",
    parameters={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
)


def transcripts() -> list[tuple[str, list[Any]]]:
    """(name, messages): an agent's context just before its reply."""

    def after_read(task: str, name: str, content: str, follow_up: str) -> list[Any]:
        call = ToolCall(id="c1", name="read_file", arguments={"name": name})
        return [
            SystemMessage(content="You are a careful coding assistant. Use read_file to see files."),
            UserMessage(content=task),
            AssistantMessage(tool_calls=[call]),
            ToolMessage(call_id="c1", name="read_file", content=content),
            UserMessage(content=follow_up),
        ]

    return [
        ("edit-code", after_read("Document config.py.", "config.py", CONFIG_PY,
                                 "Add a docstring to each function and return the whole file.")),
        ("quote-file", after_read("What does the release checklist say?", "notes.md", NOTES_MD,
                                  "Repeat the checklist steps exactly, one per line.")),
        ("explain-code", after_read("What does config.py do?", "config.py", CONFIG_PY,
                                    "Explain what each function does, quoting its code.")),
    ]  # fmt: skip


def run_one(path: Path, messages: list[Any], draft_tokens: int, max_tokens: int, device: str = "cpu") -> Any:
    eng = LocalEngine.from_gguf(path, device=device, draft_tokens=draft_tokens)
    if device == "cuda":  # the CUDA decoder's check and the batched GEMV under it (off by default)
        from agentcore.engine.backends.cuda_graph import CudaDecoder

        CudaDecoder.verify_drafts = draft_tokens > 0
        eng.ops.multi_token_gemv = draft_tokens > 0
    req = GenerationRequest(session_id="bench", messages=messages, tools=[READ_FILE],
                            max_tokens=max_tokens, sampling=Sampling(temperature=0.0))  # fmt: skip
    done = anyio.run(complete, eng, req)
    eng.close()
    return done


def _device(device: str) -> str:
    if device == "cuda":
        import cupy as cp

        return cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m agentcore.bench lookup")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--draft-tokens", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--out", default=None, help="a folder for results.jsonl (default: stdout only)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: switches CudaDecoder.verify_drafts and CudaOps.multi_token_gemv on for the runs "
                        "with drafts (both off by default: not yet measured on a GPU)")  # fmt: skip
    args = p.parse_args(argv)
    from agentcore.model_cache import resolve_model

    path = resolve_model(args.model)
    command = "python -m agentcore.bench lookup " + " ".join(argv)
    sink = None
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        sink = (Path(args.out) / "results.jsonl").open("a", encoding="utf-8")
    for name, messages in transcripts():
        t0 = time.perf_counter()
        base = run_one(path, messages, 0, args.max_tokens, args.device)
        spec = run_one(path, messages, args.draft_tokens, args.max_tokens, args.device)
        u0, u1 = base.usage, spec.usage
        steps = u1.completion_tokens - u1.accepted_draft_tokens  # model steps (one token each, plus kept drafts)
        fig = {
            "figure": "prompt_lookup", "model": path.name, "transcript": name,
            "value": round(u1.decode_tokens_per_s / u0.decode_tokens_per_s, 3) if u0.decode_tokens_per_s else None,
            "unit": "x decode tok/s (LocalEngine.stream, draft_tokens vs 0)",
            "draft_tokens": args.draft_tokens, "tokens": u1.completion_tokens,
            "decode_tok_s": round(u1.decode_tokens_per_s, 2), "decode_tok_s_off": round(u0.decode_tokens_per_s, 2),
            "drafted": u1.draft_tokens, "accepted": u1.accepted_draft_tokens,
            "acceptance": round(u1.accepted_draft_tokens / u1.draft_tokens, 3) if u1.draft_tokens else None,
            "tokens_per_step": round(u1.completion_tokens / steps, 3) if steps else None,
            "same_tokens": spec.token_ids == base.token_ids, "finish_reason": spec.finish_reason,
            "seconds": round(time.perf_counter() - t0, 1),
            "device": _device(args.device), "git_sha": git_sha(),
            "command": command,
        }  # fmt: skip
        line = json.dumps(fig)
        print(line, flush=True)
        if sink is not None:
            sink.write(line + "\n")
            sink.flush()
        if not fig["same_tokens"]:
            print(f"# {name}: the replies differ", file=sys.stderr)
    if sink is not None:
        sink.close()
    return 0
