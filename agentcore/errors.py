"""Typed errors. Every message says what happened and what to do next."""

from __future__ import annotations


class AgentCoreError(Exception):
    """Base class of every error agentcore raises on purpose."""


class ContextOverflow(AgentCoreError):
    """A request cannot fit the engine's real context window, even after compaction."""


class DSMLError(AgentCoreError):
    """A DSML document could not be rendered (parsing never raises; it reports errors)."""


class ToolError(AgentCoreError):
    """A tool definition is invalid (raised at registration, never while the loop runs)."""


class ToolTimeout(AgentCoreError):
    """A tool ran past its timeout (turned into an error ToolMessage by the registry)."""


class WorkspaceEscape(AgentCoreError):
    """A path given to a built-in tool resolves outside the workspace root."""


class SummarizerError(AgentCoreError):
    """The off-box summarizer failed after its retries."""


class ModelFormatError(AgentCoreError):
    """A GGUF file is truncated, inconsistent or hostile."""


class UnsupportedArchitecture(ModelFormatError):
    """The GGUF architecture is not in the registry."""


class UnsupportedQuantization(ModelFormatError):
    """A tensor uses a weight type the engine cannot read."""


class TokenizerError(AgentCoreError):
    """The GGUF vocabulary cannot be turned into a tokenizer."""


class DeviceUnavailable(AgentCoreError):
    """device="cuda" was asked for but CuPy or a GPU is missing."""


class ModelNotFound(AgentCoreError):
    """A named model is not in the cache and could not be pulled."""


class CacheError(AgentCoreError):
    """The KV checkpoint store cannot be used (bad kv_dir, budget too small)."""


class UnknownSession(CacheError, KeyError):
    """``checkpoint(session_id)`` named a session the engine holds no KV for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RemoteEngineError(AgentCoreError):
    """A remote inference server (vLLM, SGLang, llama.cpp, ds4) could not serve a request."""


class ServerUnavailable(RemoteEngineError):
    """The server refused the connection or stayed busy (429/503) through every retry."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerTimeout(RemoteEngineError):
    """The server did not answer within the engine's timeout."""


class ServerRejected(RemoteEngineError):
    """The server answered a request with an error that retrying will not fix (4xx, 5xx)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ServerProtocolError(RemoteEngineError):
    """The server's answer is not what its API documents (garbage body, broken stream)."""


class ProtectedPath(AgentCoreError):
    """write_file was asked to change a protected folder such as ``.git/``."""
