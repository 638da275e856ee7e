"""GGUF vocabulary -> tiktoken Encoding + special tokens (byte-level BPE only).

A ``tokenizer.ggml.model == "gpt2"`` vocabulary becomes a ``tiktoken.Encoding``: NORMAL
tokens are the mergeable ranks (rank = token id, which is merge order in GPT-2 style
vocabularies), every other token type is a special token, and the pre-tokenizer regex is
chosen by ``tokenizer.ggml.pre``. llama.cpp applies some pre-tokenizers as a *sequence* of
regexes (each splits the pieces the previous one left); tiktoken takes one regex, so those
are folded into one whose alternatives never cross the earlier splits (see ``PRE_TOKENIZERS``;
tests check the folding against the sequence). Known limit of the fold: a run of several
characters no rule matches (control/format characters, deepseek-v3 only) is split per
character where llama.cpp keeps the run whole. Rank = id agrees with llama.cpp's merge-list
BPE on SmolLM2 for the whole reference corpus (tests/data/reference_smollm2.json).

Invariants:
- ``encode`` treats control-token text as plain text (user content can never inject a
  turn marker); USER_DEFINED tokens are matched, as llama.cpp and HF do.
- ``decode_bytes(encode(s)) == s.encode()`` for every string s, except bytes the vocabulary
  has no token for (a few control bytes in SmolLM2): like llama.cpp, encode drops them.
- Every id in [0, vocab_size) decodes; ids outside decode to nothing (a model whose
  embedding table is larger than its vocabulary may sample padding ids).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from functools import cache
from typing import Any

import tiktoken
from gguf import TokenType

from agentcore.engine.model.gguf import GGUFModel
from agentcore.errors import TokenizerError

__all__ = ["PRE_TOKENIZERS", "SUPPORTED_PRE_TOKENIZERS", "Tokenizer", "bytes_to_unicode"]

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GPT-2's regex; llama.cpp's hand-written splitter for it also emits the leftover single
# whitespace before a non-space as its own piece, hence the final \s+.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# smollm / starcoder: llama.cpp isolates every digit first, then runs GPT-2's regex on the
# rest. Folded: digits come first; ' ?\p{N}+' can no longer match; a whitespace run before
# a digit ends at a piece boundary, so the lookahead treats a digit like the end of text.
_SMOLLM = (
    r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+"
    r"|\s+(?![^\s\p{N}])|\s+"
)
# deepseek-v3: llama.cpp splits by \p{N}{1,3}, then by CJK runs, then every piece by a third
# regex. Folded: numbers first; CJK runs as the third regex re-splits them (letters and marks
# apart from punctuation and symbols); the third regex's classes exclude digits and CJK so
# no match crosses those pieces; a final catch-all keeps text llama.cpp leaves unmatched.
_CJK = "[一-龥\u3040-ゟ゠-ヿ]"
_DEEPSEEK3 = (
    r"\p{N}{1,3}"
    rf"|[{_CJK}--[\p{{L}}\p{{P}}\p{{S}}]]?[{_CJK}&&[\p{{L}}\p{{M}}]]+|[{_CJK}&&[\p{{P}}\p{{S}}]]+"
    r"|[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
    rf"|[^\r\n\p{{L}}\p{{P}}\p{{S}}\p{{N}}{_CJK[1:-1]}]?[[\p{{L}}\p{{M}}]--{_CJK}]+"
    rf"| ?[[\p{{P}}\p{{S}}]--{_CJK}]+[\r\n]*"
    rf"|\s*[\r\n]+|\s+(?![^\s\p{{N}}{_CJK[1:-1]}])|\s+|[\s\S]"
)
PRE_TOKENIZERS: dict[str, str] = {
    "gpt-2": _GPT2,
    "gpt2": _GPT2,
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "llama-bpe": _LLAMA3,
    "qwen2": _QWEN2,
    "deepseek-r1-qwen": _QWEN2,
    "smollm": _SMOLLM,
    "starcoder": _SMOLLM,
    "deepseek-v3": _DEEPSEEK3,
}
SUPPORTED_PRE_TOKENIZERS = tuple(PRE_TOKENIZERS)

# Texts of end-of-turn tokens across families (llama.cpp's end-of-generation set).
# Encodings of texts at least this long are kept, up to this many characters in all.
_MEMO_MIN_CHARS = 64
_MEMO_MAX_CHARS = 64 << 20

_EOT_TEXTS = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|end_of_text|>", "<|end|>",
    "<end_of_turn>", "<｜end▁of▁sentence｜>",
)  # fmt: skip


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used in byte-level vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


def _check_vocabulary(tokens: list[Any], types: list[Any], source: str) -> None:
    """Every token a non-empty string, every type an int: tiktoken hangs on an empty token."""
    for i, (text, ttype) in enumerate(zip(tokens, types, strict=True)):
        if not isinstance(text, str):
            raise TokenizerError(
                f"{source}: tokenizer.ggml.tokens[{i}] is {type(text).__name__} {text!r}, not "
                "a string; the vocabulary is corrupt: re-convert the model"
            )
        if isinstance(ttype, bool) or not isinstance(ttype, int):
            raise TokenizerError(
                f"{source}: tokenizer.ggml.token_type[{i}] is {ttype!r}, not an integer; the "
                "vocabulary is corrupt: re-convert the model"
            )
        if not text:
            raise TokenizerError(
                f"{source}: token {i} (type {ttype}) is empty; a vocabulary cannot hold an "
                "empty token: re-convert the model"
            )


class Tokenizer:
    """Byte-level BPE tokenizer of a GGUF model (see the module docstring)."""

    def __init__(self, metadata: dict[str, Any], *, source: str = "<metadata>") -> None:
        model = metadata.get("tokenizer.ggml.model")
        if model is None:
            raise TokenizerError(
                f"{source}: the file has no vocabulary (no tokenizer.ggml.model); use a GGUF "
                "converted with its tokenizer"
            )
        if model != "gpt2":
            raise TokenizerError(
                f"{source}: tokenizer.ggml.model is {model!r}; agentcore supports byte-level "
                "BPE vocabularies ('gpt2': Llama 3, SmolLM2, Qwen, DeepSeek) only"
            )
        pre = metadata.get("tokenizer.ggml.pre")
        if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
            raise TokenizerError(
                f"{source}: pre-tokenizer {pre!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_PRE_TOKENIZERS)}. Re-convert the model with a recent "
                "llama.cpp, or use a model with one of these"
            )
        tokens = metadata.get("tokenizer.ggml.tokens")
        types = metadata.get("tokenizer.ggml.token_type")
        if not isinstance(tokens, list) or not isinstance(types, list) or not tokens:
            raise TokenizerError(f"{source}: the vocabulary (tokenizer.ggml.tokens) is missing")
        if len(types) != len(tokens):
            raise TokenizerError(
                f"{source}: {len(tokens)} tokens but {len(types)} token types; file is corrupt"
            )
        _check_vocabulary(tokens, types, source)
        self.pre = pre
        self.vocab_size = len(tokens)
        self.add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))

        to_byte = {c: b for b, c in bytes_to_unicode().items()}
        ranks: dict[bytes, int] = {}
        self.special_ids: dict[str, int] = {}
        self._bytes: list[bytes] = []
        for i, (text, ttype) in enumerate(zip(tokens, types, strict=True)):
            if ttype == TokenType.NORMAL:
                data = b"".join(bytes([to_byte[c]]) if c in to_byte else c.encode() for c in text)
                ranks.setdefault(data, i)
            else:
                data = text.encode()
                self.special_ids.setdefault(text, i)
            self._bytes.append(data)
        # Some vocabularies (SmolLM2) lack a few rare byte tokens. llama.cpp drops such bytes
        # from the output; tiktoken would panic on them. Give them placeholder ranks past the
        # vocabulary and filter those ids out in encode().
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if len(missing) > 128:
            raise TokenizerError(
                f"{source}: the vocabulary lacks {len(missing)} of the 256 byte tokens; it is "
                "not a byte-level BPE vocabulary"
            )
        for k, b in enumerate(missing):
            ranks[bytes([b])] = self.vocab_size + k
        self._has_placeholders = bool(missing)
        self._encoding = tiktoken.Encoding(
            name=f"gguf-{pre}",
            pat_str=PRE_TOKENIZERS[pre],
            mergeable_ranks=ranks,
            special_tokens=self.special_ids,
        )
        user_defined = {t for t, ty in zip(tokens, types) if ty == TokenType.USER_DEFINED}
        self._user_defined = frozenset(user_defined)
        self.bos_id = self._token_id(metadata, "tokenizer.ggml.bos_token_id")
        self.eos_id = self._token_id(metadata, "tokenizer.ggml.eos_token_id")
        eot = {self.special_ids[t] for t in _EOT_TEXTS if t in self.special_ids}
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                    "tokenizer.ggml.eom_token_id"):  # fmt: skip
            tid = self._token_id(metadata, key)
            if tid is not None:
                eot.add(tid)
        self.eot_ids: frozenset[int] = frozenset(eot)
        self._memo: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._memo_chars = 0
        self._memo_lock = threading.Lock()

    @classmethod
    def from_gguf(cls, model: GGUFModel) -> Tokenizer:
        """Build from a loaded ``GGUFModel``."""
        return cls(model.metadata, source=str(model.path))

    def _token_id(self, metadata: dict[str, Any], key: str) -> int | None:
        tid = metadata.get(key)
        return tid if isinstance(tid, int) and 0 <= tid < self.vocab_size else None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; control-token text is encoded as ordinary text.

        Texts of a message (its content, a tool result) are encoded again every time a
        conversation is rendered; the memo makes that cost a dictionary lookup, so building a
        request costs tokenization of the new messages only.
        """
        if len(text) < _MEMO_MIN_CHARS:
            return self._encode(text)
        with self._memo_lock:
            hit = self._memo.get(text)
            if hit is not None:
                self._memo.move_to_end(text)
                return list(hit)
        ids = self._encode(text)
        with self._memo_lock:
            if text not in self._memo:
                self._memo[text] = tuple(ids)
                self._memo_chars += len(text)
                while self._memo_chars > _MEMO_MAX_CHARS and len(self._memo) > 1:
                    old, _ = self._memo.popitem(last=False)
                    self._memo_chars -= len(old)
        return ids

    def _encode(self, text: str) -> list[int]:
        ids = self._encoding.encode(text, allowed_special=self._user_defined, disallowed_special=())
        return self._drop_placeholders(ids)

    def encode_with_specials(self, text: str) -> list[int]:
        """Token ids of ``text`` where special-token text becomes the special token."""
        return self._drop_placeholders(self._encoding.encode(text, allowed_special="all"))

    def _drop_placeholders(self, ids: list[int]) -> list[int]:
        if self._has_placeholders:
            return [i for i in ids if i < self.vocab_size]
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < self.vocab_size:
            return self._bytes[token_id]
        return b""

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def special(self, text: str) -> int:
        """Id of a special token by its text; TokenizerError if the vocabulary lacks it."""
        try:
            return self.special_ids[text]
        except KeyError:
            raise TokenizerError(
                f"the vocabulary has no special token {text!r}; this chat format needs it"
            ) from None
