"""Workspace safety and output spill under hostile conditions (issue 17, items 5 and 6)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest
from tool_fixtures import run

from agentcore.context import Compactor, ContextPolicy
from agentcore.messages import AssistantMessage, SystemMessage, ToolCall, ToolMessage, UserMessage
from agentcore.tools import ToolRegistry
from agentcore.tools.builtin import builtin_tools
from agentcore.tools.capping import cap_output, spill_text

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def tools_by_name(workspace: Path, **kwargs):
    return {t.name: t for t in builtin_tools(workspace, **kwargs)}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_soon(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


# ------------------------------------------------------------- protected folders


@pytest.mark.parametrize(
    "path", [".git/config", ".git/hooks/new/pre-commit", "sub/.git/config", ".agentcore/x", ".GIT/config"]
)
async def test_write_file_refuses_protected_folders_and_creates_nothing(registry, workspace, path):
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    result = await run(registry, "write_file", path=path, content="[core]\n\tfsmonitor = evil\n")
    assert result.is_error and "ProtectedPath" in result.content
    assert (workspace / ".git" / "config").read_text() == "[core]\n"
    assert not (workspace / ".git" / "hooks").exists()
    assert not (workspace / "sub").exists()


async def test_write_file_refuses_a_protected_folder_reached_through_a_symlink(registry, workspace):
    (workspace / ".git").mkdir()
    (workspace / "innocent").symlink_to(".git")
    result = await run(registry, "write_file", path="innocent/config", content="evil")
    assert result.is_error and "ProtectedPath" in result.content
    assert not (workspace / ".git" / "config").exists()


async def test_reading_a_protected_folder_is_allowed(registry, workspace):
    (workspace / ".git").mkdir()
    (workspace / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    result = await run(registry, "read_file", path=".git/HEAD")
    assert result.content == "     1\tref: refs/heads/main"


async def test_protection_is_configurable(workspace):
    tools = builtin_tools(workspace, protected=())
    registry = ToolRegistry(tools, workspace=workspace)
    result = await run(registry, "write_file", path=".git/config", content="[core]\n")
    assert not result.is_error
    assert (workspace / ".git" / "config").read_text() == "[core]\n"


# ------------------------------------------------------------- symlink races


def _race(workspace: Path, outside: Path, body, tries: int) -> None:
    """Run ``body`` ``tries`` times while a thread swaps the folder ``inner`` with a symlink
    of the same name pointing outside, and back, as fast as it can."""
    inner, real, link = workspace / "inner", workspace / ".inner-real", workspace / ".inner-link"
    link.symlink_to(outside)
    stop = threading.Event()

    def flipper() -> None:
        steps = [(inner, real), (link, inner), (inner, link), (real, inner)]
        while not stop.is_set():
            for src, dst in steps:
                try:
                    os.rename(src, dst)
                except OSError:
                    pass  # a write_file may have created the folder in the gap; go on

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    try:
        for i in range(tries):
            body(i)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)


def _race_dirs(tmp_path: Path, workspace: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTSIDE")
    (workspace / "inner").mkdir()
    (workspace / "inner" / "secret.txt").write_text("inside")
    return outside


def test_no_read_escapes_through_a_symlink_flipped_during_the_call(tmp_path, workspace):
    outside = _race_dirs(tmp_path, workspace)
    read_file = tools_by_name(workspace)["read_file"]
    escaped = 0

    def body(_: int) -> None:
        nonlocal escaped
        # Refusals (WorkspaceEscape, FileNotFoundError) are the expected outcome half the time.
        with contextlib.suppress(Exception):
            escaped += "OUTSIDE" in read_file(path="inner/secret.txt")

    _race(workspace, outside, body, tries=6000)
    assert escaped == 0


def test_no_write_escapes_through_a_symlink_flipped_during_the_call(tmp_path, workspace):
    outside = _race_dirs(tmp_path, workspace)
    write_file = tools_by_name(workspace)["write_file"]

    def body(i: int) -> None:
        with contextlib.suppress(Exception):  # refusals are expected half the time
            write_file(path=f"inner/new{i}.txt", content="x")

    _race(workspace, outside, body, tries=6000)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_symlinks_that_stay_inside_are_followed(registry, workspace):
    (workspace / "a" / "b").mkdir(parents=True)
    (workspace / "a" / "b" / "f.txt").write_text("deep\n")
    (workspace / "rel").symlink_to("a/b")
    (workspace / "abs").symlink_to(workspace / "a")
    assert (await run(registry, "read_file", path="rel/f.txt")).content == "     1\tdeep"
    assert (await run(registry, "read_file", path="abs/b/../b/f.txt")).content == "     1\tdeep"
    write = await run(registry, "write_file", path="rel/g.txt", content="new")
    assert not write.is_error and (workspace / "a" / "b" / "g.txt").read_text() == "new"


async def test_a_relative_symlink_climbing_out_is_refused(registry, workspace, tmp_path):
    (tmp_path / "secret.txt").write_text("s3cret")
    (workspace / "up").symlink_to("../secret.txt")
    result = await run(registry, "read_file", path="up")
    assert result.is_error and "WorkspaceEscape" in result.content and "s3cret" not in result.content


# ------------------------------------------------------------- run_shell: escaping children


async def test_a_setsid_child_holding_the_pipe_does_not_stall_or_misreport(registry, workspace):
    command = (
        f"{sys.executable} -c 'import os, time; os.setsid(); "
        "open(\"bg.pid\", \"w\").write(str(os.getpid())); time.sleep(60)' & "
        "while [ ! -s bg.pid ]; do sleep 0.05; done; echo done"
    )
    start = time.monotonic()
    result = await run(registry, "run_shell", command=command, timeout=30)
    assert time.monotonic() - start < 8
    assert not result.is_error
    assert result.content.startswith("exit code 0\nstdout:\ndone\n")
    assert "timed out" not in result.content
    assert gone_soon(int((workspace / "bg.pid").read_text()))


async def test_a_setsid_child_does_not_survive_the_timeout(registry, workspace):
    command = (
        f"{sys.executable} -c 'import os, time; os.setsid(); "
        "open(\"bg.pid\", \"w\").write(str(os.getpid())); time.sleep(60)' & "
        "sleep 60"
    )
    result = await run(registry, "run_shell", command=command, timeout=1.5)
    assert result.is_error and "timed out after 1.5s" in result.content
    assert gone_soon(int((workspace / "bg.pid").read_text()))


# ------------------------------------------------------------- output flood and spill


async def test_a_100mb_flood_keeps_its_last_line_and_a_complete_spill(registry, workspace):
    command = "seq 1 14000000; echo THE-LAST-LINE"
    result = await run(registry, "run_shell", command=command, timeout=120)
    expected = "".join(f"{i}\n" for i in range(1, 14_000_001)) + "THE-LAST-LINE\n"
    assert len(expected) > 100_000_000
    assert result.content.rstrip().endswith("THE-LAST-LINE")
    match = re.search(r"complete stdout is in (\S+)", result.content)
    assert match, result.content[:500]
    spill = workspace / match.group(1)
    assert spill.stat().st_size == len(expected)
    digest = hashlib.sha256(expected.encode()).hexdigest()
    assert hashlib.sha256(spill.read_bytes()).hexdigest() == digest


async def test_a_flood_with_an_unwritable_spill_dir_still_keeps_head_and_tail(workspace):
    (workspace / ".agentcore").write_text("not a folder")
    registry = ToolRegistry(builtin_tools(workspace), workspace=workspace)
    result = await run(registry, "run_shell", command="seq 1 2000000; echo THE-LAST-LINE")
    assert not result.is_error
    assert result.content.rstrip().endswith("THE-LAST-LINE")
    assert "saving the complete stdout failed" in result.content
    assert "\n1\n2\n3\n" in result.content


def test_a_preexisting_spill_file_with_the_same_name_and_size_is_not_trusted(tmp_path):
    text = "the real output\n" * 1000
    data = text.encode()
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    forged = spill_dir / f"{hashlib.sha256(data).hexdigest()[:16]}.txt"
    forged.write_bytes(b"X" * len(data))
    path = spill_text(text, spill_dir)
    assert path.read_bytes() == data


def test_a_preexisting_spill_symlink_is_replaced_not_followed(tmp_path):
    text = "the real output\n" * 10
    data = text.encode()
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(data)
    name = spill_dir / f"{hashlib.sha256(data).hexdigest()[:16]}.txt"
    name.symlink_to(elsewhere)
    path = spill_text(text, spill_dir)
    assert not path.is_symlink() and path.read_bytes() == data


def test_cap_output_with_an_unwritable_spill_dir_keeps_head_and_tail_and_says_so(tmp_path):
    (tmp_path / "file").write_text("x")
    text = "".join(f"line {i}\n" for i in range(5000))
    capped = cap_output(text, max_tokens=200, spill_dir=tmp_path / "file" / "spill")
    assert capped.truncated and capped.spill_path is None
    assert capped.text.startswith("line 0\n") and capped.text.endswith("line 4999\n")
    assert "could not be saved" in capped.text


async def test_compaction_with_an_unwritable_spill_dir_falls_back_instead_of_raising(tmp_path):
    bad = tmp_path / "file"
    bad.write_text("x")

    def spill(message: ToolMessage) -> str:
        return str(spill_text(message.content, bad / "spill"))

    big = "".join(f"row {i}\n" for i in range(400))
    msgs = [SystemMessage(content="sys"), UserMessage(content="task")]
    for i in range(8):
        call = ToolCall(id=f"c{i}", name="t", arguments={})
        msgs += [AssistantMessage(content="", tool_calls=[call]),
                 ToolMessage(call_id=f"c{i}", name="t", content=big)]  # fmt: skip

    def count(ms) -> int:
        return sum(len(m.content) // 4 + 4 for m in ms)

    compactor = Compactor(
        ContextPolicy(keep_recent_turns=2), context_length=count(msgs) + 200, reserve=100,
        count=count, spill=spill,
    )  # fmt: skip
    result = await compactor.compact(msgs)
    masked = [m for m in result.messages if isinstance(m, ToolMessage) and m.compacted]
    assert masked
    for m in masked:
        assert "could not be saved" in m.content
        assert "row 0" in m.content and "row 399" in m.content
