"""agentcore: embeddable tool-using agents on a local model.

The public API is re-exported here; ``import agentcore`` never imports CuPy.
"""

from agentcore.agent import Agent, RunResult
from agentcore.context import ContextPolicy
from agentcore.engine.base import Engine, GenerationRequest, Sampling, Usage
from agentcore.messages import (
    AssistantMessage,
    CheckpointEvent,
    CompactionEvent,
    FinalEvent,
    SystemMessage,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolMessage,
    ToolResultEvent,
    ToolSpec,
    TurnEvent,
    UserMessage,
)
from agentcore.summarize import OpenAICompatibleSummarizer, Summarizer
from agentcore.tools import Tool, ToolRegistry, tool

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AssistantMessage",
    "CheckpointEvent",
    "CompactionEvent",
    "ContextPolicy",
    "Engine",
    "FinalEvent",
    "GenerationRequest",
    "OpenAICompatibleSummarizer",
    "RunResult",
    "Sampling",
    "Summarizer",
    "SystemMessage",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallEvent",
    "ToolMessage",
    "ToolRegistry",
    "ToolResultEvent",
    "ToolSpec",
    "TurnEvent",
    "Usage",
    "UserMessage",
    "__version__",
    "tool",
]
