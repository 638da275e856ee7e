"""The disk tier's file operations, and what a fault in them means.

Files live under ``<kv_dir>/<fingerprint[:16]>/``: ``blocks/<hash>.<parent>.kvb`` (one full
block, content-addressed) and ``tails/<parent>.<hash>.<ntokens>.kvt`` (the partial last
block of a checkpoint). A file is written under a temp name ``.tmp-<pid>-<random>`` and
renamed, so readers (this process or another) only ever see whole files; a temp file whose
writer died (SIGKILL) is reaped at scan, and the temp files of live writers count in the budget.

Faults: an ``OSError`` that concerns the tier (ENOSPC, EROFS, EACCES, a deleted ``kv_dir``,
EIO, ...) means "disk tier unavailable": it is logged once, writes stop for ``retry_s``
seconds, and the directories are recreated when that is possible; the RAM tier carries on.
An ``OSError`` that concerns one name (a directory or a symlink where a block should be) is
that block's miss and nothing more. Nothing here raises ``OSError`` to the store.
Reads open ``O_NONBLOCK | O_NOFOLLOW`` and ``fstat`` before reading: only regular files are
read, so a FIFO in place of a block can never hang a restore.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DiskTier", "FileInfo"]

log = logging.getLogger("agentcore.kv")

TEMP_PREFIX = ".tmp-"
STALE_TEMP_S = 3600.0  # a temp file this old is orphaned even if its pid is alive (reused pid)
# Errors that concern one name, not the tier.
_PER_NAME = {errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ELOOP, errno.ENXIO, errno.ETXTBSY}


@dataclass
class FileInfo:
    sub: str  # "blocks" | "tails"
    name: str
    size: int
    mtime: float


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class DiskTier:
    """File operations of one model's block directory; every fault becomes a logged state."""

    def __init__(self, root: Path, *, retry_s: float = 5.0) -> None:
        self.root = root
        self.retry_s = retry_s
        self.available = False
        self.faults = 0
        self.temp_bytes = 0  # live writers' temp files seen by reaping scans (the store resets it)
        self._retry_at = 0.0
        self.ensure()

    # ------------------------------------------------------------------ state

    def ensure(self) -> bool:
        """(Re)create the directories; True when the tier is usable for writing again."""
        try:
            for sub in ("blocks", "tails"):
                os.makedirs(self.root / sub, exist_ok=True)
        except OSError as exc:
            self.fault("mkdir", exc)
            return False
        self.available = True
        return True

    def fault(self, op: str, exc: OSError) -> None:
        self.faults += 1
        self._retry_at = time.monotonic() + self.retry_s
        if self.available:
            log.warning("kv cache disk unavailable op=%s error=%s dir=%s: using the RAM tier only",
                        op, exc, self.root)
        self.available = False

    def writable(self) -> bool:
        if not self.available and time.monotonic() >= self._retry_at:
            self.ensure()
        return self.available

    def path(self, sub: str, name: str) -> Path:
        return self.root / sub / name

    # ------------------------------------------------------------------ writing

    def write(self, sub: str, name: str, buffers: list) -> int | None:
        """Write ``buffers`` to ``sub/name`` atomically; the file's size, or None when not written."""
        if not self.writable():
            return None
        for attempt in (0, 1):
            try:
                return self._write(sub, name, buffers)
            except OSError as exc:
                if exc.errno in _PER_NAME:
                    log.warning("kv cache disk write skipped file=%s error=%s", name, exc)
                    return None
                self.fault("write", exc)
                # A deleted kv_dir is recreated at once; any other fault waits for retry_s.
                if attempt or exc.errno != errno.ENOENT or not self.ensure():
                    return None
        return None

    def _write(self, sub: str, name: str, buffers: list) -> int:
        d = self.root / sub
        tmp = d / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            size = 0
            for buf in buffers:
                view = memoryview(buf).cast("B")
                while view.nbytes:
                    k = os.write(fd, view)
                    size += k
                    view = view[k:]
        except BaseException:
            self.close(fd)
            self._unlink_quiet(tmp)
            raise
        try:
            os.close(fd)  # on some filesystems (NFS) this is where a write error shows
        except BaseException:
            self._unlink_quiet(tmp)
            raise
        try:
            os.replace(tmp, d / name)
        except BaseException:
            self._unlink_quiet(tmp)
            raise
        return size

    # ------------------------------------------------------------------ reading

    def open_regular(self, sub: str, name: str) -> int | None:
        """An fd of ``sub/name`` if it is a regular file; None (a miss) for anything else."""
        path = self.root / sub / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                if not os.path.isdir(self.root / sub):
                    self.fault("read", exc)
                return None
            if exc.errno not in _PER_NAME:
                self.fault("read", exc)
            else:
                log.warning("kv cache miss reason=corrupt file=%s detail=%s", name, exc.strerror)
            return None
        try:
            st = os.fstat(fd)
        except OSError as exc:
            self.close(fd)
            self.fault("fstat", exc)
            return None
        if not stat.S_ISREG(st.st_mode):
            self.close(fd)
            log.warning("kv cache miss reason=corrupt file=%s detail=not a regular file", name)
            return None
        return fd

    @staticmethod
    def close(fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass  # a read-only fd: nothing was lost

    def unlink(self, sub: str, name: str) -> None:
        self._unlink_quiet(self.root / sub / name)

    def _unlink_quiet(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in _PER_NAME:
                self.fault("unlink", exc)

    # ------------------------------------------------------------------ listing

    def scan(self, sub: str, *, reap: bool = False) -> list[FileInfo]:
        """Regular files of ``sub``; with ``reap``, orphaned temp files are removed first."""
        out: list[FileInfo] = []
        temp = 0
        try:
            with os.scandir(self.root / sub) as it:
                entries = list(it)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self.ensure()
            else:
                self.fault("scan", exc)
            return out
        now = time.time()
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.name.startswith(TEMP_PREFIX):
                pid = entry.name[len(TEMP_PREFIX) :].split("-", 1)[0]
                orphan = not pid.isdigit() or not _pid_alive(int(pid)) or now - st.st_mtime > STALE_TEMP_S
                if reap and orphan:
                    self._unlink_quiet(Path(entry.path))
                    log.info("kv cache reaped orphaned temp file=%s bytes=%d", entry.name, st.st_size)
                else:
                    temp += st.st_size
                continue
            out.append(FileInfo(sub, entry.name, st.st_size, st.st_mtime))
        if reap:
            self.temp_bytes += temp
        return out
