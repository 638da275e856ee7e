"""RemoteEngine: agentcore's Engine protocol over vLLM, SGLang, llama.cpp and ds4 servers.

``engine`` ties the parts together; ``transport`` is HTTP (retries, SSE, typed errors);
``dialects`` holds what differs between servers; ``tokens`` tokenizes through a server.
"""

from agentcore.engine.remote.engine import RemoteEngine

__all__ = ["RemoteEngine"]
