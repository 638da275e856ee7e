"""Built-in tools confined to one workspace: read_file, write_file, list_dir, run_shell.

Invariants:
- Every path is resolved (symlinks followed) and must land inside the workspace root;
  ``..``, absolute paths elsewhere and symlinks pointing out raise WorkspaceEscape, which
  the registry turns into an error result telling the model to use a workspace path.
  The check is made when the call starts: a symlink swapped in while a call runs is
  out of scope (the model is not an adversary racing its own tools).
- write_file is atomic: a reader sees the old file or the new one, never half of one.
- run_shell runs ``/bin/sh -c`` in its own session (process group) with cwd at the root
  and stdin closed. On timeout or cancellation the whole group gets SIGKILL, so children
  and grandchildren die with the shell; only a process that starts its own session escapes.
- Once the shell exits, its output pipes get a short grace period; a background process
  still holding them after that is killed, since nothing would ever read its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import anyio
from anyio.abc import ByteReceiveStream
from pydantic import Field

from agentcore.errors import ToolError, ToolTimeout, WorkspaceEscape
from agentcore.tools import Tool, text_from_bytes, tool
from agentcore.tools.capping import atomic_write

__all__ = ["MAX_SHELL_TIMEOUT", "builtin_tools", "resolve_in_workspace"]

MAX_SHELL_TIMEOUT = 600.0
# Per stream; beyond this the output is drained and dropped, so `yes` cannot exhaust memory.
_MAX_STREAM_BYTES = 32 * 1024 * 1024
# How long output pipes may stay open after the shell itself has exited.
_PIPE_GRACE_S = 1.0
# NUL in the first block is the same binary heuristic git and grep use.
_BINARY_SNIFF_BYTES = 8192


def resolve_in_workspace(root: Path, path: str) -> Path:
    """Resolve ``path`` (relative to ``root``, or absolute) and refuse it outside ``root``.

    ``root`` must already be resolved.
    """
    candidate = Path(path) if os.path.isabs(path) else root / path
    resolved = candidate.resolve()
    if resolved.is_relative_to(root):
        return resolved
    lexical = Path(os.path.normpath(candidate))
    how = (
        f"a symlink inside it points to {resolved}"
        if lexical.is_relative_to(root)
        else f"it resolves to {resolved}"
    )
    raise WorkspaceEscape(
        f"{path!r} is outside the workspace {root} ({how}). Only paths inside the workspace "
        "can be used: give a path relative to it, like 'src/main.py'."
    )


def builtin_tools(workspace: str | Path = ".") -> list[Tool]:
    """The four built-in tools, all confined to ``workspace`` (which must exist)."""
    root = Path(workspace).resolve()
    if not root.is_dir():
        raise ToolError(f"workspace {root} is not a directory; create it or pass another path")

    def shown(path: Path) -> str:
        return path.relative_to(root).as_posix() if path != root else "."

    @tool
    def read_file(
        path: str,
        start_line: Annotated[int, Field(ge=1)] = 1,
        end_line: Annotated[int, Field(ge=1)] | None = None,
    ) -> str:
        """Read a text file in the workspace, with line numbers.

        Args:
            path: File path, relative to the workspace root.
            start_line: First line to show (1-based).
            end_line: Last line to show, inclusive; omit to read to the end.
        """
        target = resolve_in_workspace(root, path)
        if target.is_dir():
            raise IsADirectoryError(f"{path!r} is a directory; use list_dir to see its entries")
        if not target.exists():
            raise FileNotFoundError(f"{path!r} does not exist; use list_dir to see what does")
        data = target.read_bytes()
        if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
            return (
                f"{shown(target)} is a binary file ({len(data):,} bytes); read_file shows text "
                "only. Inspect it with run_shell (e.g. `file` or `xxd | head`)."
            )
        lines = data.decode("utf-8", errors="replace").split("\n")
        if lines[-1] == "":
            lines.pop()
        if not lines:
            return f"{shown(target)} is empty."
        last = len(lines) if end_line is None else min(end_line, len(lines))
        if start_line > len(lines):
            raise ValueError(
                f"start_line={start_line} is past the end: {shown(target)} has {len(lines)} lines"
            )
        if last < start_line:
            raise ValueError(f"end_line={end_line} is before start_line={start_line}")
        body = "\n".join(
            f"{n:6}\t{lines[n - 1].removesuffix(chr(13))}" for n in range(start_line, last + 1)
        )
        if start_line == 1 and last == len(lines):
            return body
        return f"{body}\n[lines {start_line}-{last} of {len(lines)}]"

    @tool
    def write_file(path: str, content: str) -> str:
        """Create or overwrite a text file in the workspace (parent folders are created).

        Args:
            path: File path, relative to the workspace root.
            content: The complete new file content.
        """
        target = resolve_in_workspace(root, path)
        if target.is_dir():
            raise IsADirectoryError(f"{path!r} is a directory; give a file path")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8", "surrogatepass")
        atomic_write(target, data)
        return f"Wrote {len(data):,} bytes to {shown(target)}."

    @tool
    def list_dir(path: str = ".") -> str:
        """List a workspace folder: sub-folders end with '/', files show their size.

        Args:
            path: Folder path, relative to the workspace root.
        """
        target = resolve_in_workspace(root, path)
        if not target.is_dir():
            raise NotADirectoryError(f"{path!r} is not a folder; use read_file for files")
        entries = []
        for entry in sorted(target.iterdir(), key=lambda p: p.name):
            if entry.is_symlink():
                entries.append(f"{entry.name} -> {os.readlink(entry)}")
            elif entry.is_dir():
                entries.append(f"{entry.name}/")
            else:
                entries.append(f"{entry.name} ({entry.stat().st_size:,} bytes)")
        return "\n".join(entries) or f"{shown(target)} is empty."

    @tool(timeout=MAX_SHELL_TIMEOUT + 10)
    async def run_shell(
        command: str,
        timeout: Annotated[float, Field(gt=0, le=MAX_SHELL_TIMEOUT)] = 60,
    ) -> str:
        """Run a shell command (/bin/sh -c) in the workspace root; stdin is closed.

        Args:
            command: The command line.
            timeout: Seconds before the command and everything it started are killed.
        """
        return await _run_shell(command, root, timeout)

    return [read_file, write_file, list_dir, run_shell]


@dataclass
class _Capture:
    """One output stream of a shell command, read until EOF."""

    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0
    closed: anyio.Event = field(default_factory=anyio.Event)

    async def drain(self, stream: ByteReceiveStream) -> None:
        try:
            async for chunk in stream:
                room = max(0, _MAX_STREAM_BYTES - len(self.data))
                self.data += chunk[:room]
                self.dropped += len(chunk) - min(room, len(chunk))
        finally:
            self.closed.set()


async def _run_shell(command: str, cwd: Path, timeout: float) -> str:
    out, err = _Capture(), _Capture()
    process = await anyio.open_process(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # own process group: one killpg reaches every descendant
    )
    assert process.stdout is not None and process.stderr is not None
    stragglers_killed = False
    try:
        with anyio.move_on_after(timeout) as deadline:
            async with anyio.create_task_group() as group:
                group.start_soon(out.drain, process.stdout)
                group.start_soon(err.drain, process.stderr)
                await process.wait()
                with anyio.move_on_after(_PIPE_GRACE_S) as grace:
                    await out.closed.wait()
                    await err.closed.wait()
                if grace.cancelled_caught:
                    stragglers_killed = True
                    _kill_group(process.pid)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None or deadline.cancelled_caught:
                _kill_group(process.pid)
            await process.aclose()

    report = _shell_report(process.returncode, out, err)
    if deadline.cancelled_caught:
        raise ToolTimeout(
            f"command timed out after {timeout:g}s; it and every process it started were "
            f"killed. Output so far:\n{report}"
        )
    if stragglers_killed:
        report += "\n[background processes still holding the output were killed]"
    return report


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group has already exited


def _shell_report(returncode: int | None, out: _Capture, err: _Capture) -> str:
    if returncode is not None and returncode < 0:
        try:
            status = f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            status = f"killed by signal {-returncode}"
    else:
        status = f"exit code {returncode}"
    parts = [status]
    for label, capture in (("stdout", out), ("stderr", err)):
        if capture.data:
            parts.append(f"{label}:\n{text_from_bytes(bytes(capture.data))}")
        if capture.dropped:
            parts.append(f"[{capture.dropped:,} more bytes of {label} were dropped]")
    if len(parts) == 1:
        parts.append("(no output)")
    return "\n".join(parts)
