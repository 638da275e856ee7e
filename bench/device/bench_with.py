"""Run ``python -m agentcore.bench`` with ``CudaOps`` class switches set first, so a device
call can measure the public path with the winner of an A/B run earlier in the same call
(before that setting is the committed default; say so beside any figure it gives):

    python bench/device/bench_with.py fuse_quant_attn=0 fuse_quant_ffn=0 -- gpu --only decode ...
"""

from __future__ import annotations

import runpy
import sys

from agentcore.engine.backends.cuda import CudaOps


def main(argv: list[str]) -> None:
    cut = argv.index("--") if "--" in argv else len(argv)
    for item in " ".join(argv[:cut]).split():  # empty, or several in one argument: run.sh's
        name, value = item.split("=", 1)
        if not hasattr(CudaOps, name):
            raise SystemExit(f"CudaOps has no switch {name!r}")
        setattr(CudaOps, name, value not in ("0", "false", "False"))
        print(f"CudaOps.{name} = {getattr(CudaOps, name)}", file=sys.stderr)
    sys.argv = ["agentcore.bench", *argv[cut + 1 :]]
    runpy.run_module("agentcore.bench", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
