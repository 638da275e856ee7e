"""Sum an ``ncu --csv`` log's gpu__time_duration by kernel name (the template arguments
kept, the parameter list dropped): launches, total and mean microseconds, and the shared
memory configuration each ran under.

    python bench/experiments/ncu_sum.py NCU.csv [STEPS]

With STEPS, totals are divided by it (per decode step)."""

from __future__ import annotations

import csv
import sys
from collections import defaultdict


def main(argv: list[str]) -> int:
    steps = int(argv[1]) if len(argv) > 1 else 1
    with open(argv[0]) as f:
        lines = [ln for ln in f if ln.startswith('"')]
    rows = csv.DictReader(lines)
    dur: dict[str, list[float]] = defaultdict(list)
    cfg: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        name = r["Kernel Name"].split("(")[0].replace("void ", "") + " grid" + r["Grid Size"]
        unit, value = r["Metric Unit"], float(r["Metric Value"].replace(",", ""))
        if r["Metric Name"] == "gpu__time_duration.sum":
            scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[unit]
            dur[name].append(value * scale)
        elif r["Metric Name"] == "launch__shared_mem_config_size":
            cfg[name].add(f"{value:g}{unit}")
    total = sum(sum(v) for v in dur.values()) / steps
    for name, v in sorted(dur.items(), key=lambda kv: -sum(kv[1])):
        print(f"{name:40s} n={len(v) / steps:6.1f} total={sum(v) / steps:9.1f}us mean={sum(v) / len(v):7.2f}us "
              f"smem_cfg={','.join(sorted(cfg[name]))}")
    print(f"{'all kernels':40s} total={total:9.1f}us per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
