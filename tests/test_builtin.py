"""Built-in tools on real files and real processes, confined to a workspace."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from tool_fixtures import run

from agentcore.errors import ToolError
from agentcore.tools import ToolRegistry
from agentcore.tools.builtin import builtin_tools

pytestmark = pytest.mark.anyio


def alive(pid: int) -> bool:
    """Running and not a zombie (a container's PID 1 may never reap orphans)."""
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


# ---------------------------------------------------------------------------- files


async def test_read_file_shows_numbered_lines(registry, workspace):
    (workspace / "a.py").write_text("one\ntwo\n")
    result = await run(registry, "read_file", path="a.py")
    assert (result.content, result.is_error) == ("     1\tone\n     2\ttwo", False)


async def test_read_file_shows_a_line_range_and_the_total(registry, workspace):
    (workspace / "a.txt").write_text("".join(f"l{i}\n" for i in range(1, 11)))
    result = await run(registry, "read_file", path="a.txt", start_line=3, end_line=4)
    assert result.content == "     3\tl3\n     4\tl4\n[lines 3-4 of 10]"


async def test_read_file_start_past_the_end_is_an_error_giving_the_length(registry, workspace):
    (workspace / "a.txt").write_text("x\n")
    result = await run(registry, "read_file", path="a.txt", start_line=5)
    assert result.is_error and "has 1 lines" in result.content


async def test_read_file_refuses_binary_files_with_a_clear_message(registry, workspace):
    (workspace / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02" * 10)
    result = await run(registry, "read_file", path="blob.bin")
    assert "blob.bin is a binary file (70 bytes)" in result.content


async def test_read_file_of_a_missing_file_points_to_list_dir(registry):
    result = await run(registry, "read_file", path="nope.txt")
    assert result.is_error
    assert "FileNotFoundError: 'nope.txt' does not exist; use list_dir" in result.content


async def test_write_file_creates_parents_and_writes_exact_content(registry, workspace):
    content = "héllo\r\nwörld\n"
    result = await run(registry, "write_file", path="deep/er/f.txt", content=content)
    assert not result.is_error, result.content
    assert (workspace / "deep/er/f.txt").read_bytes() == content.encode()
    assert sorted(p.name for p in (workspace / "deep/er").iterdir()) == ["f.txt"]


async def test_list_dir_marks_folders_and_sizes(registry, workspace):
    (workspace / "src").mkdir()
    (workspace / "README.md").write_text("hello")
    result = await run(registry, "list_dir")
    assert result.content == "README.md (5 bytes)\nsrc/"


async def test_absolute_path_inside_the_workspace_is_allowed(registry, workspace):
    (workspace / "in.txt").write_text("inside\n")
    result = await run(registry, "read_file", path=str(workspace / "in.txt"))
    assert result.content == "     1\tinside"


async def test_dot_dot_escape_is_refused_and_nothing_is_written(registry, workspace):
    result = await run(registry, "write_file", path="../escaped.txt", content="x")
    assert result.is_error
    assert "WorkspaceEscape: '../escaped.txt' is outside the workspace" in result.content
    assert "give a path relative to it" in result.content
    assert not (workspace.parent / "escaped.txt").exists()


async def test_absolute_path_outside_the_workspace_is_refused(registry, workspace):
    secret = workspace.parent / "secret.txt"
    secret.write_text("s3cret")
    result = await run(registry, "read_file", path=str(secret))
    assert result.is_error and "WorkspaceEscape" in result.content
    assert "s3cret" not in result.content


async def test_symlink_pointing_outside_is_refused_for_reads_and_writes(registry, workspace):
    outside = workspace.parent / "outside.txt"
    outside.write_text("original")
    (workspace / "link.txt").symlink_to(outside)
    read = await run(registry, "read_file", path="link.txt")
    write = await run(registry, "write_file", path="link.txt", content="clobbered")
    for result in (read, write):
        assert result.is_error and "a symlink inside it points to" in result.content
    assert outside.read_text() == "original"


def test_workspace_must_be_an_existing_folder(tmp_path):
    with pytest.raises(ToolError, match="is not a directory"):
        builtin_tools(tmp_path / "missing")


async def test_spilled_output_can_be_read_back_by_line_range(workspace):
    registry = ToolRegistry(
        builtin_tools(workspace), workspace=workspace, default_max_output_tokens=500
    )
    big = await run(registry, "run_shell", command="seq 1 20000")
    assert big.truncated
    part = await run(registry, "read_file", path=big.spill_path, start_line=1000, end_line=1001)
    assert part.content.splitlines()[:2] == ["  1000\t998", "  1001\t999"]


# ---------------------------------------------------------------------------- run_shell


async def test_run_shell_reports_exit_code_stdout_and_stderr(registry):
    result = await run(registry, "run_shell", command="echo out; echo err >&2; exit 3")
    assert not result.is_error
    assert result.content == "exit code 3\nstdout:\nout\n\nstderr:\nerr\n"


async def test_run_shell_runs_in_the_workspace(registry, workspace):
    result = await run(registry, "run_shell", command="pwd")
    assert result.content == f"exit code 0\nstdout:\n{workspace}\n"


async def test_run_shell_closes_stdin(registry):
    start = time.monotonic()
    result = await run(registry, "run_shell", command="cat; echo done", timeout=10)
    assert result.content == "exit code 0\nstdout:\ndone\n"
    assert time.monotonic() - start < 5


async def test_run_shell_decodes_invalid_utf8_with_replacement(registry):
    result = await run(registry, "run_shell", command=r"printf 'ok \377\000 end'")
    assert "[binary output: 9 bytes;" in result.content
    assert "ok \ufffd end" in result.content


async def test_run_shell_timeout_kills_the_whole_process_group(registry, workspace):
    command = (
        "sh -c 'sleep 300 & echo $! > grandchild.pid; wait' & echo $! > child.pid; "
        "echo started; wait"
    )
    start = time.monotonic()
    result = await run(registry, "run_shell", command=command, timeout=1)
    assert time.monotonic() - start < 5
    assert result.is_error
    assert "timed out after 1s" in result.content and "started" in result.content
    for name in ("child.pid", "grandchild.pid"):
        assert gone_soon(int((workspace / name).read_text()))


async def test_cancelling_run_shell_kills_the_whole_process_group(registry, workspace):
    with anyio.move_on_after(1):
        await run(registry, "run_shell", command="sleep 300 & echo $! > bg.pid; wait")
    assert gone_soon(int((workspace / "bg.pid").read_text()))


async def test_background_process_holding_the_output_is_killed_after_a_grace(registry, workspace):
    start = time.monotonic()
    result = await run(registry, "run_shell", command="sleep 300 & echo $! > bg.pid; echo hi")
    assert time.monotonic() - start < 5
    assert result.content.startswith("exit code 0\nstdout:\nhi\n")
    assert "background processes still holding the output were killed" in result.content
    assert gone_soon(int((workspace / "bg.pid").read_text()))
