"""RemoteEngine against a real llama-server with the real SmolLM2, on 127.0.0.1.

Runs with ``make test-integration`` (which builds the server once, see
scripts/build_llama_server.sh, and passes its path in $LLAMA_SERVER); plain ``make test``
deselects the ``integration`` marker. Each test prints its measured numbers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import anyio
import httpx
import pytest

from agentcore.engine import Completion, GenerationRequest, RemoteEngine, TextDelta
from agentcore.errors import ContextOverflow
from agentcore.messages import AssistantMessage, SystemMessage, ToolMessage, ToolSpec, UserMessage

pytestmark = [pytest.mark.integration, pytest.mark.real_model]

N_CTX = 2048
DEFAULT_BIN = Path(os.environ.get("AGENTCORE_HOME", Path.home() / ".cache" / "agentcore")) / "llama-server/build/bin/llama-server"
TOOLS = [ToolSpec(name="read_file", description="Read a file in the workspace.",
                  parameters={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})]


def server_binary() -> Path:
    given = os.environ.get("LLAMA_SERVER")
    if given:
        assert Path(given).is_file(), f"LLAMA_SERVER={given} does not exist"
        return Path(given)
    if not DEFAULT_BIN.is_file():
        pytest.skip("no llama-server: run `make test-integration` (it builds one)")
    return DEFAULT_BIN


class LlamaServer:
    """One llama-server process on a fixed port; ``restart`` keeps the port and slot dir."""

    def __init__(self, binary: Path, model: Path, slot_dir: Path, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                     "-c", str(N_CTX), "--parallel", "1", "--slot-save-path", str(slot_dir),
                     "-t", "2", "--seed", "1"]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "LD_LIBRARY_PATH": str(Path(self.args[0]).parent)})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("llama-server did not become healthy in 120 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def server(tmp_path, smollm2_path):
    slot_dir = tmp_path / "slots"
    slot_dir.mkdir()
    srv = LlamaServer(server_binary(), smollm2_path, slot_dir, tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


def generate(engine: RemoteEngine, messages, session_id: str = "it", **kw) -> Completion:
    async def go() -> Completion:
        request = GenerationRequest(session_id=session_id, messages=list(messages), tools=TOOLS,
                                    max_tokens=kw.pop("max_tokens", 24), **kw)
        completion = None
        async for item in engine.stream(request):
            if not isinstance(item, TextDelta):
                completion = item
        assert completion is not None
        return completion

    return anyio.run(go)


def checkpoint(engine: RemoteEngine, messages):
    return anyio.run(engine.checkpoint, GenerationRequest(session_id="it", messages=list(messages), tools=TOOLS))


def turn_row(engine: RemoteEngine) -> dict:
    return engine.stats()["turns"][-1]


def tool_round(messages, completion: Completion, i: int) -> None:
    """The assistant's turn as sampled, then a tool result, as the agent loop appends them."""
    messages.append(AssistantMessage(content=completion.text, token_ids=completion.token_ids))
    messages.append(ToolMessage(call_id=f"call-{i}", name="read_file",
                                content=f"line {i}: the build passed with {i * 7} warnings."))


def test_multi_turn_session_restart_and_overflow(server):
    engine = RemoteEngine(server.url)
    assert engine.dialect.name == "llama.cpp" and engine.context_length == N_CTX
    assert engine.chat is not None and engine.chat.name == "chatml"
    messages = [SystemMessage(content="You are a terse assistant for a build system."),
                UserMessage(content="Summarise the build logs one line at a time.")]
    rows = []
    for i in range(1, 6):
        completion = generate(engine, messages)
        rows.append(turn_row(engine))
        tool_round(messages, completion, i)
        info = checkpoint(engine, messages)
        rows.append(turn_row(engine))
        assert info.bytes_written > 0 and info.tokens == len(engine.sessions["it"].computed)
    for row in rows:
        print(f"turn kind={row['kind']} prompt={row['prompt']} reusable={row['reusable']} "
              f"cached={row['cached']} of_reusable={row['of_reusable']} source={row['source']}")
    assert rows[0]["reason"] == "cold"
    for row in rows[1:]:
        assert row["cached"] >= 0.99 * row["reusable"], row

    # The server restarts: the next turn comes back from the slot saved by the last checkpoint.
    server.restart()
    completion = generate(engine, messages)
    row = turn_row(engine)
    print(f"after restart: prompt={row['prompt']} reusable={row['reusable']} cached={row['cached']} "
          f"source={row['source']} restore_ms={row['load_ms']}")
    assert completion.usage.cache_source == "disk"
    assert row["cached"] >= 0.99 * row["reusable"]
    tool_round(messages, completion, 6)
    checkpoint(engine, messages)  # as the loop does after every tool round-trip

    # An oversized prompt: refused locally with the server's limit, and by the server itself
    # when the user's limit is wrong; after either, the session goes on.
    huge = [*messages, UserMessage(content="word " * 2500)]
    with pytest.raises(ContextOverflow):
        generate(engine, huge)
    # (A second engine on the same one-slot server, with its own session: its requests may
    # take the slot, after which "it" comes back from its last checkpoint.)
    lying = RemoteEngine(server.url, context_length=100_000)
    t0 = time.perf_counter()
    with pytest.raises(ContextOverflow, match="exceeds the available context") as info:
        generate(lying, huge, session_id="other")
    print(f"server overflow: {info.value} ({(time.perf_counter() - t0) * 1000:.0f} ms, no retry)")
    completion = generate(engine, messages)
    row = turn_row(engine)
    print(f"after overflow: prompt={row['prompt']} reusable={row['reusable']} cached={row['cached']}")
    assert completion.usage.completion_tokens > 0
    assert row["cached"] >= 0.99 * row["reusable"]


def test_count_tokens_matches_the_server(server, smollm2_path):
    """The server's /tokenize and the GGUF tokenizer render the same prompt."""
    remote = RemoteEngine(server.url)
    local = RemoteEngine(server.url, gguf=smollm2_path)
    messages = [SystemMessage(content="sys"), UserMessage(content="Count me: 12345, naïve café!")]
    request = GenerationRequest(session_id="c", messages=messages, tools=TOOLS)
    assert remote._prompt(request, generation=True) == local._prompt(request, generation=True)
    completion = generate(local, messages)
    assert completion.usage.prompt_tokens == local.count_tokens(
        GenerationRequest(session_id="it", messages=messages, tools=TOOLS))
