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
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from agentcore.errors import AgentCoreError

__all__ = ["main"]

# The demo's agent runs on a 135M model, so what it is given is shaped for one: a read_file
# whose only parameter is an enum of the workspace's file names (the constraint can only pick
# a real file), file names that say what is in them, and a worked example (question, call,
# result, answer) whose file is not in the workspace: a model this small copies an example's
# value whenever it is allowed to. Each task gets a fresh conversation for the same reason
# (an earlier answer would be copied); the shared prefix still comes from the checkpoint store.
DEMO_SYSTEM = (
    "You answer questions about the files in a small project. Read the file that holds the "
    "answer, then answer in one short sentence."
)
DEMO_FILES = {
    "budget.txt": "The budget is 500 euros.\n",
    "changelog.txt": "Alice owns the changelog.\n",
    "release.txt": "The release is on Friday.\n",
}
# (task, the file that answers it, the word the answer must contain)
DEMO_TASKS = (
    ("Who owns the changelog?", "changelog.txt", "Alice"),
    ("On which day is the release?", "release.txt", "Friday"),
    ("How big is the budget?", "budget.txt", "500"),
)


def agentcore_home() -> Path:
    return Path(os.environ.get("AGENTCORE_HOME", "~/.cache/agentcore")).expanduser()


def default_kv_dir() -> Path:
    return agentcore_home() / "kv"


def _load_engine(model: str, ctx: int | None, kv_dir: str | Path | None, device: str,
                 quiet: bool = False, chat_format: str | None = None):
    """The engine, with a progress bar on stderr: the model (pulled if missing), the weights."""
    from tqdm import tqdm

    from agentcore.engine import LocalEngine
    from agentcore.model_cache import resolve_model

    t0 = time.perf_counter()
    with tqdm(total=2, desc="loading", unit="step", file=sys.stderr, disable=quiet,
              bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} [{elapsed}]") as bar:
        bar.set_description(f"loading {model}: model file")
        path = resolve_model(model)
        bar.update()
        bar.set_description(f"loading {path.name}: weights")
        engine = LocalEngine.from_gguf(
            path, context_length=ctx, device=device, kv_dir=kv_dir or default_kv_dir(), chat_format=chat_format
        )
        bar.update()
    if not quiet:
        print(f"{path.name} on {engine.device}, ctx {engine.context_length}, "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return engine


# ---------------------------------------------------------------------------- demo


def _file_tools(workspace: Path) -> list[Any]:
    """read_file over the files in ``workspace``: their names are the schema's enum."""
    from typing import Literal

    from agentcore import tool

    names = tuple(sorted(p.name for p in workspace.iterdir() if p.is_file()))

    def read_file(name: str) -> str:
        """Read one project file.

        Args:
            name: The file to read.
        """
        return (workspace / name).read_text(encoding="utf-8")

    # Set at run time: the enum is whatever the workspace holds.
    read_file.__annotations__ = {"name": Literal[names], "return": str}
    return [tool(read_file)]


def _demo_example() -> list[Any]:
    """A worked example: question, call, result, answer."""
    from agentcore.messages import AssistantMessage, ToolCall, ToolMessage, UserMessage

    call = ToolCall(id="example", name="read_file", arguments={"name": "office.txt"})
    return [
        UserMessage(content="Where is the office?"),
        AssistantMessage(tool_calls=[call]),
        ToolMessage(call_id="example", name="read_file", content="The office is in Lyon.\n"),
        AssistantMessage(content="The office is in Lyon."),
    ]


def _answered(answer: str, workspace: Path, source: str, expected: str) -> bool:
    """The answer holds the expected word, and the workspace file really says it."""
    in_file = expected.lower() in (workspace / source).read_text(encoding="utf-8").lower()
    return in_file and expected.lower() in answer.lower()


def _usage_row(label: str, usage: Any, compactions: int) -> dict[str, Any]:
    reusable = getattr(usage, "reusable_tokens", None)
    return {
        "task": label, "prompt": usage.prompt_tokens, "reused": usage.cached_tokens,
        "reusable": usage.cached_tokens if reusable is None else reusable,
        "source": usage.cache_source, "ttft_ms": round(usage.ttft_s * 1000, 1),
        "decode_tok_s": round(usage.decode_tokens_per_s, 1), "checkpoint_ms": None,
        "compactions": compactions,
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'task':>7} {'prompt':>6} {'reused':>6} {'reusable':>8} {'source':>6} "
            f"{'TTFT ms':>7} {'tok/s':>6} {'ckpt ms':>7} {'compact':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ckpt = "-" if r["checkpoint_ms"] is None else f"{r['checkpoint_ms']:.0f}"
        print(f"{r['task']:>7} {r['prompt']:>6} {r['reused']:>6} {r['reusable']:>8} "
              f"{r['source']:>6} {r['ttft_ms']:>7.0f} {r['decode_tok_s']:>6.1f} {ckpt:>7} "
              f"{r['compactions']:>7}")


async def _demo_task(
    engine: Any, workspace: Path, task: str, label: str, args: argparse.Namespace,
    rows: list[dict[str, Any]],
) -> str:
    """One task in a fresh conversation; returns the answer and appends its turns to ``rows``."""
    from agentcore import Agent
    from agentcore.messages import (
        CheckpointEvent,
        CompactionEvent,
        FinalEvent,
        TextDelta,
        ToolCallEvent,
        ToolResultEvent,
        TurnEvent,
    )

    agent = Agent(engine, tools=_file_tools(workspace), system=DEMO_SYSTEM, workspace=workspace,
                  max_tokens=args.max_tokens, tool_choice="required", max_steps=2)
    agent.messages.extend(_demo_example())
    answer = ""
    compactions = 0
    if not args.json:
        print(f"\n[{label}] >>> {task}")
    async for event in agent.stream(task):
        if isinstance(event, TurnEvent):
            rows.append(_usage_row(label, event.usage, compactions))
        elif isinstance(event, CheckpointEvent) and rows:
            rows[-1]["checkpoint_ms"] = round(event.ms, 1)
        elif isinstance(event, CompactionEvent):
            compactions += 1
        elif isinstance(event, FinalEvent):
            answer = event.text.strip()
        if args.json:
            continue
        if isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, ToolCallEvent):
            params = ", ".join(f"{k}={v!r}" for k, v in event.call.arguments.items())
            print(f"[tool] {event.call.name}({params})")
        elif isinstance(event, ToolResultEvent):
            first = event.result.content.splitlines()[0] if event.result.content else ""
            print(f"[result{' error' if event.result.is_error else ''}] {first[:100]}")
        elif isinstance(event, FinalEvent):
            print()
    return answer


