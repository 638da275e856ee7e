"""Write-behind: a daemon thread makes stored blocks durable after ``save()`` has returned.

``submit`` queues a block (the queue is bounded in bytes: a submit past the bound waits for
the writer, so host memory stays bounded); ``pending(key)`` lets a restore read a block that
is queued but not yet on disk; ``flush`` waits until everything queued is written. The
thread holds no reference to the store (only a weak callback), so an unused store is
collected, and its writer is flushed then (``weakref.finalize``) or at interpreter exit
(``atexit``). A crash loses only what was still queued: a later miss, never wrong KV,
because files appear only by rename and every read is verified.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["BlockWriter", "WriteJob"]

log = logging.getLogger("agentcore.kv")


@dataclass
class WriteJob:
    key: str
    parent: str
    tail: bool
    tokens: list[int]
    data: np.ndarray
    chain: frozenset[str]  # the saved chain this block belongs to (protected while it lands)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


class BlockWriter:
    """One background writer thread with a byte-bounded FIFO of ``WriteJob``s."""

    def __init__(self, write: Callable[[WriteJob], None], max_pending_bytes: int) -> None:
        self._write = write
        self.max_pending_bytes = max_pending_bytes
        self._jobs: deque[WriteJob] = deque()
        self._pending: dict[str, WriteJob] = {}
        self._bytes = 0
        self._busy = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        _WRITERS.add(self)

    def submit(self, job: WriteJob) -> None:
        with self._cond:
            if job.key in self._pending:
                return
            self._cond.wait_for(lambda: not self._bytes or self._bytes + job.nbytes <= self.max_pending_bytes)
            self._jobs.append(job)
            self._pending[job.key] = job
            self._bytes += job.nbytes
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="agentcore-kv-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self, key: str) -> WriteJob | None:
        with self._cond:
            return self._pending.get(key)

    def jobs(self) -> list[WriteJob]:
        """The blocks queued or being written, oldest first."""
        with self._cond:
            return list(self._pending.values())

    def cancel(self, key: str) -> None:
        """Forget a queued block (a superseded tail); one already being written still lands."""
        with self._cond:
            job = self._pending.pop(key, None)
            if job is not None and job in self._jobs:
                self._jobs.remove(job)
                self._bytes -= job.nbytes
                self._cond.notify_all()

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued block is written (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._jobs, timeout=30.0):
                    self._thread = None  # idle: the next submit starts a new thread
                    return
                job = self._jobs.popleft()
                self._busy = True
            try:
                self._write(job)
            except Exception:  # a writer that dies would leave flush() waiting forever
                log.exception("kv cache write-behind failed key=%s", job.key)
            finally:
                with self._cond:
                    if self._pending.get(job.key) is job:
                        del self._pending[job.key]
                    self._bytes -= job.nbytes
                    self._busy = False
                    self._cond.notify_all()


_WRITERS: weakref.WeakSet[BlockWriter] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for writer in list(_WRITERS):
        writer.flush(timeout=60.0)
