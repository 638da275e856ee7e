"""DESIGN.md's promises that no other file pins: the GPU stays optional, the default device is
the fast one, and the Engine protocol names what every engine offers."""

import inspect
import subprocess
import sys

from agentcore.engine.base import Engine
from agentcore.engine.local import LocalEngine
from agentcore.testing.scripted import ScriptedEngine


def test_import_agentcore_does_not_import_cupy():
    """Invariant 8: ``import agentcore`` works without CuPy, and never loads it."""
    code = "import sys, agentcore, agentcore.engine; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_default_device_is_auto():
    """Invariant 6: the fast path on a device is the default path (CUDA where there is one)."""
    assert inspect.signature(LocalEngine.__init__).parameters["device"].default == "auto"


def test_the_engine_protocol_has_checkpoint_by_session_and_stats():
    assert "context_length" in Engine.__annotations__
    assert {"count_tokens", "stream", "checkpoint", "stats"} <= set(dir(Engine))
    hint = str(inspect.signature(Engine.checkpoint).parameters["request"].annotation)
    assert "str" in hint and "GenerationRequest" in hint
    assert isinstance(ScriptedEngine(["hi"]), Engine)
