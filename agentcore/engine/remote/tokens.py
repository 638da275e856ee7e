"""A tokenizer that asks the server (llama.cpp ``/tokenize``), cached per text segment.

It offers what the chat formats need from ``Tokenizer`` (``encode``, ``special``,
``special_ids``, ``bos_id``/``add_bos``, ``eot_ids``, ``decode``), so a prompt rendered with
it is the same per-message token segments a GGUF tokenizer would give. The chat formats
encode each message's text on its own, so caching by text makes ``count_tokens`` of a
growing conversation cost one request per new message, not one per message per turn.

Invariant: like ``Tokenizer.encode``, ``encode`` treats control-token text as plain text
(``parse_special: false``), so message content can never inject a turn marker.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping

from agentcore.engine.remote.transport import Transport
from agentcore.errors import ServerProtocolError, TokenizerError

__all__ = ["ServerTokenizer"]


class _SpecialIds(Mapping[str, int]):
    """Special-token ids looked up on the server on first use."""

    def __init__(self, tokenizer: ServerTokenizer) -> None:
        self._tokenizer = tokenizer
        self._known: dict[str, int | None] = {}

    def __getitem__(self, text: str) -> int:
        if text not in self._known:
            ids = self._tokenizer._tokenize(text, parse_special=True)
            self._known[text] = ids[0] if len(ids) == 1 else None
        tid = self._known[text]
        if tid is None:
            raise KeyError(text)
        return tid

    def __iter__(self) -> Iterator[str]:
        return (t for t, i in self._known.items() if i is not None)

    def __len__(self) -> int:
        return sum(1 for i in self._known.values() if i is not None)

    def __contains__(self, text: object) -> bool:
        try:
            self[str(text)]
        except KeyError:
            return False
        return True


class ServerTokenizer:
    """Tokenizes through the server's ``/tokenize`` and ``/detokenize`` (see module docstring)."""

    def __init__(self, transport: Transport, *, cache_size: int = 65536) -> None:
        self.transport = transport
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._cache_size = cache_size
        self.requests = 0
        self.special_ids: Mapping[str, int] = _SpecialIds(self)
        with_bos = self._tokenize("", parse_special=True, add_special=True)
        self.bos_id: int | None = with_bos[0] if with_bos else None
        self.add_bos = bool(with_bos)
        # The chat formats add their own end-of-turn token to the stop set.
        self.eot_ids: frozenset[int] = frozenset()

    def _tokenize(self, text: str, *, parse_special: bool, add_special: bool = False) -> list[int]:
        self.requests += 1
        body = {"content": text, "add_special": add_special, "parse_special": parse_special}
        data = self.transport.request("POST", "/tokenize", json_body=body)
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ServerProtocolError(
                f"{self.transport.base_url}/tokenize answered without a token list; give "
                "RemoteEngine(gguf=...) to tokenize locally"
            )
        return tokens

    def encode(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._tokenize(text, parse_special=False)
            self._cache[text] = ids
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(text)
        return list(ids)

    def special(self, text: str) -> int:
        try:
            return self.special_ids[text]
        except KeyError:
            raise TokenizerError(
                f"the server's vocabulary has no special token {text!r}; this chat format "
                "needs it (pick another chat_format=)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        data = self.transport.request("POST", "/detokenize", json_body={"tokens": list(ids)})
        content = data.get("content") if isinstance(data, dict) else None
        if not isinstance(content, str):
            raise ServerProtocolError(f"{self.transport.base_url}/detokenize gave no content")
        return content
