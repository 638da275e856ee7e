"""The README's quick start runs as written, on the real SmolLM2."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def quick_start() -> str:
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md's quick start has no ```python block"
    return match.group(1)


def test_quick_start_uses_the_documented_imports():
    code = quick_start()
    assert "from agentcore.engine import LocalEngine" in code
    assert "from agentcore.model_cache import pull" in code


@pytest.mark.real_model
def test_quick_start_runs_and_answers(smollm2_path, tmp_path):
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start(), encoding="utf-8")
    # The model comes from the cache the fixture filled; the KV checkpoints land in tmp_path.
    env = {**os.environ, "HOME": str(tmp_path),
           "AGENTCORE_HOME": str(smollm2_path.parent.parent)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, check=False,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Taipei" in done.stdout, done.stdout
    assert (tmp_path / ".cache" / "agentcore" / "kv").is_dir()
