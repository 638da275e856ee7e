"""respx fakes of the servers RemoteEngine drives, built from each project's documented API.

- llama.cpp (tools/server/README.md): /props, /tokenize, /detokenize, /completion (SSE
  events with content/tokens/stop, the last with timings.cache_n), /slots/{id}?action=save
  |restore, GET /slots (n_prompt_tokens per slot). The fake keeps each slot's tokens and
  answers cache_n the way the server computes it: the common prefix with the slot, less the
  last prompt token, which is always recomputed.
- vLLM / SGLang (OpenAI protocol): /v1/models (max_model_len, owned_by), /v1/completions
  and /v1/chat/completions chunks with usage.prompt_tokens_details.cached_tokens.
- ds4-server (antirez/ds4 ds4_server.c): /v1/models (context_length, owned_by "ds4.c"),
  text prompts, the same usage shape, context_length_exceeded errors.

The tokenizer is bytes: id = byte value; special tokens have ids from 1000 up.
No test here; the other test_remote_* files import these helpers.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from agentcore.engine.model.chat import ChatML

SPECIALS = {"<|im_start|>": 1000, "<|im_end|>": 1001, "<|endoftext|>": 1002}
IDS = {v: k for k, v in SPECIALS.items()}


def encode(text: str) -> list[int]:
    return list(text.encode())


def decode(ids: list[int]) -> str:
    return b"".join(IDS[i].encode() if i in IDS else bytes([i]) for i in ids).decode("utf-8", "replace")


class ByteTokenizer:
    """What ChatML needs from a tokenizer, over the byte vocabulary above."""

    bos_id = None
    add_bos = False
    eot_ids = frozenset({1002})
    special_ids = SPECIALS

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def special(self, text: str) -> int:
        return SPECIALS[text]

    def decode(self, ids: list[int]) -> str:
        return decode(ids)


def chatml() -> ChatML:
    return ChatML(ByteTokenizer())  # type: ignore[arg-type]


def sse(events: list[dict[str, Any]], *, done: bool = True) -> httpx.Response:
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + ("data: [DONE]\n\n" if done else "")
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())


def error(status: int, message: str, type_: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": status, "message": message, "type": type_, **extra}})


CHATML_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


class FakeLlamaServer:
    """A llama-server with ``slots`` slots of ``n_ctx`` tokens each, answering scripted replies."""

    def __init__(self, router: Any, base: str = "http://llama.test", *, n_ctx: int = 4096,
                 slots: int = 1, save_path: bool = True) -> None:
        self.base = base
        self.n_ctx = n_ctx
        self.replies: list[str] = []
        self.slot_tokens: list[list[int]] = [[] for _ in range(slots)]
        self.files: dict[str, list[int]] = {}
        self.save_path = save_path
        self.requests: list[dict[str, Any]] = []
        self.tokenize_calls = 0
        router.get(f"{base}/props").mock(side_effect=self._props)
        router.post(f"{base}/tokenize").mock(side_effect=self._tokenize)
        router.post(f"{base}/detokenize").mock(
            side_effect=lambda r: httpx.Response(200, json={"content": decode(json.loads(r.content)["tokens"])}))
        router.post(f"{base}/completion").mock(side_effect=self._completion)
        router.get(f"{base}/slots").mock(side_effect=self._slots)
        router.post(url__regex=rf"{base}/slots/\d+").mock(side_effect=self._slot_action)

    def restart(self) -> None:
        """The process restarts: slots are empty, saved files stay."""
        self.slot_tokens = [[] for _ in self.slot_tokens]

    def _props(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "default_generation_settings": {"id": 0, "n_ctx": self.n_ctx, "params": {}},
            "total_slots": len(self.slot_tokens), "model_path": "smollm2.gguf",
            "chat_template": CHATML_TEMPLATE, "build_info": "b0-fake",
        })

    def _tokenize(self, request: httpx.Request) -> httpx.Response:
        self.tokenize_calls += 1
        body = json.loads(request.content)
        text = body["content"]
        if body.get("parse_special") and text in SPECIALS:
            return httpx.Response(200, json={"tokens": [SPECIALS[text]]})
        return httpx.Response(200, json={"tokens": encode(text)})

    def _slots(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[
            {"id": i, "n_ctx": self.n_ctx, "is_processing": False, **({"n_prompt_tokens": len(t)} if t else {})}
            for i, t in enumerate(self.slot_tokens)
        ])

    def _slot_action(self, request: httpx.Request) -> httpx.Response:
        slot = int(request.url.path.rsplit("/", 1)[1])
        action = request.url.params["action"]
        name = json.loads(request.content).get("filename", "")
        if not self.save_path:
            return error(501, "This server does not support slots action", "not_supported_error")
        if action == "save":
            self.files[name] = list(self.slot_tokens[slot])
            n = len(self.slot_tokens[slot])
            return httpx.Response(200, json={"id_slot": slot, "filename": name, "n_saved": n,
                                             "n_written": n * 1000, "timings": {"save_ms": 1.5}})
        if action == "restore":
            if name not in self.files:
                return error(400, "failed to restore slot", "invalid_request_error")
            self.slot_tokens[slot] = list(self.files[name])
            n = len(self.files[name])
            return httpx.Response(200, json={"id_slot": slot, "filename": name, "n_restored": n,
                                             "n_read": n * 1000, "timings": {"restore_ms": 2.5}})
        return error(400, "Invalid action", "invalid_request_error")

    def _completion(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        prompt = body["prompt"]
        if len(prompt) >= self.n_ctx:
            return error(400, f"request ({len(prompt)} tokens) exceeds the available context size "
                         f"({self.n_ctx} tokens), try increasing it", "exceed_context_size_error",
                         n_prompt_tokens=len(prompt), n_ctx=self.n_ctx)
        slot = max(0, body.get("id_slot", -1))
        held = self.slot_tokens[slot]
        common = 0
        while common < min(len(held), len(prompt)) and held[common] == prompt[common]:
            common += 1
        cache_n = min(common, len(prompt) - 1)
        timings = {"cache_n": cache_n, "prompt_n": len(prompt) - cache_n, "prompt_ms": 5.0}
        if body["n_predict"] == 0:
            self.slot_tokens[slot] = list(prompt)
            return httpx.Response(200, json={"content": "", "tokens": [], "stop": True,
                                             "stop_type": "limit", "tokens_evaluated": len(prompt),
                                             "timings": {**timings, "predicted_n": 0}})
        reply = self.replies.pop(0)
        ids = encode(reply)[: body["n_predict"]]
        events = []
        n = 0
        for char in decode(ids):  # like llama.cpp, never half a UTF-8 character per event
            toks = encode(char)
            n += len(toks)
            event = {"content": char, "tokens": toks, "stop": False, "id_slot": slot,
                     "tokens_predicted": n, "tokens_evaluated": len(prompt)}
            if body.get("timings_per_token"):
                event["timings"] = {**timings, "predicted_n": n}
            events.append(event)
        limit = len(encode(reply)) > body["n_predict"]
        events.append({"content": "", "tokens": [] if limit else [1001], "stop": True,
                       "stop_type": "limit" if limit else "eos", "id_slot": slot,
                       "tokens_evaluated": len(prompt),
                       "timings": {**timings, "predicted_n": len(ids), "predicted_per_second": 50.0}})
        # The KV holds the prompt and every sampled token but the last.
        self.slot_tokens[slot] = list(prompt) + ids
        return sse(events, done=False)


def openai_models(owned_by: str, *, limit_field: str = "max_model_len", limit: int = 8192) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                        "owned_by": owned_by, limit_field: limit}]}


def completion_chunks(text: str, *, prompt_tokens: int, cached: int, token_ids: bool = False,
                      finish: str = "stop") -> list[dict[str, Any]]:
    """vLLM/SGLang/ds4 /v1/completions stream: one chunk per character, then a usage chunk."""
    chunks = []
    data = encode(text)
    for i, char in enumerate(text):
        choice: dict[str, Any] = {"index": 0, "text": char, "logprobs": None,
                                  "finish_reason": finish if i == len(text) - 1 else None}
        if token_ids:
            choice["token_ids"] = encode(char)
        chunks.append({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
                       "choices": [choice], "usage": None})
    chunks.append({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m", "choices": [],
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(data),
                             "total_tokens": prompt_tokens + len(data),
                             "prompt_tokens_details": {"cached_tokens": cached}}})
    return chunks


def chat_chunks(deltas: list[dict[str, Any]], *, prompt_tokens: int, cached: int, completion: int,
                finish: str = "stop") -> list[dict[str, Any]]:
    chunks = [{"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    for i, delta in enumerate(deltas):
        chunks.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [{"index": 0, "delta": delta,
                                    "finish_reason": finish if i == len(deltas) - 1 else None}]})
    chunks.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                            "total_tokens": prompt_tokens + completion,
                                            "prompt_tokens_details": {"cached_tokens": cached}}})
    return chunks