async def _demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    kv_dir = args.kv_dir or default_kv_dir()
    workspace = Path(tempfile.mkdtemp(prefix="agentcore-demo-"))
    rows: list[dict[str, Any]] = []
    correct = 0
    try:
        for name, text in DEMO_FILES.items():
            (workspace / name).write_text(text, encoding="utf-8")
        engine = _load_engine(args.model, args.ctx, kv_dir, args.device, quiet=args.json, chat_format=args.chat_format)
        for i, (task, source, expected) in enumerate(DEMO_TASKS, 1):
            answer = await _demo_task(engine, workspace, task, f"{i}", args, rows)
            ok = _answered(answer, workspace, source, expected)
            correct += ok
            if not args.json:
                print(f"[check] {'correct' if ok else 'WRONG'}: {source} says {expected!r}")
        # A restart: a new engine on the same kv_dir serves the shared prefix from disk.
        engine.close()  # written-behind checkpoints are on disk once close returns
        engine = _load_engine(args.model, args.ctx, kv_dir, args.device, quiet=args.json, chat_format=args.chat_format)
        await _demo_task(engine, workspace, DEMO_TASKS[0][0], "restart", args, rows)
        restart = next(r for r in rows if r["task"] == "restart")
        if args.json:
            for r in rows:
                print(json.dumps(r))
            print(json.dumps({"correct": correct, "tasks": len(DEMO_TASKS),
                              "restart_source": restart["source"],
                              "wall_s": round(time.perf_counter() - t0, 1)}))
            return 0
        print()
        _print_table(rows)
        print(f"\nafter the restart the first turn reused {restart['reused']} of "
              f"{restart['prompt']} prompt tokens from {restart['source']} (kv_dir: {kv_dir})")
        print(f"wall time {time.perf_counter() - t0:.1f} s, load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"demo: {correct}/{len(DEMO_TASKS)} tasks answered correctly")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return 0


# ---------------------------------------------------------------------------- chat / run


CHAT_HELP = """commands:
  /stats    the last turn's reuse and timing, the checkpoint store
  /compact  compact the conversation now
  /reset    start a new conversation (checkpoints stay)
  /quit     leave (or Ctrl-D); Ctrl-C stops a reply"""


def _line_editing() -> None:
    """Arrow keys and history for input() (readline), history kept in $AGENTCORE_HOME."""
    try:
        import readline
    except ImportError:  # not on every platform; input() still works without it
        return
    import atexit

    history = agentcore_home() / "chat_history"
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)
        except OSError:
            pass

    atexit.register(save)


