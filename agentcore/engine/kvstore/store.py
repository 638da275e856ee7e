"""CheckpointStore: KV blocks in a RAM tier and a disk tier, with budgets and eviction by reason.

``save`` copies the blocks nobody stored yet into the RAM tier and returns; a write-behind
thread (``writer.py``) makes them durable as block files (``blockfile.py``, ``disk.py``).
``restore`` loads the longest stored prefix of a prompt, from RAM, the write queue or disk,
either through a ``write_block(start, array)`` callback or straight into a destination array
(``into=``: a dense KV cache), copied from each block file's mapping (``blockfile.read_into``)
by a small pool of read-ahead threads.

Invariants:
- a read is verified (header, layout, key and parent, token ids, xxh3 checksum) before it
  counts; a corrupt, truncated, foreign or stale file, or one that is not a regular file, is
  a logged miss, never wrong KV; a disk-tier ``OSError`` is logged and the RAM tier carries on:
  nothing raises out of ``save``/``restore`` because of the disk;
- eviction over a budget takes, in order: RAM copies of blocks that are on disk or queued for
  it (dropping them loses nothing), then leaves (blocks no stored block extends) that nothing
  protects, then leaves of a live session's newest checkpoint, and only when nothing else is
  left the pinned ones (a session's anchor from ``pin``, the chain of the save or restore in
  progress), by recency weighted with hits; every eviction is logged, and those of blocks
  never reused (``hits=0``) are counted;
- a crash loses only what the write-behind queue held: files appear by rename only.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from agentcore.engine.kvstore import stats as stats_file
from agentcore.engine.kvstore.blockfile import BlockHeader, BlockRejected, encode, read_into, slabs
from agentcore.engine.kvstore.blocks import ROOT, KVLayout, chain_hash
from agentcore.engine.kvstore.disk import DiskTier
from agentcore.engine.kvstore.stats import StoreStats
from agentcore.engine.kvstore.writer import BlockWriter, WriteJob

__all__ = ["CheckpointStore", "RestoredPrefix", "StoreStats"]

log = logging.getLogger("agentcore.kv")

HIT_WEIGHT_S = 120.0  # one hit counts like two minutes of recency
_STORES: weakref.WeakSet[CheckpointStore] = weakref.WeakSet()  # to flush a kv_dir's other writers


@atexit.register
def _flush_at_exit() -> None:
    """Interpreter exit: every store's queue reaches the disk and its stats reach stats.json."""
    for store in list(_STORES):
        store.flush(timeout=60.0)


@dataclass
class _Entry:
    key: str  # block hash, or tail hash
    parent: str
    tokens: int
    nbytes: int
    last_used: float
    hits: int = 0
    is_tail: bool = False
    data: np.ndarray | None = None  # RAM tier only
    name: str = ""  # disk tier only: the file name

    def score(self) -> float:
        return self.last_used + HIT_WEIGHT_S * self.hits


@dataclass
class RestoredPrefix:
    tokens: int  # end of the valid prefix (with ``live``, positions below it count as valid)
    source: str  # "ram" | "disk" | "none"
    ms: float
    bytes_read: int
    blocks: list[str]  # hashes of the full blocks of the valid prefix
    tail: str | None  # the partial block restored after them, if any


def _file_name(key: str, parent: str, tail: bool, n_tokens: int) -> tuple[str, str]:
    if tail:
        return "tails", f"{parent}.{key}.{n_tokens}.kvt"
    return "blocks", f"{key}.{parent}.kvb"


def _tail_salt(layout: KVLayout) -> bytes:
    return layout.salt + b"|tail"


def _stage_copy(dest: np.ndarray, src: np.ndarray) -> tuple[str, int, None]:
    """A RAM block in pageable memory into a pinned read buffer (a read thread; NumPy's copy
    releases the GIL)."""
    np.copyto(dest, src)
    return "staged", 0, None


