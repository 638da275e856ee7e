"""run_shell's process handling: one shell command, its output, and everything it started.

Invariants:
- The command runs as ``/bin/sh -c`` in its own session (process group), stdin closed.
  On timeout or cancellation every process we can find gets SIGKILL: the group, every
  descendant of the shell still alive, and every process holding the command's output
  pipes (found through ``/proc``, so a ``setsid`` child that kept its stdout dies too).
- Once the shell has exited, its pipes get ``PIPE_GRACE_S``; whatever still holds them then
  is killed and reading stops at that deadline: the report says the command exited and how,
  never that it timed out.
- Nothing is lost: each stream keeps its head and a tail ring in memory, and once it is
  larger than both it is streamed to ``<spill_dir>/<sha256-prefix>.txt`` (complete, raw
  bytes); the report names that file. If the spill cannot be written, the report keeps the
  head and tail and says so.

What process groups and ``/proc`` cannot contain: a process that starts its own session,
closes or redirects its output and whose parent has already exited (a daemon) is out of
reach, as is one running as another user. Run untrusted commands in a container or a
cgroup when that matters.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import signal
import subprocess
from pathlib import Path

import anyio

from agentcore.errors import ToolTimeout
from agentcore.tools import text_from_bytes
from agentcore.tools.capping import prepare_spill_dir

__all__ = ["HEAD_BYTES", "PIPE_GRACE_S", "TAIL_BYTES", "run_shell_command"]

# Per stream, what stays in memory for the report (the rest is in the spill file).
HEAD_BYTES = 4 * 1024 * 1024
TAIL_BYTES = 1024 * 1024
# How long output pipes may stay open after the shell itself has exited.
PIPE_GRACE_S = 1.0
# After killing what held the pipes, how long to collect what they had already written.
_AFTER_KILL_S = 0.5
_CHUNK = 1 << 16


class _Capture:
    """One output stream: head and tail in memory, everything streamed to a spill file."""

    def __init__(self, label: str, fd: int, spill_dir: Path, root: Path) -> None:
        self.label = label
        self.fd = fd
        self.spill_dir = spill_dir
        self.root = root
        self.inode = os.fstat(fd).st_ino
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.sha = hashlib.sha256()
        self.spill_fd: int | None = None
        self.spill_tmp: Path | None = None
        self.spill_path: Path | None = None
        self.spill_error: str | None = None
        self.closed = anyio.Event()

    async def drain(self) -> None:
        os.set_blocking(self.fd, False)
        try:
            while True:
                try:
                    chunk = os.read(self.fd, _CHUNK)
                except BlockingIOError:
                    await anyio.wait_readable(self.fd)
                    continue
                if not chunk:
                    return
                self._add(chunk)
        finally:
            self.closed.set()

    def _add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.sha.update(chunk)
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        overflowing = len(self.tail) + len(chunk) > TAIL_BYTES
        if overflowing and self.spill_fd is None and self.spill_error is None:
            self._start_spill()
        if self.spill_fd is not None:
            self._write_spill(chunk)
        self.tail += chunk
        if self.spill_fd is not None or self.spill_error is not None:
            del self.tail[: max(0, len(self.tail) - TAIL_BYTES)]

    def _start_spill(self) -> None:
        try:
            prepare_spill_dir(self.spill_dir)
            self.spill_tmp = self.spill_dir / f".{self.label}.{secrets.token_hex(6)}.tmp"
            self.spill_fd = os.open(self.spill_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            self._spill_failed(exc)
            return
        self._write_spill(bytes(self.head) + bytes(self.tail))

    def _write_spill(self, data: bytes) -> None:
        assert self.spill_fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.spill_fd, view) :]
        except OSError as exc:
            self._spill_failed(exc)

    def _spill_failed(self, exc: OSError) -> None:
        self.spill_error = f"{type(exc).__name__}: {exc}"
        if self.spill_fd is not None:
            os.close(self.spill_fd)
            self.spill_fd = None
        if self.spill_tmp is not None:
            with contextlib.suppress(OSError):
                self.spill_tmp.unlink()

    def finish(self) -> None:
        """Close the pipe; give the spill file its content-addressed name."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self.spill_fd is None:
            return
        assert self.spill_tmp is not None
        try:
            os.fsync(self.spill_fd)
            os.close(self.spill_fd)
            self.spill_fd = None
            path = self.spill_dir / f"{self.sha.hexdigest()[:16]}.txt"
            os.replace(self.spill_tmp, path)
        except OSError as exc:
            self._spill_failed(exc)
        else:
            self.spill_path = path

    def report(self) -> list[str]:
        """This stream's part of the run_shell result."""
        if not self.total:
            return []
        if len(self.head) + len(self.tail) == self.total:
            return [f"{self.label}:\n{text_from_bytes(bytes(self.head + self.tail))}"]
        if self.spill_path is not None:
            shown = self.spill_path.relative_to(self.root).as_posix()
            where = f"the complete {self.label} is in {shown} (read it with read_file)"
        else:
            where = f"saving the complete {self.label} failed ({self.spill_error}); it is lost"
        head, tail = _clean_cuts(bytes(self.head), bytes(self.tail))
        return [
            f"[{self.label} was {self.total:,} bytes; only its head and tail are shown; {where}]",
            f"{self.label}:\n{text_from_bytes(head)}",
            f"[... {self.total - len(head) - len(tail):,} bytes of {self.label} omitted ...]",
            text_from_bytes(tail),
        ]


