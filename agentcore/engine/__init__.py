"""The engines the Agent drives, behind one protocol (``base.Engine``).

``LocalEngine`` runs a GGUF model in process (NumPy on the CPU, CuPy on NVIDIA GPUs).
Importing this package never imports CuPy.
"""

from agentcore.engine.base import (
    CheckpointInfo,
    Completion,
    Engine,
    GenerationRequest,
    Sampling,
    TextDelta,
    Usage,
)
from agentcore.engine.local import LocalEngine
from agentcore.engine.remote import RemoteEngine

__all__ = [
    "CheckpointInfo",
    "Completion",
    "Engine",
    "GenerationRequest",
    "LocalEngine",
    "RemoteEngine",
    "Sampling",
    "TextDelta",
    "Usage",
]
