"""The ``agentcore`` command: demo, chat, run, models, cache, bench.

Errors are one clear line on stderr, never a traceback. Exit codes: 0 success, 1 a runtime
error agentcore understood (bad model file, context overflow, ...), 2 bad usage,
130 interrupted. ``--json`` prints machine-readable lines for scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from agentcore.errors import AgentCoreError

__all__ = ["main"]

DEMO_SYSTEM = (
    "You are a concise assistant working in a small project folder. Use the tools to look at "
    "files before answering, then answer in one or two sentences."
)
DEMO_FILES = {
    "notes.txt": "Meeting notes: the release is on Friday. Alice owns the changelog.\n",
    "todo.md": "# TODO\n- write the changelog\n- tag v0.2\n- announce the release\n",
}
DEMO_TASKS = (
    "What files are in the project folder?",
    "Read notes.txt. Who owns the changelog?",
    "Read todo.md. What is the first item?",
)


def agentcore_home() -> Path:
    return Path(os.environ.get("AGENTCORE_HOME", "~/.cache/agentcore")).expanduser()


def default_kv_dir() -> Path:
    return agentcore_home() / "kv"


def _load_engine(model: str, ctx: int | None, kv_dir: str | None, device: str, quiet: bool = False):
    from agentcore.engine.local import LocalEngine
    from agentcore.model_cache import resolve_model

    path = resolve_model(model)
    t0 = time.perf_counter()
    if not quiet:
        print(f"loading {path.name} ...", file=sys.stderr, end="", flush=True)
    engine = LocalEngine.from_gguf(
        path, context_length=ctx, device=device, kv_dir=kv_dir or default_kv_dir()
    )
    if not quiet:
        print(f" {engine.device}, ctx {engine.context_length}, {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    return engine


# ---------------------------------------------------------------------------- demo


def _turn_rows(events: list[Any]) -> list[dict[str, Any]]:
    """One row per model turn: usage plus the checkpoint that followed it."""
    from agentcore.messages import CheckpointEvent, CompactionEvent, TurnEvent

    rows: list[dict[str, Any]] = []
    compactions = 0
    for e in events:
        if isinstance(e, TurnEvent):
            u = e.usage
            rows.append({
                "turn": len(rows) + 1, "prompt": u.prompt_tokens, "reused": u.cached_tokens,
                "reuse": round(u.reuse, 4), "source": u.cache_source, "ttft_ms": round(u.ttft_s * 1000, 1),
                "decode_tok_s": round(u.decode_tokens_per_s, 1), "checkpoint_ms": None,
                "compactions": compactions, "finish": e.finish_reason,
            })
        elif isinstance(e, CheckpointEvent) and rows:
            rows[-1]["checkpoint_ms"] = round(e.ms, 1)
        elif isinstance(e, CompactionEvent):
            compactions += 1
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'turn':>4} {'prompt':>7} {'reused':>7} {'reuse':>7} {'source':>6} {'TTFT ms':>8} {'tok/s':>6} {'ckpt ms':>8} {'compact':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ckpt = "-" if r["checkpoint_ms"] is None else f"{r['checkpoint_ms']:.0f}"
        print(f"{r['turn']:>4} {r['prompt']:>7} {r['reused']:>7} {r['reuse']:>7.1%} {r['source']:>6} "
              f"{r['ttft_ms']:>8.0f} {r['decode_tok_s']:>6.1f} {ckpt:>8} {r['compactions']:>7}")


async def _demo(args: argparse.Namespace) -> int:
    from agentcore import Agent
    from agentcore.messages import FinalEvent, TextDelta, ToolCallEvent, ToolResultEvent
    from agentcore.tools.builtin import builtin_tools

    engine = _load_engine(args.model, args.ctx, args.kv_dir, args.device, quiet=args.json)
    workspace = Path(tempfile.mkdtemp(prefix="agentcore-demo-"))
    try:
        for name, text in DEMO_FILES.items():
            (workspace / name).write_text(text)
        tools = [t for t in builtin_tools(workspace) if t.name in ("read_file", "list_dir")]
        agent = Agent(engine, tools=tools, system=DEMO_SYSTEM, workspace=workspace,
                      max_tokens=args.max_tokens, tool_choice="required", max_steps=4,
                      session_id=f"demo-{int(time.time())}")
        events: list[Any] = []
        for task in DEMO_TASKS:
            if not args.json:
                print(f"\n>>> {task}")
            async for event in agent.stream(task):
                events.append(event)
                if args.json:
                    continue
                if isinstance(event, TextDelta):
                    print(event.text, end="", flush=True)
                elif isinstance(event, ToolCallEvent):
                    print(f"\n[tool] {event.call.name}({json.dumps(event.call.arguments)})")
                elif isinstance(event, ToolResultEvent):
                    first = event.result.content.splitlines()[0] if event.result.content else ""
                    print(f"[result{' error' if event.result.is_error else ''}] {first[:100]}")
                elif isinstance(event, FinalEvent):
                    print()
        rows = _turn_rows(events)
        if args.json:
            for r in rows:
                print(json.dumps(r))
        else:
            print()
            _print_table(rows)
            later = [r["reuse"] for r in rows[1:]]
            if later:
                print(f"\nreuse on turns after the first: min {min(later):.1%}, "
                      f"mean {sum(later) / len(later):.1%}  (kv_dir: {args.kv_dir or default_kv_dir()})")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return 0


# ---------------------------------------------------------------------------- chat / run


async def _chat(args: argparse.Namespace) -> int:
    from agentcore import Agent
    from agentcore.messages import TextDelta, ToolCallEvent
    from agentcore.tools.builtin import builtin_tools

    engine = _load_engine(args.model, args.ctx, args.kv_dir, args.device)
    tools = builtin_tools(args.workspace) if args.tools else []
    agent = Agent(engine, tools=tools, system=args.system, workspace=args.workspace,
                  max_tokens=args.max_tokens)
    print("agentcore chat: /stats /compact /reset /quit", file=sys.stderr)
    while True:
        try:
            line = await anyio.to_thread.run_sync(input, "> ")
        except EOFError:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/stats":
            stats = engine.stats()
            print(json.dumps({k: stats[k] for k in ("reuse_mean", "tiers", "store")}, indent=2))
            continue
        if line == "/compact":
            event = await agent.compact()
            print("nothing to compact" if event is None else
                  f"compacted {event.before_tokens} -> {event.after_tokens} tokens ({event.strategy})")
            continue
        if line == "/reset":
            agent = Agent(engine, tools=tools, system=args.system, workspace=args.workspace,
                          max_tokens=args.max_tokens)
            print("new conversation")
            continue
        async for event in agent.stream(line):
            if isinstance(event, TextDelta):
                print(event.text, end="", flush=True)
            elif isinstance(event, ToolCallEvent):
                print(f"\n[tool] {event.call.name}({json.dumps(event.call.arguments)})")
        print()


async def _run(args: argparse.Namespace) -> int:
    from agentcore import Agent
    from agentcore.messages import FinalEvent, TextDelta, ToolCallEvent, ToolResultEvent
    from agentcore.tools.builtin import builtin_tools

    engine = _load_engine(args.model, args.ctx, args.kv_dir, args.device, quiet=args.json)
    agent = Agent(engine, tools=builtin_tools(args.workspace), system=args.system,
                  workspace=args.workspace, max_steps=args.max_steps, max_tokens=args.max_tokens)
    async for event in agent.stream(args.task):
        if args.json:
            print(event.model_dump_json())
        elif isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, ToolCallEvent):
            print(f"\n[tool] {event.call.name}({json.dumps(event.call.arguments)})")
        elif isinstance(event, ToolResultEvent):
            print(f"[result{' error' if event.result.is_error else ''}] {event.result.content[:200]}")
        elif isinstance(event, FinalEvent) and event.stop_reason == "max_steps":
            print(f"\nstopped after {args.max_steps} steps", file=sys.stderr)
            return 1
    print()
    return 0


# ---------------------------------------------------------------------------- models / cache


def _models(args: argparse.Namespace) -> int:
    from agentcore import model_cache

    if args.action == "pull":
        path = model_cache.pull(args.name, progress=not args.json)
        print(json.dumps({"name": args.name, "path": str(path)}) if args.json else path)
        return 0
    for entry in model_cache.list_models():
        name, path, size, present = entry
        if args.json:
            print(json.dumps({"name": name, "path": str(path), "bytes": size, "present": present}))
        else:
            print(f"{name:12} {'present' if present else 'absent ':8} {size / 1e6:8.1f} MB  {path}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from agentcore.engine.kvstore.stats import load, summarize

    kv_dir = Path(args.kv_dir or default_kv_dir()).expanduser()
    files = [p for p in kv_dir.rglob("*") if p.is_file() and not p.is_symlink()] if kv_dir.exists() else []
    if args.action == "clear":
        for p in files:
            p.unlink(missing_ok=True)
        out = {"kv_dir": str(kv_dir), "removed_files": len(files)}
    else:
        blocks = [p for p in files if p.suffix == ".kvb"]
        tails = [p for p in files if p.suffix == ".kvt"]
        models = sorted({p.parent.parent.name for p in blocks + tails} | {p.parent.name for p in files
                                                                            if p.name == "stats.json"})
        # Write amplification (bytes written / bytes reused) and the p90 miss cost, per model,
        # from the stats.json each store merges its figures into at flush and close.
        history = {m: summarize(load((kv_dir / m / "stats.json").read_text()))
                   for m in models if (kv_dir / m / "stats.json").is_file()}
        out = {"kv_dir": str(kv_dir), "blocks": len(blocks), "tails": len(tails),
               "temp_files": sum(p.name.startswith(".tmp-") for p in files),
               "bytes": sum(p.stat().st_size for p in files), "models": models, "stats": history}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k != "stats":
                print(f"{k}: {v}")
        for model, figures in out.get("stats", {}).items():
            print(f"model {model}:")
            for k, v in figures.items():
                print(f"  {k}: {v}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from agentcore.bench.__main__ import main as bench_main

    return bench_main(args.rest) or 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentcore", description="Tool-using agents on a local GGUF model.")
    p.add_argument("-v", "--verbose", action="store_true", help="log kv cache lines to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    def engine_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default="smollm2", help="a .gguf path or a known name (default smollm2)")
        sp.add_argument("--ctx", type=int, default=8192, help="context length in tokens (default 8192)")
        sp.add_argument("--kv-dir", default=None, help=f"checkpoint directory (default {default_kv_dir()})")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sp.add_argument("--max-tokens", type=int, default=256, help="max new tokens per turn")
        sp.add_argument("--json", action="store_true", help="JSON lines on stdout")

    d = sub.add_parser("demo", help="a short multi-turn agent session on the default model")
    engine_args(d)
    d.set_defaults(func=_demo, is_async=True)

    c = sub.add_parser("chat", help="interactive chat (REPL) with streaming")
    engine_args(c)
    c.add_argument("--tools", action="store_true", help="enable the workspace file and shell tools")
    c.add_argument("--workspace", default=".", help="workspace root for --tools")
    c.add_argument("--system", default="You are a helpful assistant.")
    c.set_defaults(func=_chat, is_async=True)

    r = sub.add_parser("run", help="one agent run with the file and shell tools")
    engine_args(r)
    r.add_argument("task")
    r.add_argument("--workspace", default=".")
    r.add_argument("--max-steps", type=int, default=20)
    r.add_argument("--system", default="You are a careful coding agent. Use the tools.")
    r.set_defaults(func=_run, is_async=True)

    m = sub.add_parser("models", help="pull or list models")
    m.add_argument("action", choices=["pull", "list"])
    m.add_argument("name", nargs="?", default="smollm2")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_models, is_async=False)

    k = sub.add_parser("cache", help="inspect or clear the KV checkpoint directory")
    k.add_argument("action", choices=["stats", "clear"])
    k.add_argument("--kv-dir", default=None)
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=_cache, is_async=False)

    b = sub.add_parser("bench", help="benchmarks (python -m agentcore.bench)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_bench, is_async=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.is_async:
            return anyio.run(args.func, args)
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except AgentCoreError as exc:
        print(f"agentcore: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"agentcore: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