def _chat_stats(engine: Any, agent: Any) -> str:
    stats = engine.stats()
    lines = []
    if agent.usages:
        u = agent.usages[-1]
        reusable = getattr(u, "reusable_tokens", u.cached_tokens)
        lines.append(f"last turn: prompt {u.prompt_tokens}, reused {u.cached_tokens} of "
                     f"{reusable} reusable ({u.cache_source}), TTFT {u.ttft_s * 1000:.0f} ms, "
                     f"{u.decode_tokens_per_s:.1f} tok/s")
    else:
        lines.append("no turns yet")
    tiers, store = stats["tiers"], stats["store"]
    lines.append(f"turns {len(agent.usages)}, mean reuse {stats['reuse_mean']:.1%}, "
                 f"checkpoints {len(agent.checkpoints)}, compactions {len(agent.compactions)}")
    lines.append(f"store: ram {store.get('ram_blocks', 0)} blocks "
                 f"({store.get('ram_bytes', 0) / 1e6:.1f} MB), disk {store.get('disk_blocks', 0)} "
                 f"blocks ({store.get('disk_bytes', 0) / 1e6:.1f} MB); hits ram "
                 f"{tiers['ram_hits']}, disk {tiers['disk_hits']}, misses {tiers['misses']}")
    return "\n".join(lines)


async def _chat(args: argparse.Namespace) -> int:
    import signal

    from agentcore import Agent
    from agentcore.messages import TextDelta, ToolCallEvent

    engine = _load_engine(args.model, args.ctx, args.kv_dir, args.device, chat_format=args.chat_format)
    tools: list[Any] = []
    if args.tools:
        from agentcore.tools.builtin import builtin_tools

        tools = builtin_tools(args.workspace)

    def new_agent() -> Agent:
        return Agent(engine, tools=tools, system=args.system, workspace=args.workspace,
                     max_tokens=args.max_tokens)

    agent = new_agent()
    _line_editing()
    print("agentcore chat: type a message; /help for commands, Ctrl-C stops a reply, "
          "Ctrl-D quits", file=sys.stderr)
    reply: list[anyio.CancelScope] = []  # the reply being generated, if any

    async def on_interrupt() -> None:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if reply:
                    reply[0].cancel()
                else:
                    print("\n(Ctrl-D or /quit leaves)\n> ", end="", file=sys.stderr, flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(on_interrupt)
        while True:
            try:
                line = (await anyio.to_thread.run_sync(input, "> ")).strip()
            except EOFError:
                print(file=sys.stderr)
                break
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/help":
                print(CHAT_HELP)
            elif line == "/stats":
                print(_chat_stats(engine, agent))
            elif line == "/compact":
                event = await agent.compact()
                print("nothing to compact yet" if event is None else f"compacted {event.before_tokens} -> {event.after_tokens} tokens "
                      f"({event.strategy})")
            elif line == "/reset":
                agent = new_agent()
                print("new conversation")
            elif line.startswith("/"):
                print(f"unknown command {line.split()[0]}; /help lists them")
            else:
                with anyio.CancelScope() as scope:
                    reply.append(scope)
                    async for event in agent.stream(line):
                        if isinstance(event, TextDelta):
                            print(event.text, end="", flush=True)
                        elif isinstance(event, ToolCallEvent):
                            print(f"\n[tool] {event.call.name}({json.dumps(event.call.arguments)})")
                reply.clear()
                print(" [stopped]" if scope.cancelled_caught else "")
        tg.cancel_scope.cancel()
    return 0


async def _run(args: argparse.Namespace) -> int:
    from agentcore import Agent
    from agentcore.messages import FinalEvent, TextDelta, ToolCallEvent, ToolResultEvent
    from agentcore.tools.builtin import builtin_tools

    engine = _load_engine(args.model, args.ctx, args.kv_dir, args.device, quiet=args.json, chat_format=args.chat_format)
    agent = Agent(engine, tools=builtin_tools(args.workspace), system=args.system,
                  workspace=args.workspace, max_steps=args.max_steps, max_tokens=args.max_tokens)
    async for event in agent.stream(args.task):
        if args.json:
            print(_event_json(event))
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
    from agentcore.engine.model.chat import CHAT_FORMATS

    p = argparse.ArgumentParser(prog="agentcore", description="Tool-using agents on a local GGUF model.")
    p.add_argument("-v", "--verbose", action="store_true", help="log kv cache lines to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    def engine_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default="smollm2", help="a .gguf path or a known name (default smollm2)")
        sp.add_argument("--ctx", type=int, default=8192, help="context length in tokens (default 8192)")
        sp.add_argument("--kv-dir", default=None, help=f"checkpoint directory (default {default_kv_dir()})")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sp.add_argument("--chat-format", default=None, choices=sorted(CHAT_FORMATS),
                        help="the prompt format (default: read from the file's chat template)")
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


def _event_json(event: BaseModel) -> str:
    """One JSON line; text that is not valid Unicode (a non-UTF-8 file name) is escaped."""
    try:
        return event.model_dump_json()
    except PydanticSerializationError:
        return json.dumps(event.model_dump(mode="json"), separators=(",", ":"))


def _tolerant_output() -> None:
    """Print what cannot be encoded (lone surrogates from file names) as escapes, not crash."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _tolerant_output()
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
