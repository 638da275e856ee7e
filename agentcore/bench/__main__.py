"""Dispatch ``python -m agentcore.bench <name> [args]`` to ``agentcore.bench.<name>.main``."""

import importlib
import pkgutil
import sys

from agentcore import bench


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))
    if not argv or argv[0] not in names:
        print(f"usage: python -m agentcore.bench {{{','.join(names)}}} [args]", file=sys.stderr)
        return 2
    return importlib.import_module(f"agentcore.bench.{argv[0]}").main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
