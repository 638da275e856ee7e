"""agentcore: embeddable tool-using agents on a local model.

The public API is re-exported here; ``import agentcore`` never imports CuPy.
"""

from agentcore.messages import (
    AssistantMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)

__version__ = "0.1.0"

__all__ = [
    "AssistantMessage",
    "SystemMessage",
    "ToolCall",
    "ToolMessage",
    "ToolSpec",
    "UserMessage",
    "__version__",
]
