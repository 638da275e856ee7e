"""Every example runs (CI runs them all): scripts as subprocesses, the user test under pytest."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("test_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_script_runs(script, smollm2_path):
    done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "an example must show something"


def test_user_test_example_passes():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(EXAMPLES / "test_with_mocked_summarizer.py")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
