"""The model registry: GGUF reader, architectures, tokenizer and chat formats.

``build_model`` is the one place that maps a file's architecture to its forward pass.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_model"]


def build_model(model: Any, ops: Any, **kwargs: Any) -> Any:
    """The forward pass for ``model`` (a GGUFModel) over ``ops``: ``Transformer`` for llama,
    qwen2 and qwen3, ``DeepSeek2`` for deepseek2. Both offer ``forward(ids, pos0, kv)``,
    ``logits(ids)`` and ``spec``; ``ops.new_kv(spec, capacity)`` makes the matching live KV.
    """
    if model.spec.arch == "deepseek2":
        from agentcore.engine.model.deepseek2 import DeepSeek2

        return DeepSeek2(model, ops, **kwargs)
    from agentcore.engine.model.transformer import Transformer

    return Transformer(model, ops, **kwargs)