def _clean_cuts(head: bytes, tail: bytes) -> tuple[bytes, bytes]:
    """Cut head and tail at line breaks (or UTF-8 character starts) near their ends."""
    newline = head.rfind(b"\n")
    if newline >= len(head) // 2:
        head = head[: newline + 1]
    else:
        while head and head[-1] & 0xC0 == 0x80:
            head = head[:-1]
        if head and head[-1] >= 0xC0:
            head = head[:-1]
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) // 2:
        tail = tail[newline + 1 :]
    else:
        while tail and tail[0] & 0xC0 == 0x80:
            tail = tail[1:]
    return head, tail


async def run_shell_command(command: str, cwd: Path, timeout: float, spill_dir: Path) -> str:
    """Run ``command`` and return its report; ToolTimeout past ``timeout`` seconds."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    captures = [
        _Capture("stdout", out_r, spill_dir, cwd),
        _Capture("stderr", err_r, spill_dir, cwd),
    ]
    try:
        process = await anyio.open_process(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,  # own process group: one killpg reaches most descendants
        )
    except BaseException:
        for capture in captures:
            capture.finish()
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    inodes = {c.inode for c in captures}
    held_after_exit = False
    unkillable = 0
    try:
        with anyio.move_on_after(timeout) as deadline:
            async with anyio.create_task_group() as group:
                for capture in captures:
                    group.start_soon(capture.drain)
                await process.wait()
                if not await _all_closed(captures, PIPE_GRACE_S):
                    held_after_exit = True
                    unkillable = _kill_everything(process.pid, inodes)
                    await _all_closed(captures, _AFTER_KILL_S)
                group.cancel_scope.cancel()  # stop reading at the grace deadline
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None or deadline.cancelled_caught:
                _kill_everything(process.pid, inodes)
            await process.aclose()
            for capture in captures:
                capture.finish()

    report = _report(process.returncode, captures)
    if deadline.cancelled_caught:
        raise ToolTimeout(
            f"command timed out after {timeout:g}s; it and every process it started were "
            f"killed. Output so far:\n{report}"
        )
    if held_after_exit:
        report += (
            "\n[background processes still holding the output were killed]"
            if not unkillable
            else f"\n[the shell exited but {unkillable} background processes still hold its "
            "output and could not be killed; output they write is not shown]"
        )
    return report


async def _all_closed(captures: list[_Capture], within: float) -> bool:
    with anyio.move_on_after(within):
        for capture in captures:
            await capture.closed.wait()
        return True
    return False


def _kill_everything(shell_pid: int, pipe_inodes: set[int]) -> int:
    """SIGKILL the shell's group, its descendants and holders of its pipes.

    Returns how many processes holding the pipes could not be killed.
    """
    targets = _descendants_and_holders(shell_pid, pipe_inodes)
    unkillable = 0
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            unkillable += 1
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(shell_pid, signal.SIGKILL)
    return unkillable


def _descendants_and_holders(shell_pid: int, pipe_inodes: set[int]) -> set[int]:
    """Live descendants of ``shell_pid`` and every process with one of the pipes open."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return set()  # no /proc: the process group is all we can reach
    me = os.getpid()
    wanted = {f"pipe:[{inode}]" for inode in pipe_inodes}
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    for pid in pids:
        if pid == me:
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(pid)
            fd_dir = f"/proc/{pid}/fd"
            for fd in os.listdir(fd_dir):
                if os.readlink(f"{fd_dir}/{fd}") in wanted:
                    found.add(pid)
                    break
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ESRCH):
                raise
    stack = [shell_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _report(returncode: int | None, captures: list[_Capture]) -> str:
    if returncode is not None and returncode < 0:
        try:
            status = f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            status = f"killed by signal {-returncode}"
    else:
        status = f"exit code {returncode}"
    parts = [status]
    for capture in captures:
        parts += capture.report()
    if len(parts) == 1:
        parts.append("(no output)")
    return "\n".join(parts)