class CheckpointStore:
    """Two-tier, content-addressed store of KV blocks for one model layout.

    Use as a context manager, or call ``close()``, to make every saved block durable;
    ``flush()`` waits for the write-behind queue without closing.
    """

    def __init__(
        self,
        layout: KVLayout,
        *,
        ram_bytes: int = 1 << 30,
        kv_dir: str | Path | None = None,
        disk_bytes: int = 16 << 30,
        write_behind: bool = True,
        max_pending_bytes: int = 512 << 20,
        read_threads: int | None = None,
        host_alloc: Callable[[tuple[int, ...], str], np.ndarray] | None = None,
        host_pinned: Callable[[np.ndarray], bool] | None = None,
    ) -> None:
        """``read_threads``: disk reads in flight during a restore (default: up to 4, one per
        core). ``host_alloc(shape, dtype)``: where RAM-tier copies and read buffers live
        (pinned memory on CUDA, so the copies to and from the GPU run at full bandwidth).
        ``host_pinned(array)``: whether a host array is page-locked; given (CUDA), a restore
        through ``write_block`` has RAM blocks in pageable memory copied into ``host_alloc``
        buffers on the read threads, several at once, ahead of the block being placed: the
        copy to the device then runs at full bandwidth instead of the speed of one CPU copy
        (8B shape, 32K tokens from RAM on an H100: 630 ms at d945509)."""
        self.layout = layout
        self.read_threads = max(1, read_threads or min(4, os.cpu_count() or 1))
        self._host_alloc = host_alloc
        self._host_pinned = host_pinned
        self._read_pool: ThreadPoolExecutor | None = None
        self.ram_bytes = ram_bytes
        self.disk_bytes = disk_bytes
        self.ram: dict[str, _Entry] = {}
        self.disk: dict[str, _Entry] = {}
        self.recent: dict[str, set[str]] = {}  # live session -> keys of its newest checkpoint
        self.anchors: dict[str, set[str]] = {}  # session -> pinned keys (system + tools + first task)
        self.evicted: set[str] = set()
        self.stats = StoreStats()
        self._active: frozenset[str] = frozenset()  # chain of the save/restore in progress
        self._dropped: set[str] = set()  # superseded tails that may still be in flight
        self._lock = threading.RLock()
        self._persisted: dict = {}
        self.disk_io: DiskTier | None = None
        self._writer: BlockWriter | None = None
        if kv_dir is not None:
            root = Path(kv_dir).expanduser() / layout.fingerprint[:16]
            for other in list(_STORES):
                if other.disk_io is not None and other.disk_io.root == root:
                    other.flush()  # a new engine on this kv_dir sees what this process saved
            self.disk_io = DiskTier(root)
            self._scan()
            if write_behind:
                self._writer = BlockWriter(_make_write(layout, self.disk_io, weakref.WeakMethod(self._landed)),
                                           max_pending_bytes)
                weakref.finalize(self, self._writer.flush)
        _STORES.add(self)

    @property
    def dir(self) -> Path | None:
        return self.disk_io.root if self.disk_io else None

    # ------------------------------------------------------------------ pins

    def pin(self, session_id: str, hashes: Sequence[str]) -> None:
        """Protect a live session's anchor blocks (system + tools + first task) from eviction."""
        with self._lock:
            self.anchors[session_id] = set(hashes)

    def unpin(self, session_id: str) -> None:
        with self._lock:
            self.anchors.pop(session_id, None)

    def release(self, session_id: str) -> None:
        """The session is no longer live: its newest checkpoint and anchor may be evicted."""
        with self._lock:
            self.recent.pop(session_id, None)
            self.anchors.pop(session_id, None)

    # ------------------------------------------------------------------ writing

    def save(
        self, session_id: str, ids: Sequence[int], hashes: Sequence[str],
        read_block: Callable[[int, int], np.ndarray], prev_tail: str | None, *, owned: bool = False,
    ) -> tuple[int, int, str | None]:
        """Store the blocks of ``ids`` not stored yet, and a tail record for the rest.

        ``read_block(start, n)`` returns positions [start, start+n) as one host array, or None
        when it no longer has them (that block is skipped); with ``owned`` each call returns a
        fresh array the store may keep (else it is copied, as a view of the live KV would
        change under the store). Returns once the blocks are in the RAM tier: (blocks stored,
        bytes stored, tail key).
        """
        bs = self.layout.block_size
        written = nbytes = 0
        jobs: list[WriteJob] = []
        with self._lock:
            rest = list(ids[len(hashes) * bs :])
            parent = hashes[-1] if hashes else ROOT
            tail = chain_hash(parent, rest, _tail_salt(self.layout)) if rest else None
            chain = frozenset(hashes) | ({tail} if tail else frozenset())
            self._active = chain
            try:
                parent = ROOT
                for i, key in enumerate(hashes):
                    if not self._has(key) and (got := read_block(i * bs, bs)) is not None:
                        block = self._keep(got, owned)
                        nbytes += self._put(key, parent, ids[i * bs : (i + 1) * bs], block, False, chain, jobs)
                        written += 1
                    parent = key
                if prev_tail and prev_tail != tail:
                    self._drop_tail(prev_tail)
                if tail and not self._has(tail) and (got := read_block(len(hashes) * bs, len(rest))) is not None:
                    nbytes += self._put(tail, parent, rest, self._keep(got, owned), True, chain, jobs)
                self.recent[session_id] = set(chain)
                self.stats.blocks_written += written
                self.stats.bytes_written += nbytes
                # Blocks about to be queued for the disk are copies too, unless the disk is down.
                queued = frozenset(j.key for j in jobs) if self.disk_io and self.disk_io.available else frozenset()
                self._evict(self.ram, "ram", self.ram_bytes, copies=queued)
            finally:
                self._active = frozenset()
        # Queued outside the lock: a full queue waits for the writer, which needs the lock.
        for job in jobs:
            if self._writer is not None:
                self._writer.submit(job)
            elif self.disk_io is not None:
                _make_write(self.layout, self.disk_io, lambda: self._landed)(job)
        return written, nbytes, tail

    def host_empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """A host array of this layout's dtype from ``host_alloc`` (pinned memory on CUDA)."""
        if self._host_alloc is None:
            return np.empty(shape, self.layout.array_dtype)
        return self._host_alloc(shape, self.layout.array_dtype)

    def _keep(self, block: np.ndarray, owned: bool) -> np.ndarray:
        """The block as an array of the store's own (a view of live KV would change under it)."""
        if owned and block.flags.c_contiguous:
            return block
        if not owned and block.flags.owndata and block.flags.c_contiguous:
            return block
        out = self.host_empty(block.shape)
        np.copyto(out, block)
        return out

    def has(self, key: str) -> bool:
        """Whether the block ``key`` is stored (in RAM, queued for the disk, or on disk)."""
        with self._lock:
            return self._has(key)

    def _has(self, key: str) -> bool:
        return key in self.ram or key in self.disk or (self._writer is not None and self._writer.pending(key) is not None)

    def _put(self, key: str, parent: str, tokens: Sequence[int], block: np.ndarray, tail: bool,
             chain: frozenset[str], jobs: list[WriteJob]) -> int:
        self.ram[key] = _Entry(key, parent, len(tokens), block.nbytes, time.time(), is_tail=tail, data=block)
        self.evicted.discard(key)
        self._dropped.discard(key)
        if self.disk_io is not None:
            jobs.append(WriteJob(key, parent, tail, [int(t) for t in tokens], block, chain))
        return block.nbytes

    def _landed(self, job: WriteJob, size: int | None) -> None:
        """A block file is durable (``size``) or could not be written (None)."""
        with self._lock:
            self.stats.disk_faults = self.disk_io.faults if self.disk_io else 0
            if size is None:
                return
            sub, name = _file_name(job.key, job.parent, job.tail, len(job.tokens))
            if job.key in self._dropped:
                self._dropped.discard(job.key)
                self.disk_io.unlink(sub, name)
                return
            self.disk[job.key] = _Entry(job.key, job.parent, len(job.tokens), size, time.time(),
                                        is_tail=job.tail, name=name)
            self.stats.disk_blocks_written += 1
            self.stats.disk_bytes_written += size
            self._evict(self.disk, "disk", self.disk_bytes, job.chain)

    def _drop_tail(self, key: str) -> None:
        """A session's newer checkpoint supersedes its previous partial block."""
        self.ram.pop(key, None)
        if self._writer is not None and self._writer.pending(key) is not None:
            self._writer.cancel(key)
            self._dropped.add(key)  # in case it is being written right now
        entry = self.disk.pop(key, None)
        if entry is not None and self.disk_io is not None:
            self.disk_io.unlink("tails", entry.name)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every saved block is on disk (or failed to get there); False on timeout."""
        done = self._writer.flush(timeout) if self._writer is not None else True
        self._persist_stats()
        return done

    def close(self) -> None:
        """Flush; the store stays usable (a later save starts the writer again)."""
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def restore(
        self, ids: Sequence[int], hashes: Sequence[str],
        write_block: Callable[[int, np.ndarray], None] | None = None,
        *, into: np.ndarray | None = None, live: int = 0, record: bool = True,
    ) -> RestoredPrefix:
        """Load the longest stored prefix of ``ids``.

        Positions [0, live) are the caller's live KV: blocks wholly inside them are not read.
        Either ``write_block(start, array)`` receives each verified block, in order, from the
        one that holds position ``live`` on (it must copy it before returning: the array is
        reused), or ``into`` (an array ``(n_layers, planes, >= len(ids), n_kv_heads,
        head_dim)``, its last three axes C-contiguous) is filled in place: positions [0, live)
        are never touched; on return positions [live, result.tokens) hold verified KV, and
        positions past result.tokens may have been overwritten with garbage.

        Disk blocks are read ahead by ``read_threads`` threads (the copy releases the GIL);
        the prefix still ends at the first block that is missing or fails verification.
        ``record=False`` leaves the hit and miss counters alone (a caller's second look, past
        blocks it restored from elsewhere).
        """
        if (write_block is None) == (into is None):
            raise TypeError("pass exactly one of write_block or into=")
        t0 = time.perf_counter()
        bs = self.layout.block_size
        sources: set[str] = set()
        nbytes = 0
        with self._lock:
            self._active = frozenset(hashes)
            try:
                n_full = min(live // bs, len(hashes))
                parent = hashes[n_full - 1] if n_full else ROOT
                chain = [(i * bs, hashes[i], hashes[i - 1] if i else ROOT, ids[i * bs : (i + 1) * bs], False)
                         for i in range(n_full, len(hashes))]  # fmt: skip
                for got in self._fetch_chain(chain, write_block, into, live):
                    nbytes += got[0]
                    sources.add(got[1])
                    n_full += 1
                parent = hashes[n_full - 1] if n_full else ROOT
                tokens = max(n_full * bs, live)
                tail_key = None
                rest = list(ids[n_full * bs :])
                if rest:
                    # Wherever the chain of full blocks stops, a stored partial block may go on.
                    for key, n in self._tails(parent, rest):
                        found = list(self._fetch_chain([(n_full * bs, key, parent, rest[:n], True)],
                                                       write_block, into, live))  # fmt: skip
                        if found:
                            nbytes += found[0][0]
                            sources.add(found[0][1])
                            tail_key = key
                            tokens = max(tokens, n_full * bs + n)
                            break
            finally:
                self._active = frozenset()
            source = "disk" if "disk" in sources else ("ram" if sources else "none")
            if record:
                if source == "disk":
                    self.stats.disk_hits += 1
                elif source == "ram":
                    self.stats.ram_hits += 1
                else:
                    self.stats.misses += 1
                self.stats.bytes_reused += nbytes
                if tokens < len(ids):
                    self.stats.miss_tokens.append(len(ids) - tokens)
        ms = (time.perf_counter() - t0) * 1000
        return RestoredPrefix(tokens, source, ms, nbytes, list(hashes[:n_full]), tail_key)

    def record_miss_cost(self, ms: float) -> None:
        """The engine reports what prefilling a restore's missing tokens cost (for the p90)."""
        with self._lock:
            self.stats.miss_ms.append(float(ms))

    def _fetch_chain(self, chain: list[tuple[int, str, str, Sequence[int], bool]], write_block,
                     into: np.ndarray | None, live: int) -> Iterator[tuple[int, str]]:  # fmt: skip
        """Put the verified blocks of ``chain`` ((start, key, parent, tokens, is_tail), in
        order) in place, yielding (bytes, source) for each until the first miss.

        Blocks in memory are copied here (those in pageable memory first into a scratch
        buffer on the read pool, with ``host_pinned`` and ``write_block``); disk blocks are
        read and verified by the read pool; both up to ``2 * read_threads`` ahead, straight
        into ``into`` where they land at or past ``live``, else into scratch buffers that
        are recycled once placed."""
        free: dict[int, list[np.ndarray]] = {}  # scratch buffers by block length
        ahead: deque[tuple[tuple, np.ndarray | None, str, Future | None]] = deque()
        items = iter(chain)
        window = 2 * self.read_threads

        def submit() -> bool:
            item = next(items, None)
            if item is None:
                return False
            start, key, parent, tokens, tail = item
            n = len(tokens)
            data, src = self._in_memory(key)
            if data is not None and into is None and self._host_pinned is not None and not self._host_pinned(data):
                pool = free.setdefault(n, [])
                buf = pool.pop() if pool else self.host_empty(self.layout.block_shape(n))
                ahead.append((item, buf, src, self._reads().submit(_stage_copy, buf, data)))
                return True
            if data is not None:
                ahead.append((item, data, src, None))
                return True
            if not self._may_be_on_disk(key, parent, tail, n):
                # A miss known now: no read buffer for it (on CUDA a fresh one is pinned
                # memory, whose allocation stalls every thread's launches) and none after it.
                ahead.append((item, None, "miss", None))
                return False
            if into is not None and start >= live:
                dest, off, buf = into, start, None
            else:
                pool = free.setdefault(n, [])
                buf = pool.pop() if pool else self.host_empty(self.layout.block_shape(n))
                dest, off = buf, 0
            fut = self._reads().submit(self._read_file, key, parent, tokens, tail, dest, off)
            ahead.append((item, buf, "disk", fut))
            return True

        try:
            while len(ahead) < window and submit():
                pass
            while ahead:
                item, data, src, fut = ahead.popleft()
                if src == "miss":
                    return
                start, n = item[0], len(item[3])
                if fut is not None and (got := fut.result())[0] != "staged" and not self._settle_read(item, got):
                    return
                if into is None:
                    write_block(start, data)
                elif data is not None and start < live:  # a block straddling the live prefix
                    skip = live - start
                    into[:, :, live : start + n] = data[:, :, skip:]
                elif data is not None and fut is None:  # from memory
                    np.copyto(into[:, :, start : start + n], data)
                if fut is not None and data is not None:
                    free.setdefault(n, []).append(data)
                yield int(np.prod(self.layout.block_shape(n))) * np.dtype(self.layout.array_dtype).itemsize, src
                submit()
        finally:
            for _, _, _, fut in ahead:  # reads past a miss: let them finish before buffers go
                if fut is not None:
                    fut.cancel() or fut.exception()

    def _may_be_on_disk(self, key: str, parent: str, tail: bool, n: int) -> bool:
        """Whether a read of this block can find it: indexed on disk, or a file of its name
        there (another process may have written it since our scan)."""
        if self.disk_io is None:
            return False
        if key in self.disk:
            return True
        try:
            return self.disk_io.path(*_file_name(key, parent, tail, n)).exists()
        except OSError:  # the read will tell (and count the fault)
            return True

    def _reads(self) -> ThreadPoolExecutor:
        if self._read_pool is None:
            self._read_pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="agentcore-kv-read")
        return self._read_pool

    def _in_memory(self, key: str) -> tuple[np.ndarray | None, str]:
        entry = self.ram.get(key)
        if entry is not None and entry.data is not None:
            entry.hits += 1
            entry.last_used = time.time()
            return entry.data, "ram"
        job = self._writer.pending(key) if self._writer is not None else None
        if job is not None:
            return job.data, "ram"
        return None, ""

    def _read_file(self, key: str, parent: str, tokens: Sequence[int], tail: bool, dest: np.ndarray,
                   start: int) -> tuple[str, int, Exception | None]:  # fmt: skip
        """Read and verify one block file into ``dest`` at ``start`` (on a read-pool thread:
        no store state is touched here). ("ok", size, None), ("missing", 0, None),
        ("corrupt", 0, BlockRejected) or ("fault", 0, OSError)."""
        if self.disk_io is None:
            return "missing", 0, None
        sub, name = _file_name(key, parent, tail, len(tokens))
        fd = self.disk_io.open_regular(sub, name)
        if fd is None:
            return "missing", 0, None
        try:
            size = os.fstat(fd).st_size
            read_into(fd, self.layout, BlockHeader(key, parent, tail, len(tokens)), tokens,
                      slabs(dest, start, len(tokens)))  # fmt: skip
        except BlockRejected as exc:
            return "corrupt", 0, exc
        except OSError as exc:
            return "fault", 0, exc
        finally:
            self.disk_io.close(fd)
        return "ok", size, None

    def _settle_read(self, item: tuple, outcome: tuple[str, int, Exception | None]) -> bool:
        """The store's bookkeeping for one read (under the lock); True when the block is good."""
        _, key, parent, tokens, tail = item
        what, size, exc = outcome
        sub, name = _file_name(key, parent, tail, len(tokens))
        if what == "missing":
            self.disk.pop(key, None)
            return False
        if what == "corrupt":
            assert isinstance(exc, BlockRejected)
            self.stats.corrupt += 1
            log.warning("kv cache miss reason=corrupt file=%s detail=%s", name, exc)
            self.disk.pop(key, None)
            if exc.remove and self.disk_io is not None:
                self.disk_io.unlink(sub, name)
            return False
        if what == "fault":
            assert isinstance(exc, OSError) and self.disk_io is not None
            self.disk_io.fault("read", exc)
            self.stats.disk_faults = self.disk_io.faults
            return False
        entry = self.disk.get(key)
        if entry is None:  # written by another process since our scan
            entry = self.disk[key] = _Entry(key, parent, len(tokens), size, time.time(), is_tail=tail, name=name)
        entry.hits += 1
        entry.last_used = time.time()
        return True

    def _tails(self, parent: str, rest: list[int]) -> list[tuple[str, int]]:
        """Stored tails under ``parent`` whose tokens are a prefix of ``rest``, longest first."""
        found: dict[str, int] = {}
        for e in list(self.ram.values()) + list(self.disk.values()):
            if e.is_tail and e.parent == parent:
                found[e.key] = e.tokens
        for job in self._writer.jobs() if self._writer is not None else []:
            if job.tail and job.parent == parent:
                found[job.key] = len(job.tokens)
        if self.disk_io is not None:  # another process may have written one since our scan
            for info in self.disk_io.scan("tails"):
                parts = info.name.split(".")
                if len(parts) == 4 and parts[0] == parent and parts[2].isdigit():
                    found.setdefault(parts[1], int(parts[2]))
        salt = _tail_salt(self.layout)
        ok = [(k, n) for k, n in found.items() if 0 < n <= len(rest) and chain_hash(parent, rest[:n], salt) == k]
        return sorted(ok, key=lambda kn: -kn[1])

    # ------------------------------------------------------------------ disk index

    def _scan(self) -> None:
        """Index existing files by name (headers are verified when read); reap orphaned temps."""
        assert self.disk_io is not None
        self.disk.clear()
        self.disk_io.temp_bytes = 0
        for sub, tail in (("blocks", False), ("tails", True)):
            for info in self.disk_io.scan(sub, reap=True):
                parts = info.name.split(".")
                if tail and len(parts) == 4 and parts[2].isdigit() and parts[3] == "kvt":
                    parent, key, tokens = parts[0], parts[1], int(parts[2])
                elif not tail and len(parts) == 3 and parts[2] == "kvb":
                    key, parent, tokens = parts[0], parts[1], self.layout.block_size
                else:
                    continue
                self.disk[key] = _Entry(key, parent, tokens, info.size, info.mtime, is_tail=tail, name=info.name)
        self._evict(self.disk, "disk", self.disk_bytes)

    # ------------------------------------------------------------------ eviction

    def _tier_bytes(self, name: str) -> int:
        if name == "ram":
            return sum(e.nbytes for e in self.ram.values())
        temp = self.disk_io.temp_bytes if self.disk_io else 0
        return sum(e.nbytes for e in self.disk.values()) + temp

    def _evict(self, tier: dict[str, _Entry], name: str, budget: int, landing: frozenset[str] = frozenset(),
               copies: frozenset[str] = frozenset()) -> None:
        used = self._tier_bytes(name)
        if used <= budget:
            return
        pinned = set(self._active) | set(landing)
        for keys in self.anchors.values():
            pinned |= keys
        recent = set().union(*self.recent.values()) if self.recent else set()

        def rank(e: _Entry, leaves: set[str]) -> int | None:
            if name == "ram" and (e.key in copies or e.key in self.disk or (self._writer and self._writer.pending(e.key))):
                return 0  # a copy: the block stays on disk
            if e.key not in leaves:
                return None
            return 3 if e.key in pinned else (2 if e.key in recent else 1)

        while used > budget and tier:
            parents = {e.parent for e in tier.values()}
            leaves = {k for k in tier if k not in parents}
            ranked = [(r, e) for e in tier.values() if (r := rank(e, leaves)) is not None]
            if not ranked:
                break
            best = min(r for r, _ in ranked)
            victim = min((e for r, e in ranked if r == best), key=_Entry.score)
            del tier[victim.key]
            used -= victim.nbytes
            if victim.name and self.disk_io is not None:
                self.disk_io.unlink("tails" if victim.is_tail else "blocks", victim.name)
            gone = not self._has(victim.key) and victim.key not in copies
            hits = victim.hits + (self.ram[victim.key].hits if victim.key in self.ram else 0)
            if gone:
                self.evicted.add(victim.key)
                if hits == 0:
                    self.stats.evicted_unused[name] += 1
            self.stats.evictions[name] += 1
            log.info("kv cache evicted reason=budget tier=%s tokens=%d hits=%d%s", name, victim.tokens, hits,
                     " pinned=1" if best == 3 else "")

    def usage(self) -> dict[str, int]:
        with self._lock:
            return {
                "ram_bytes": self._tier_bytes("ram"),
                "disk_bytes": self._tier_bytes("disk"),
                "ram_blocks": len(self.ram),
                "disk_blocks": len(self.disk),
                "pending_bytes": self._writer.pending_bytes if self._writer else 0,
                "disk_available": int(bool(self.disk_io and self.disk_io.available)),
            }

    def clear(self) -> None:
        self.flush()
        with self._lock:
            self.ram.clear()
            if self.disk_io is not None:
                for e in list(self.disk.values()):
                    self.disk_io.unlink("tails" if e.is_tail else "blocks", e.name)
            self.disk.clear()

    def _persist_stats(self) -> None:
        """Add this store's figures since the last call to the kv_dir's stats.json."""
        if self.disk_io is None or not self.disk_io.available:
            return
        with self._lock:
            now = self.stats.to_dict()
            base = self._persisted
        path = self.disk_io.root / "stats.json"
        try:
            old = stats_file.load(path.read_text()) if path.is_file() else {}
        except (OSError, UnicodeDecodeError):
            old = {}
        merged = stats_file.merge_stats(old, now, base)
        if self.disk_io.write(".", "stats.json", [json.dumps(merged).encode()]) is not None:
            self._persisted = now


def _make_write(layout: KVLayout, disk: DiskTier, landed) -> Callable[[WriteJob], None]:
    """The writer's job: encode and write one block file, then tell the store (if it still exists)."""

    def write(job: WriteJob) -> None:
        sub, name = _file_name(job.key, job.parent, job.tail, len(job.tokens))
        buffers = encode(layout, BlockHeader(job.key, job.parent, job.tail, len(job.tokens)), job.tokens, job.data)
        size = disk.write(sub, name, buffers)
        callback = landed()
        if callback is not None:
            callback(job, size)

    return write
