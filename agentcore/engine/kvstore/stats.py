"""What the checkpoint store did: hits, bytes written vs reused, evictions, faults, miss costs.

``StoreStats`` lives in memory per store; ``merge_into_file`` adds what happened since the
last merge to ``<kv_dir>/<model>/stats.json`` (at flush and close), so ``agentcore cache
stats`` can show a kv_dir's history across processes. Two processes merging at once may lose
one update: these are statistics, not cache contents.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["StoreStats", "load", "merge_stats", "summarize"]

SAMPLES = 1024  # miss-cost samples kept


def _p90(values) -> float | None:
    return float(np.percentile(list(values), 90)) if values else None


@dataclass
class StoreStats:
    ram_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    blocks_written: int = 0  # blocks stored by save() (each block once)
    bytes_written: int = 0  # payload bytes stored by save()
    disk_blocks_written: int = 0  # block files made durable
    disk_bytes_written: int = 0  # bytes of those files
    bytes_reused: int = 0  # payload bytes restored into a KV cache
    evictions: dict[str, int] = field(default_factory=lambda: {"ram": 0, "disk": 0})
    evicted_unused: dict[str, int] = field(default_factory=lambda: {"ram": 0, "disk": 0})
    corrupt: int = 0
    disk_faults: int = 0
    miss_tokens: deque = field(default_factory=lambda: deque(maxlen=SAMPLES))
    miss_ms: deque = field(default_factory=lambda: deque(maxlen=SAMPLES))

    @property
    def write_amplification(self) -> float | None:
        """Bytes written per byte reused (None before anything was reused)."""
        return self.bytes_written / self.bytes_reused if self.bytes_reused else None

    def to_dict(self) -> dict[str, Any]:
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()
               if not isinstance(v, deque)}
        out["miss_tokens"] = list(self.miss_tokens)
        out["miss_ms"] = list(self.miss_ms)
        return out


def merge_stats(old: dict[str, Any], new: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``old`` plus what changed from ``base`` to ``new`` (counters add, samples append)."""
    out = dict(old)
    for key, value in new.items():
        if isinstance(value, list):
            seen = len(base.get(key, []))
            out[key] = (list(old.get(key, [])) + value[seen:])[-SAMPLES:]
        elif isinstance(value, dict):
            prev, was = old.get(key, {}), base.get(key, {})
            out[key] = {k: prev.get(k, 0) + v - was.get(k, 0) for k, v in value.items()}
        elif isinstance(value, int):
            out[key] = old.get(key, 0) + value - base.get(key, 0)
    return out


def summarize(d: dict[str, Any]) -> dict[str, Any]:
    """The figures ``agentcore cache stats`` shows, from a merged stats dict."""
    reused = d.get("bytes_reused", 0)
    return {
        "ram_hits": d.get("ram_hits", 0), "disk_hits": d.get("disk_hits", 0), "misses": d.get("misses", 0),
        "bytes_written": d.get("bytes_written", 0), "disk_bytes_written": d.get("disk_bytes_written", 0),
        "bytes_reused": reused,
        "write_amplification": round(d.get("bytes_written", 0) / reused, 3) if reused else None,
        "miss_tokens_p90": _p90(d.get("miss_tokens")), "miss_ms_p90": _p90(d.get("miss_ms")),
        "evictions": d.get("evictions", {}), "evicted_unused": d.get("evicted_unused", {}),
        "corrupt": d.get("corrupt", 0), "disk_faults": d.get("disk_faults", 0),
    }


def load(text: str) -> dict[str, Any]:
    try:
        d = json.loads(text)
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}
