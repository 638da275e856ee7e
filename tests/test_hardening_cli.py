"""File names that are not UTF-8 never crash the CLI's output (issue 17, item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentcore.cli import _event_json
from agentcore.messages import ToolMessage, ToolResultEvent
from agentcore.tools import ToolRegistry
from agentcore.tools.builtin import builtin_tools

REPO = Path(__file__).resolve().parents[1]
NAME = "caf\udce9.txt"  # the bytes b"caf\xe9.txt" as os.listdir returns them


def test_json_lines_escape_text_that_is_not_valid_unicode():
    event = ToolResultEvent(result=ToolMessage(call_id="c", name="list_dir", content=NAME))
    line = _event_json(event)
    assert json.loads(line)["result"]["content"] == NAME
    line.encode("utf-8")  # printable on a strict UTF-8 stream


def test_printing_such_text_does_not_crash_on_a_strict_utf8_stdout():
    script = "from agentcore.cli import _tolerant_output; _tolerant_output(); print('caf\\udce9.txt')"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"caf\\udce9.txt\n"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_list_dir_shows_a_non_utf8_name_as_printable_text(tmp_path):
    os.close(os.open(os.fsencode(tmp_path) + b"/caf\xe9.txt", os.O_CREAT | os.O_WRONLY))
    from agentcore.messages import ToolCall

    registry = ToolRegistry(builtin_tools(tmp_path), workspace=tmp_path)
    [result] = await registry.run([ToolCall(id="c", name="list_dir", arguments={})])
    assert result.content == "caf\\xe9.txt (0 bytes)"
    result.content.encode("utf-8")
