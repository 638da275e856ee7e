"""A picture of a session's cache: per-turn reuse and time to first token, with and without
checkpoints, drawn from the cache benchmark's JSON-line records (``python -m agentcore.bench
cache --plot FILE.png``).

It reads the ``"figure": "reuse"`` records (``turn``, ``prompt``, ``reused``, ``prefill_ms``).
Records with ``"checkpoints": false`` are a measured run without checkpoints; when there are
none, that line is an estimate, and its legend says so: a runtime that does not checkpoint
prefills every prompt from scratch (reuse 0), at the rate the first, cold turn was measured at.

matplotlib is an optional extra: ``pip install 'agentcore[plot]'``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_session"]


def plot_session(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Draw reuse (top) and TTFT (bottom) per turn into ``path`` (PNG); returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib: pip install 'agentcore[plot]'"
        ) from exc

    turns = [r for r in records if r.get("figure") == "reuse"]
    with_ckpt = sorted((r for r in turns if r.get("checkpoints", True)), key=lambda r: r["turn"])
    without = sorted((r for r in turns if not r.get("checkpoints", True)), key=lambda r: r["turn"])
    if not with_ckpt:
        raise ValueError('no "figure": "reuse" records to plot: run the benchmark without --skip reuse')

    series = [("with checkpoints", with_ckpt, "-", "tab:blue")]
    if without:
        series.append(("without checkpoints", without, "-", "tab:red"))
    else:
        cold = with_ckpt[0]
        ms_per_token = cold["prefill_ms"] / max(1, cold["prompt"])
        estimated = [
            {"turn": r["turn"], "prompt": r["prompt"], "reused": 0,
             "prefill_ms": r["prompt"] * ms_per_token}
            for r in with_ckpt
        ]
        series.append(
            ("without checkpoints (estimate: every prompt prefilled cold at turn 1's rate)",
             estimated, "--", "tab:red")
        )

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for label, rows, style, color in series:
        x = [r["turn"] for r in rows]
        top.plot(x, [100 * r["reused"] / r["prompt"] for r in rows], style, color=color,
                 marker="o", markersize=3, label=label)
        bottom.plot(x, [r["prefill_ms"] for r in rows], style, color=color, marker="o",
                    markersize=3, label=label)
    top.set_ylabel("prompt reused (%)")
    top.set_ylim(-5, 105)
    top.set_title(_title(with_ckpt[0]))
    top.legend(loc="center right", fontsize=8)
    bottom.set_ylabel("time to first token: prefill (ms)")
    bottom.set_xlabel("turn")
    bottom.set_yscale("log")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _title(record: Mapping[str, Any]) -> str:
    parts = [str(record[k]) for k in ("model", "device") if record.get(k)]
    sha = str(record.get("git_sha") or "")[:7]
    return "per-turn KV reuse over a tool-calling session" + (
        f"\n{', '.join(parts)}{' @ ' + sha if sha else ''}" if parts else ""
    )
