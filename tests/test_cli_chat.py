"""`agentcore chat` as a new user meets it: commands answered without a model turn, clean exit."""

import os
import subprocess
import sys

import pytest


@pytest.mark.real_model
def test_chat_commands_and_end_of_input(smollm2_path, tmp_path):
    env = {**os.environ, "AGENTCORE_HOME": str(smollm2_path.parent.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "agentcore.cli", "chat", "--device", "auto", "--kv-dir", str(tmp_path)],
        input="/help\n/foo\n/stats\n/compact\n/reset\n", env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "/compact  compact the conversation now" in out
    assert "unknown command /foo; /help lists them" in out
    assert "no turns yet" in out
    assert "nothing to compact yet" in out
    assert "new conversation" in out
    assert "Traceback" not in done.stderr
