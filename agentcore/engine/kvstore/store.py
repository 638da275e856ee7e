"""CheckpointStore: KV blocks in a RAM tier and a disk tier, with budgets and eviction.

Files under ``<kv_dir>/<fingerprint[:16]>/``:
- ``blocks/<hash>.<parent>.kvb``: one full block, content-addressed by its chained hash;
- ``tails/<parent>.<hash>.<ntokens>.kvt``: the partial last block of a checkpoint.
Each file is a header (magic, format version, JSON with fingerprint, layout, dtype, parent,
token ids, payload CRC32) plus the raw KV payload. Writes are atomic (temp file + rename), so
two processes on one kv_dir only ever see whole files; identical blocks have identical
names, so a race writes the same bytes twice and nothing breaks.

Invariants: a read is verified (format, fingerprint, layout, token ids, chain hash, CRC32)
before any byte reaches a KV cache; a corrupt, truncated, foreign or stale file is a logged
miss, never wrong KV. Eviction over budget takes leaves (blocks no stored block extends)
before shared ancestors, by recency weighted with hits, and spares the newest checkpoint of
every live session while older leaves remain (no hits=0 thrash).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agentcore.engine.kvstore.blocks import ROOT, KVLayout, chain_hash

__all__ = ["CheckpointStore", "RestoredPrefix", "StoreStats"]

log = logging.getLogger("agentcore.kv")

MAGIC = b"ACKV"
FORMAT_VERSION = 1
HIT_WEIGHT_S = 120.0  # one hit counts like two minutes of recency
_HEADER = struct.Struct("<4sHI")


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
    path: Path | None = None  # disk tier only

    def score(self) -> float:
        return self.last_used + HIT_WEIGHT_S * self.hits


@dataclass
class RestoredPrefix:
    tokens: int
    source: str  # "ram" | "disk" | "none"
    ms: float
    bytes_read: int
    blocks: list[str]
    tail: str | None


@dataclass
class StoreStats:
    ram_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    blocks_written: int = 0
    bytes_written: int = 0
    evictions: dict[str, int] = field(default_factory=lambda: {"ram": 0, "disk": 0})
    corrupt: int = 0


class CheckpointStore:
    """Two-tier, content-addressed store of KV blocks for one model layout."""

    def __init__(
        self,
        layout: KVLayout,
        *,
        ram_bytes: int = 1 << 30,
        kv_dir: str | Path | None = None,
        disk_bytes: int = 16 << 30,
    ) -> None:
        self.layout = layout
        self.ram_bytes = ram_bytes
        self.disk_bytes = disk_bytes
        self.ram: dict[str, _Entry] = {}
        self.disk: dict[str, _Entry] = {}
        self.pinned: dict[str, set[str]] = {}  # live session -> keys of its newest checkpoint
        self.evicted: set[str] = set()
        self.stats = StoreStats()
        self._lock = threading.RLock()
        self.dir: Path | None = None
        if kv_dir is not None:
            self.dir = Path(kv_dir).expanduser() / layout.fingerprint[:16]
            (self.dir / "blocks").mkdir(parents=True, exist_ok=True)
            (self.dir / "tails").mkdir(parents=True, exist_ok=True)
            self._scan()

    # ------------------------------------------------------------------ writing

    def save(
        self, session_id: str, ids: Sequence[int], hashes: Sequence[str], read_block, prev_tail: str | None
    ) -> tuple[int, int, str | None]:
        """Store the blocks of ``ids`` not stored yet, and a tail record for the rest.

        ``read_block(start, n)`` returns positions [start, start+n) as one host array.
        Returns (blocks written, bytes written, tail key).
        """
        bs = self.layout.block_size
        written = nbytes = 0
        with self._lock:
            parent = ROOT
            for i, key in enumerate(hashes):
                if not self._has(key):
                    block = read_block(i * bs, bs)
                    nbytes += self._put(key, parent, ids[i * bs : (i + 1) * bs], block, tail=False)
                    written += 1
                parent = key
            rest = ids[len(hashes) * bs :]
            tail = None
            if prev_tail and prev_tail != parent:
                self._drop_tail(prev_tail)
            if rest:
                tail = chain_hash(parent, rest, self.layout.salt + b"|tail")
                if not self._has(tail):
                    block = read_block(len(hashes) * bs, len(rest))
                    nbytes += self._put(tail, parent, rest, block, tail=True)
            self.pinned[session_id] = set(hashes) | ({tail} if tail else set())
            self.stats.blocks_written += written
            self.stats.bytes_written += nbytes
            self._enforce_budgets()
        return written, nbytes, tail

    def release(self, session_id: str) -> None:
        """The session is no longer live: its newest checkpoint may be evicted normally."""
        with self._lock:
            self.pinned.pop(session_id, None)

    def _has(self, key: str) -> bool:
        return key in self.ram or key in self.disk

    def _put(self, key: str, parent: str, tokens: Sequence[int], block: np.ndarray, *, tail: bool) -> int:
        now = time.time()
        self.ram[key] = _Entry(key, parent, len(tokens), block.nbytes, now, is_tail=tail, data=block)
        self.evicted.discard(key)
        if self.dir is None:
            return block.nbytes
        path = self._path(key, parent, tail, len(tokens))
        header = json.dumps(
            {
                "fingerprint": self.layout.fingerprint,
                "layout": self._layout_tag(),
                "dtype": self.layout.dtype,
                "shape": list(block.shape),
                "parent": parent,
                "key": key,
                "tail": tail,
                "tokens": [int(t) for t in tokens],
                "crc32": zlib.crc32(block),
            }
        ).encode()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, len(header)))
                f.write(header)
                f.write(memoryview(np.ascontiguousarray(block)).cast("B"))
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            log.warning("kv cache disk write failed path=%s error=%s", path, exc)
            return block.nbytes
        size = path.stat().st_size
        self.disk[key] = _Entry(key, parent, len(tokens), size, now, is_tail=tail, path=path)
        return size

    def _path(self, key: str, parent: str, tail: bool, n_tokens: int) -> Path:
        assert self.dir is not None
        if tail:
            return self.dir / "tails" / f"{parent}.{key}.{n_tokens}.kvt"
        return self.dir / "blocks" / f"{key}.{parent}.kvb"

    def _drop_tail(self, key: str) -> None:
        """A session's newer checkpoint supersedes its previous partial block."""
        self.ram.pop(key, None)
        disk = self.disk.pop(key, None)
        if disk and disk.path:
            disk.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading

    def restore(self, ids: Sequence[int], hashes: Sequence[str], write_block) -> RestoredPrefix:
        """Load the longest stored prefix of ``ids`` through ``write_block(start, array)``."""
        t0 = time.perf_counter()
        bs = self.layout.block_size
        sources: set[str] = set()
        got: list[str] = []
        nbytes = 0
        with self._lock:
            self._refresh_disk_index()
            parent = ROOT
            for i, key in enumerate(hashes):
                block, src = self._load(key, parent, ids[i * bs : (i + 1) * bs], tail=False)
                if block is None:
                    break
                write_block(i * bs, block)
                nbytes += block.nbytes
                sources.add(src)
                got.append(key)
                parent = key
            tokens = len(got) * bs
            tail_key = None
            rest = list(ids[tokens:])
            if rest:
                # Wherever the chain of full blocks stops, a stored partial block may go on.
                tail_key, block, src = self._best_tail(parent, rest)
                if block is not None:
                    write_block(tokens, block)
                    tokens += block.shape[2]
                    nbytes += block.nbytes
                    sources.add(src)
        source = "disk" if "disk" in sources else ("ram" if sources else "none")
        if source == "disk":
            self.stats.disk_hits += 1
        elif source == "ram":
            self.stats.ram_hits += 1
        else:
            self.stats.misses += 1
        ms = (time.perf_counter() - t0) * 1000
        return RestoredPrefix(tokens, source, ms, nbytes, got, tail_key if tokens > len(got) * bs else None)

    def _load(self, key: str, parent: str, tokens: Sequence[int], *, tail: bool) -> tuple[np.ndarray | None, str]:
        entry = self.ram.get(key)
        if entry is not None and entry.data is not None:
            entry.hits += 1
            entry.last_used = time.time()
            return entry.data, "ram"
        entry = self.disk.get(key)
        if entry is None or entry.path is None:
            return None, ""
        block = self._read_file(entry.path, key, parent, tokens, tail)
        if block is None:
            return None, ""
        entry.hits += 1
        entry.last_used = time.time()
        try:
            os.utime(entry.path)
        except OSError:
            pass
        self.ram[key] = _Entry(key, parent, len(tokens), block.nbytes, time.time(), entry.hits, tail, data=block)
        return block, "disk"

    def _best_tail(self, parent: str, rest: list[int]) -> tuple[str | None, np.ndarray | None, str]:
        """The stored tail under ``parent`` whose tokens are the longest prefix of ``rest``."""
        best: tuple[int, str] | None = None
        for key, entry in list(self.ram.items()) + list(self.disk.items()):
            if entry.is_tail and entry.parent == parent and entry.tokens <= len(rest):
                if best is None or entry.tokens > best[0]:
                    expected = chain_hash(parent, rest[: entry.tokens], self.layout.salt + b"|tail")
                    if expected == key:
                        best = (entry.tokens, key)
        if best is None:
            return None, None, ""
        n, key = best
        block, src = self._load(key, parent, rest[:n], tail=True)
        return (key, block, src) if block is not None else (None, None, "")

    def _read_file(self, path: Path, key: str, parent: str, tokens: Sequence[int], tail: bool) -> np.ndarray | None:
        """Read and verify one file; any problem is a logged miss and the file is removed."""
        try:
            with open(path, "rb") as f:
                magic, version, hlen = _HEADER.unpack(f.read(_HEADER.size))
                if magic != MAGIC:
                    return self._reject(path, key, "bad magic")
                if version != FORMAT_VERSION:
                    return self._reject(path, key, f"format version {version}", remove=False)
                header = json.loads(f.read(hlen))
                payload = f.read()
        except (OSError, ValueError, struct.error) as exc:
            return self._reject(path, key, f"unreadable ({type(exc).__name__})")
        if header.get("fingerprint") != self.layout.fingerprint or header.get("layout") != self._layout_tag():
            return self._reject(path, key, "foreign model or layout", remove=False)
        if header.get("tokens") != [int(t) for t in tokens] or header.get("parent") != parent:
            return self._reject(path, key, "token ids differ")
        salt = self.layout.salt + (b"|tail" if tail else b"")
        if chain_hash(parent, tokens, salt) != key:
            return self._reject(path, key, "chain hash differs")
        shape = tuple(self.layout.block_shape(len(tokens)))
        expected = int(np.prod(shape)) * np.dtype(self.layout.dtype).itemsize
        if len(payload) != expected:
            return self._reject(path, key, f"truncated ({len(payload)} of {expected} bytes)")
        if zlib.crc32(payload) != header.get("crc32"):
            return self._reject(path, key, "checksum mismatch")
        return np.frombuffer(payload, dtype=self.layout.dtype).reshape(shape)

    def _reject(self, path: Path, key: str, why: str, *, remove: bool = True) -> None:
        self.stats.corrupt += 1
        log.warning("kv cache miss reason=corrupt file=%s detail=%s", path.name, why)
        self.disk.pop(key, None)
        if remove:
            path.unlink(missing_ok=True)

    def _layout_tag(self) -> str:
        lay = self.layout
        return f"{lay.n_layers}x{lay.n_kv_heads}x{lay.head_dim}/{lay.block_size}"

    # ------------------------------------------------------------------ disk index

    def _scan(self) -> None:
        """Index existing files by name (headers are verified when read)."""
        assert self.dir is not None
        self.disk.clear()
        for sub, tail in (("blocks", False), ("tails", True)):
            for path in (self.dir / sub).iterdir():
                if path.name.startswith(".tmp-"):
                    continue
                parts = path.name.split(".")
                if tail and len(parts) == 4 and parts[2].isdigit():
                    parent, key, tokens = parts[0], parts[1], int(parts[2])
                elif not tail and len(parts) == 3:
                    key, parent, tokens = parts[0], parts[1], self.layout.block_size
                else:
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue
                self.disk[key] = _Entry(key, parent, tokens, st.st_size, st.st_mtime, is_tail=tail, path=path)

    def _refresh_disk_index(self) -> None:
        """Pick up blocks another process wrote since we last looked."""
        if self.dir is not None:
            known = {e.path for e in self.disk.values()}
            for sub in ("blocks", "tails"):
                for path in (self.dir / sub).iterdir():
                    if path not in known and not path.name.startswith(".tmp-"):
                        self._scan()
                        return

    # ------------------------------------------------------------------ eviction

    def _enforce_budgets(self) -> None:
        self._evict(self.ram, self.ram_bytes, "ram")
        if self.dir is not None:
            self._evict(self.disk, self.disk_bytes, "disk")

    def _evict(self, tier: dict[str, _Entry], budget: int, name: str) -> None:
        used = sum(e.nbytes for e in tier.values())
        if used <= budget:
            return
        protected = set().union(*self.pinned.values()) if self.pinned else set()
        while used > budget and tier:
            parents = {e.parent for e in tier.values()}
            leaves = [e for e in tier.values() if e.key not in parents]
            candidates = [e for e in leaves if e.key not in protected] or leaves
            victim = min(candidates, key=_Entry.score)
            del tier[victim.key]
            used -= victim.nbytes
            if victim.path is not None:
                victim.path.unlink(missing_ok=True)
            if not self._has(victim.key):
                self.evicted.add(victim.key)
            self.stats.evictions[name] += 1
            log.info(
                "kv cache evicted reason=budget tier=%s tokens=%d hits=%d", name, victim.tokens, victim.hits
            )

    def usage(self) -> dict[str, int]:
        return {
            "ram_bytes": sum(e.nbytes for e in self.ram.values()),
            "disk_bytes": sum(e.nbytes for e in self.disk.values()),
            "ram_blocks": len(self.ram),
            "disk_blocks": len(self.disk),
        }

    def clear(self) -> None:
        with self._lock:
            self.ram.clear()
            for e in list(self.disk.values()):
                if e.path is not None:
                    e.path.unlink(missing_ok=True)
            self.disk.clear()
