"""An oversized task is rolled back, so the conversation stays usable (issue 17, item 8b)."""

from __future__ import annotations

import pytest

from agentcore import Agent
from agentcore.errors import ContextOverflow
from agentcore.messages import UserMessage
from agentcore.testing.scripted import ScriptedEngine

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.parametrize("run_first", [False, True])
async def test_an_oversized_task_is_rolled_back_and_later_runs_work(tmp_path, run_first):
    engine = ScriptedEngine(["first answer", "second answer"], context_length=2048)
    agent = Agent(engine, system="s", max_tokens=256, workspace=tmp_path)
    if run_first:
        assert (await agent.run("a small task")).final_text == "first answer"
    before = list(agent.messages)
    with pytest.raises(ContextOverflow):
        await agent.run("x " * 5000)
    assert agent.messages == before
    result = await agent.run("a small task again")
    assert result.final_text == ("second answer" if run_first else "first answer")
    assert [m.content for m in agent.messages if isinstance(m, UserMessage)][-1] == "a small task again"
