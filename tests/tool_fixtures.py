"""Fixtures for the workspace-tool tests: an empty workspace, the built-in tools over it, and
``run`` to call one tool through the registry. Imported into tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentcore.messages import ToolCall, ToolMessage
from agentcore.tools import ToolRegistry
from agentcore.tools.builtin import builtin_tools


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


@pytest.fixture
def registry(workspace: Path) -> ToolRegistry:
    return ToolRegistry(builtin_tools(workspace), workspace=workspace)


async def run(registry: ToolRegistry, name: str, **arguments) -> ToolMessage:
    """Call one tool through the registry; its one result."""
    [result] = await registry.run([ToolCall(id="c1", name=name, arguments=arguments)])
    return result
