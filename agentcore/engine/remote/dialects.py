"""What differs between servers: endpoints, request fields, stream events, limits, usage.

One ``Dialect`` per server family, from each project's documented API:
- llama.cpp ``llama-server``: ``/completion`` takes token ids, ``cache_prompt``, ``id_slot``
  and ``return_tokens``; events carry ``content``/``tokens``/``stop``; the last has
  ``timings.cache_n`` (prompt tokens reused). ``/props`` gives the per-slot ``n_ctx``, the
  slot count and the chat template. Slots save and restore to ``--slot-save-path``.
- vLLM and SGLang: OpenAI ``/v1/completions`` with a token-id prompt; ``/v1/models`` gives
  ``max_model_len``; usage has ``prompt_tokens_details.cached_tokens`` (vLLM with
  ``--enable-prompt-tokens-details``, SGLang with ``--enable-cache-report``). vLLM returns
  the sampled ids with ``return_token_ids``.
- ds4-server (antirez/ds4, DeepSeek V4 Flash): OpenAI endpoints with a *text* prompt (its
  parser skips token arrays); ``/v1/models`` gives ``context_length``; usage has
  ``prompt_tokens_details.cached_tokens``; its KV disk cache is the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentcore.engine.base import GenerationRequest, Sampling
from agentcore.engine.remote.transport import Transport
from agentcore.errors import ServerProtocolError

__all__ = ["DIALECTS", "Chunk", "Dialect", "ServerInfo", "detect_dialect"]


@dataclass
class Chunk:
    """One stream event, normalised. Usage fields are None where the event has none."""

    text: str = ""
    ids: list[int] | None = None
    finish: str | None = None
    reasoning: str = ""
    tool_deltas: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class ServerInfo:
    context_length: int | None = None
    slots: int = 1
    chat_template: str = ""
    model: str | None = None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _finish(reason: Any) -> str | None:
    if reason in (None, ""):
        return None
    return {"length": "length", "tool_calls": "tool_calls"}.get(str(reason), "stop")


def openai_usage(usage: Any, chunk: Chunk) -> None:
    if not isinstance(usage, dict):
        return
    chunk.prompt_tokens = _int(usage.get("prompt_tokens"))
    chunk.completion_tokens = _int(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        chunk.cached_tokens = _int(details.get("cached_tokens"))


def openai_sampling(sampling: Sampling | None) -> dict[str, Any]:
    s = sampling or Sampling()
    body: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p}
    if s.top_k > 0:
        body["top_k"] = s.top_k
    if s.min_p > 0:
        body["min_p"] = s.min_p
    if s.repetition_penalty != 1.0:
        body["repetition_penalty"] = s.repetition_penalty
    if s.seed is not None:
        body["seed"] = s.seed
    return body


def parse_chat_event(event: dict[str, Any]) -> Chunk:
    """An OpenAI ``chat.completion(.chunk)`` object: content, reasoning, tool-call deltas."""
    chunk = Chunk()
    openai_usage(event.get("usage"), chunk)
    choices = event.get("choices")
    if not isinstance(choices, list):
        raise ServerProtocolError(f"a chat completion without choices: {str(event)[:160]}")
    if not choices:
        return chunk
    choice = choices[0]
    message = choice.get("delta") or choice.get("message") or {}
    chunk.text = message.get("content") or ""
    chunk.reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    chunk.tool_deltas = list(message.get("tool_calls") or [])
    chunk.finish = _finish(choice.get("finish_reason"))
    return chunk


class Dialect:
    """An OpenAI-compatible server that takes token-id prompts (the vLLM shape)."""

    name = "openai"
    completions_path = "/v1/completions"
    chat_path = "/v1/chat/completions"
    text_prompt = False  # True: the server takes the prompt as text, not token ids
    slots = False  # llama.cpp slot save/restore
    has_tokenize = False  # llama.cpp /tokenize (content -> ids)

    def discover(self, transport: Transport) -> ServerInfo:
        data = transport.get("/v1/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list) or not models or not isinstance(models[0], dict):
            raise ServerProtocolError(f"{transport.base_url}/v1/models lists no model")
        card = models[0]
        limit = _int(card.get("max_model_len")) or _int(card.get("context_length"))
        return ServerInfo(context_length=limit, model=card.get("id"))

    def completion_body(self, prompt: list[int] | str, request: GenerationRequest,
                        max_tokens: int, model: str | None, slot: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, **openai_sampling(request.sampling),
        }
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def prefill_body(self, prompt: list[int] | str, model: str | None, slot: int | None
                     ) -> dict[str, Any] | None:
        """A request that computes the prompt's KV without generating; None: not possible."""
        return None

    def parse_completion_event(self, event: dict[str, Any]) -> Chunk:
        chunk = Chunk()
        openai_usage(event.get("usage"), chunk)
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise ServerProtocolError(f"a completion without choices: {str(event)[:160]}")
        if choices:
            choice = choices[0]
            chunk.text = choice.get("text") or ""
            ids = choice.get("token_ids")
            chunk.ids = list(ids) if isinstance(ids, list) else None
            chunk.finish = _finish(choice.get("finish_reason"))
        return chunk


