"""Built-in tools confined to one workspace: read_file, write_file, list_dir, run_shell.

Invariants:
- Every path is opened through ``workspace.open_beneath`` / ``parent_beneath``: walked one
  component at a time with ``O_NOFOLLOW`` from an fd of the root, so ``..``, absolute paths
  elsewhere and symlinks pointing out raise WorkspaceEscape, also when a symlink is swapped
  in while a call runs. The registry turns that into an error result telling the model to
  use a workspace path.
- write_file is atomic (a reader sees the old file or the new one, never half of one) and
  refuses ``protected`` folders (``.git/`` and ``.agentcore/`` by default: a written
  ``.git/config`` can make a later ``git`` run any program).
- read_file reads regular files only: it opens non-blocking, so a FIFO or a device never
  hangs it, decides "binary" from the first 8 KiB, and streams the file for a line range.
- run_shell: see ``agentcore.tools.shell`` (process groups, grace deadline, spill).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, BinaryIO

from pydantic import Field

from agentcore.errors import ToolError
from agentcore.tools import Tool, tool
from agentcore.tools.shell import run_shell_command
from agentcore.tools.workspace import open_beneath, parent_beneath, resolve_in_workspace

__all__ = ["DEFAULT_PROTECTED", "MAX_SHELL_TIMEOUT", "builtin_tools", "resolve_in_workspace"]

MAX_SHELL_TIMEOUT = 600.0
DEFAULT_PROTECTED = (".git", ".agentcore")
# NUL in the first block is the same binary heuristic git and grep use.
_BINARY_SNIFF_BYTES = 8192
# The most bytes of lines read_file returns in one call; more asks for a narrower range.
_MAX_READ_BYTES = 16 * 1024 * 1024
_READ_PIECE = 1 << 20


def builtin_tools(
    workspace: str | Path = ".", *, protected: Iterable[str] = DEFAULT_PROTECTED
) -> list[Tool]:
    """The four built-in tools, all confined to ``workspace`` (which must exist).

    ``protected``: folder names write_file refuses to write into, at any depth.
    """
    root = Path(workspace).resolve()
    if not root.is_dir():
        raise ToolError(f"workspace {root} is not a directory; create it or pass another path")
    protected = tuple(protected)
    spill_dir = root / ".agentcore" / "spill"

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
        try:
            resolved = open_beneath(root, path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path!r} does not exist; use list_dir to see what does"
            ) from None
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # a unix socket cannot be opened at all
                raise
            raise ValueError(
                f"{path!r} is not a regular file (a socket); read_file reads regular files only"
            ) from None
        with os.fdopen(resolved.fd, "rb") as f:
            info = os.fstat(f.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(f"{path!r} is a directory; use list_dir to see its entries")
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(
                    f"{resolved.shown} is not a regular file (a FIFO, socket or device); "
                    "read_file reads regular files only"
                )
            if b"\x00" in f.read(_BINARY_SNIFF_BYTES):
                return (
                    f"{resolved.shown} is a binary file ({info.st_size:,} bytes); read_file "
                    "shows text only. Inspect it with run_shell (e.g. `file` or `xxd | head`)."
                )
            f.seek(0)
            return _numbered_lines(f, resolved.shown, start_line, end_line)

    @tool
    def write_file(path: str, content: str) -> str:
        """Create or overwrite a text file in the workspace (parent folders are created).

        Args:
            path: File path, relative to the workspace root.
            content: The complete new file content.
        """
        resolved = parent_beneath(root, path, create_parents=True, protected=protected)
        try:
            assert resolved.name is not None
            data = content.encode("utf-8", "surrogatepass")
            _atomic_write_at(resolved.fd, resolved.name, data, path)
        finally:
            os.close(resolved.fd)
        return f"Wrote {len(data):,} bytes to {resolved.shown}."

    @tool
    def list_dir(path: str = ".") -> str:
        """List a workspace folder: sub-folders end with '/', files show their size.

        Args:
            path: Folder path, relative to the workspace root.
        """
        try:
            resolved = open_beneath(root, path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
        except NotADirectoryError:
            raise NotADirectoryError(f"{path!r} is not a folder; use read_file for files") from None
        try:
            with os.scandir(resolved.fd) as scan:
                found = sorted(scan, key=lambda e: e.name)
            entries = []
            for entry in found:
                name = _printable(entry.name)
                if entry.is_symlink():
                    target = os.readlink(entry.name, dir_fd=resolved.fd)
                    entries.append(f"{name} -> {_printable(target)}")
                elif entry.is_dir(follow_symlinks=False):
                    entries.append(f"{name}/")
                else:
                    size = entry.stat(follow_symlinks=False).st_size
                    entries.append(f"{name} ({size:,} bytes)")
        finally:
            os.close(resolved.fd)
        return "\n".join(entries) or f"{resolved.shown} is empty."

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
        return await run_shell_command(command, root, timeout, spill_dir)

    return [read_file, write_file, list_dir, run_shell]


def _numbered_lines(f: BinaryIO, shown: str, start_line: int, end_line: int | None) -> str:
    """Lines ``start_line..end_line`` of ``f`` with numbers, read as a stream."""
    pieces: list[tuple[int, bytes]] = []
    kept_bytes = 0
    too_big = False
    n = 0
    at_line_start = True
    while piece := f.readline(_READ_PIECE):
        if at_line_start:
            n += 1
        at_line_start = piece.endswith(b"\n")
        if n < start_line or (end_line is not None and n > end_line):
            continue
        if kept_bytes + len(piece) > _MAX_READ_BYTES:
            too_big = True
            continue
        pieces.append((n, piece))
        kept_bytes += len(piece)
    if n == 0:
        return f"{shown} is empty."
    if start_line > n:
        raise ValueError(f"start_line={start_line} is past the end: {shown} has {n} lines")
    last = n if end_line is None else min(end_line, n)
    if last < start_line:
        raise ValueError(f"end_line={end_line} is before start_line={start_line}")
    lines: dict[int, bytearray] = {}
    for number, piece in pieces:
        lines.setdefault(number, bytearray()).extend(piece)
    body = "\n".join(
        f"{number:6}\t{data.decode('utf-8', errors='replace').rstrip(chr(10)).removesuffix(chr(13))}"
        for number, data in lines.items()
    )
    shown_last = max(lines) if lines else start_line - 1
    if too_big:
        return (
            f"{body}\n[lines {start_line}-{shown_last} of {n}; the rest of the range is over "
            f"{_MAX_READ_BYTES // (1024 * 1024)} MiB: ask for a narrower start_line/end_line]"
        )
    if start_line == 1 and last == n:
        return body
    return f"{body}\n[lines {start_line}-{last} of {n}]"


def _atomic_write_at(dir_fd: int, name: str, data: bytes, path: str) -> None:
    """Replace ``name`` in the folder ``dir_fd`` with ``data`` in one rename."""
    try:
        old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if old is not None and stat.S_ISDIR(old.st_mode):
        raise IsADirectoryError(f"{path!r} is a directory; give a file path")
    tmp = f".{name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o666, dir_fd=dir_fd)  # fmt: skip
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if old is not None and stat.S_ISREG(old.st_mode):
                os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise


def _printable(name: str) -> str:
    """A file name as text the model (and a terminal) can take: non-UTF-8 bytes as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