class VLLM(Dialect):
    name = "vllm"

    def completion_body(self, prompt, request, max_tokens, model, slot):
        return {**super().completion_body(prompt, request, max_tokens, model, slot),
                "return_token_ids": True}


class SGLang(Dialect):
    name = "sglang"


class DS4(Dialect):
    name = "ds4"
    text_prompt = True


class LlamaCpp(Dialect):
    name = "llama.cpp"
    completions_path = "/completion"
    slots = True
    has_tokenize = True

    def discover(self, transport: Transport) -> ServerInfo:
        props = transport.get("/props")
        if not isinstance(props, dict):
            raise ServerProtocolError(f"{transport.base_url}/props is not a JSON object")
        settings = props.get("default_generation_settings") or {}
        return ServerInfo(
            context_length=_int(settings.get("n_ctx")),
            slots=_int(props.get("total_slots")) or 1,
            chat_template=str(props.get("chat_template") or ""),
            model=props.get("model_alias") or props.get("model_path"),
        )

    def completion_body(self, prompt, request, max_tokens, model, slot):
        s = request.sampling or Sampling()
        body: dict[str, Any] = {
            "prompt": prompt, "n_predict": max_tokens, "stream": True, "cache_prompt": True,
            "return_tokens": True, "temperature": s.temperature, "top_k": s.top_k,
            "top_p": s.top_p, "min_p": s.min_p, "repeat_penalty": s.repetition_penalty,
            "seed": s.seed if s.seed is not None else -1, "id_slot": -1 if slot is None else slot,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def prefill_body(self, prompt, model, slot):
        # n_predict=0: "the prompt is evaluated into the cache" and nothing is generated.
        return {"prompt": prompt, "n_predict": 0, "stream": False, "cache_prompt": True,
                "id_slot": -1 if slot is None else slot}

    def parse_completion_event(self, event: dict[str, Any]) -> Chunk:
        if "content" not in event and "tokens" not in event:
            raise ServerProtocolError(f"a /completion event without content: {str(event)[:160]}")
        ids = event.get("tokens")
        chunk = Chunk(text=event.get("content") or "", ids=list(ids) if isinstance(ids, list) else None)
        if event.get("stop"):
            chunk.finish = "length" if event.get("stop_type") == "limit" else "stop"
            timings = event.get("timings") or {}
            chunk.cached_tokens = _int(timings.get("cache_n"))
            chunk.prompt_tokens = _int(event.get("tokens_evaluated"))
            chunk.completion_tokens = _int(timings.get("predicted_n"))
            if chunk.prompt_tokens is None and chunk.cached_tokens is not None:
                chunk.prompt_tokens = chunk.cached_tokens + (_int(timings.get("prompt_n")) or 0)
        return chunk


DIALECTS: dict[str, type[Dialect]] = {
    "llama.cpp": LlamaCpp, "vllm": VLLM, "sglang": SGLang, "ds4": DS4, "openai": Dialect,
}
_OWNERS = {"vllm": VLLM, "sglang": SGLang, "ds4.c": DS4, "llamacpp": LlamaCpp}


def detect_dialect(transport: Transport) -> Dialect:
    """llama.cpp answers ``/props``; the others are told apart by ``/v1/models`` owned_by."""
    props = transport.get("/props", missing_ok=True)
    if isinstance(props, dict) and "default_generation_settings" in props:
        return LlamaCpp()
    data = transport.get("/v1/models")
    models = data.get("data") if isinstance(data, dict) else None
    owner = models[0].get("owned_by") if isinstance(models, list) and models else None
    return _OWNERS.get(str(owner), Dialect)()
