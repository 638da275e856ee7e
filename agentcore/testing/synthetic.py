"""Synthetic GGUF models: random weights at real shapes, with a real byte-level vocabulary.

They serve speed benchmarks (an 8B-shaped file without downloading 5 GB) and fast tests of
the whole engine on every supported architecture. Quantized tensors are written as
*calibrated random blocks*: random quant bytes, and fp16 scales chosen per block so that the
dequantized weights have mean ~0 and std ~1/sqrt(fan_in) (activations stay finite). This is
one code path for every block type, K-quants included (gguf-py cannot quantize those), and
~30x faster than quantizing random floats. Scales vary per block (x0.5..1.5) so a kernel
that reads the wrong block's scale is caught by comparison with the reference dequantizer.

Invariants: the same arguments give the same bytes; files are written one tensor at a time
(peak memory ~ the largest tensor); the vocabulary is a valid GPT-2 byte-level BPE vocab
(all 256 byte tokens, merges whose parts exist, ChatML or Llama 3 special tokens).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, RopeScalingType, TokenType
from gguf import quants as gguf_quants

from agentcore.engine.model.tokenizer import bytes_to_unicode

__all__ = ["LLAMA3_8B", "SMOLLM2_135M", "TINY", "write_synthetic_gguf"]

_Q = GGMLQuantizationType

# Presets are keyword arguments of write_synthetic_gguf; override with {**PRESET, "seed": 1}.
SMOLLM2_135M: dict[str, Any] = {
    "arch": "llama", "n_layers": 30, "n_embd": 576, "n_heads": 9, "n_kv_heads": 3,
    "n_ff": 1536, "vocab": 49152, "context_length": 8192, "rope_base": 100000.0, "tied": True,
    "qtype": {"default": "Q4_1", "token_embd": "Q8_0"},
}  # fmt: skip
LLAMA3_8B: dict[str, Any] = {
    "arch": "llama", "n_layers": 32, "n_embd": 4096, "n_heads": 32, "n_kv_heads": 8,
    "n_ff": 14336, "vocab": 128256, "context_length": 8192, "rope_base": 500000.0,
    "chat": "llama3", "qtype": {"default": "Q4_K", "output": "Q6_K"},
}  # fmt: skip
_TINY_SHAPE = {"n_layers": 2, "n_embd": 64, "n_heads": 4, "n_kv_heads": 2, "n_ff": 128}
TINY: dict[str, dict[str, Any]] = {
    "llama": {"arch": "llama", **_TINY_SHAPE},
    "qwen2": {"arch": "qwen2", **_TINY_SHAPE},
    "qwen3": {"arch": "qwen3", **_TINY_SHAPE, "head_dim": 32},
}

MATRIX_ROLES = (
    "token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_output",
    "ffn_gate", "ffn_up", "ffn_down",
)  # fmt: skip

# Byte offsets of the fp16 scale fields in one block, with their ratio to the block's
# scale d: the min/dmin fields get the ratio that centres the dequantized values on 0.
_SCALE_FIELDS: dict[GGMLQuantizationType, tuple[tuple[int, float], ...]] = {
    _Q.Q8_0: ((0, 1.0),),
    _Q.Q4_0: ((0, 1.0),),
    _Q.Q5_0: ((0, 1.0),),
    _Q.Q4_1: ((0, 1.0), (2, -7.5)),  # x = d*q + m, q in 0..15
    _Q.Q5_1: ((0, 1.0), (2, -15.5)),  # q in 0..31
    _Q.Q2_K: ((80, 1.0), (82, 1.5)),  # x = d*sc*q - dmin*m, E[q] = 1.5
    _Q.Q3_K: ((108, 1.0),),
    _Q.Q4_K: ((0, 1.0), (2, 7.5)),
    _Q.Q5_K: ((0, 1.0), (2, 15.5)),
    _Q.Q6_K: ((208, 1.0),),
}
_FLOAT_TYPES = (_Q.F32, _Q.F16, _Q.BF16)

_CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
_DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<｜User｜>' + message['content'] }}{% elif message['role'] == 'assistant' %}"
    "{{ '<｜Assistant｜></think>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜></think>' }}{% endif %}"
)
# DeepSeek V3.2: user turns that hand over with </think>, results in <function_results>.
_DEEPSEEK_V32_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<｜User｜>' + message['content'] + '<｜Assistant｜></think>' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% elif message['role'] == 'tool' %}{{ '\n\n<function_results>\n<result>' + message['content'] }}"
    "{{ '</result>\n</function_results>\n\n</think>' }}{% else %}{{ message['content'] }}{% endif %}"
    "{% endfor %}{# <｜DSML｜function_calls> #}"
)

# DeepSeek V3's template is told apart by its own tool-call markers.
_DEEPSEEK_V3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<｜User｜>' + message['content'] }}{% elif message['role'] == 'assistant' %}"
    "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% elif message['role'] == 'tool' %}{{ '<｜tool▁outputs▁begin｜>' + message['content'] }}"
    "{% else %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
    "{# <｜tool▁calls▁begin｜> #}"
)
# chat format -> (control tokens, user-defined tokens, bos, eos, add_bos, pre, template)
_CHAT: dict[str, tuple[tuple[str, ...], tuple[str, ...], str, str, bool, str, str]] = {
    "chatml": (
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), (),
        "<|im_start|>", "<|im_end|>", False, "smollm", _CHATML_TEMPLATE,
    ),
    "llama3": (
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
         "<|eot_id|>"), (),
        "<|begin_of_text|>", "<|eot_id|>", True, "llama-bpe", _LLAMA3_TEMPLATE,
    ),
    "deepseek": (
        ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"),
        ("<think>", "</think>", "｜DSML｜"),
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", True, "deepseek-v3",
        _DEEPSEEK_TEMPLATE,
    ),
    "deepseek-v3.2": (
        ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"),
        ("<think>", "</think>", "｜DSML｜"),
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", True, "deepseek-v3",
        _DEEPSEEK_V32_TEMPLATE,
    ),
    "deepseek-v3": (
        ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"),
        ("<think>", "</think>", "｜DSML｜"),
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", True, "deepseek-v3",
        _DEEPSEEK_V3_TEMPLATE,
    ),
}  # fmt: skip


def write_synthetic_gguf(
    path: str | Path,
    *,
    arch: str = "llama",
    qtype: str | Mapping[str, str] = "Q8_0",
    n_layers: int = 2,
    n_embd: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    n_ff: int = 128,
    vocab: int = 1024,
    context_length: int = 2048,
    head_dim: int | None = None,
    rope_base: float = 10000.0,
    seed: int = 0,
    tokenizer: str | None = "byte-bpe",
    chat: str = "chatml",
    tied: bool = False,
    merges: Sequence[tuple[str, str]] | None = None,
    pre: str | None = None,
    rope_scaling: float | Mapping[str, Any] | None = None,
    rope_freq_factors: bool = False,
) -> Path:
    """Write a random-weight GGUF model and return its path.

    ``qtype`` is one GGML type name for every matrix, or a mapping from role (see
    ``MATRIX_ROLES``; key ``"default"`` for the rest) to a type name. Norms and biases are
    F32. ``tokenizer=None`` omits the vocabulary (for tests of tokenizer errors). ``merges``
    (byte-level BPE merges in rank order, each part a byte token or an earlier merge) replace
    the letter-word merges, and then ``vocab`` is ignored; ``pre`` replaces the chat format's
    pre-tokenizer name. ``rope_scaling``: a linear RoPE scaling factor, or ``{"type": "yarn",
    "factor": F, "original_context_length": N}`` (written as ``rope.scaling.*``);
    ``rope_freq_factors``: a ``rope_freqs.weight`` tensor of per-frequency divisors in [1, 8]
    (how converters write Llama 3.1's scaling).
    """
    if arch not in ("llama", "qwen2", "qwen3"):
        raise ValueError(f"arch must be llama, qwen2 or qwen3, not {arch!r}")
    if chat not in _CHAT:
        raise ValueError(f"chat must be one of {sorted(_CHAT)}, not {chat!r}")
    if tokenizer not in ("byte-bpe", None):
        raise ValueError(f"tokenizer must be 'byte-bpe' or None, not {tokenizer!r}")
    path = Path(path)
    if merges is not None:  # the vocabulary is the specials, the 256 bytes and the merges
        vocab = len(_CHAT[chat][0]) + len(_CHAT[chat][1]) + 256 + len(merges)
    hd = head_dim or n_embd // n_heads
    types = _role_types(qtype)
    writer = GGUFWriter(path, arch)
    writer.add_name(f"synthetic-{arch}-{n_layers}L-{n_embd}d")
    writer.add_block_count(n_layers)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_rope_dimension_count(hd)
    writer.add_rope_freq_base(rope_base)
    writer.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
    if isinstance(rope_scaling, int | float):
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope_scaling))
    elif rope_scaling is not None:
        if rope_scaling.get("type") != "yarn":
            raise ValueError(f"rope_scaling: a linear factor or a yarn mapping, not {rope_scaling!r}")
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope_scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope_scaling["original_context_length"]))
    if tokenizer is not None:
        _add_vocabulary(writer, vocab, chat, merges, pre)

    plan = list(_tensor_plan(arch, n_layers, n_embd, n_heads, n_kv_heads, hd, n_ff, vocab, tied))
    if rope_freq_factors:
        plan.insert(1, ("rope_freqs.weight", "rope_freqs", (hd // 2,)))
    for name, role, shape in plan:
        qt = _F32 if role in _F32_ROLES else types[role]
        writer.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(name, shape, qt), qt)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for index, (name, role, shape) in enumerate(plan):
        rng = np.random.default_rng([seed, index])
        qt = _F32 if role in _F32_ROLES else types[role]
        writer.write_tensor_data(_random_tensor(rng, role, shape, qt))
    writer.close()
    return path


_F32 = _Q.F32
_F32_ROLES = ("norm", "bias", "rope_freqs")  # tensors written F32 whatever qtype says


def _role_types(qtype: str | Mapping[str, str]) -> dict[str, GGMLQuantizationType]:
    spec = {"default": qtype} if isinstance(qtype, str) else dict(qtype)
    unknown = set(spec) - {"default", *MATRIX_ROLES}
    if unknown:
        raise ValueError(f"unknown qtype roles {sorted(unknown)}; roles: {MATRIX_ROLES}")
    out = {}
    for role in MATRIX_ROLES:
        name = spec.get(role, spec.get("default", "Q8_0"))
        try:
            qt = _Q[name]
        except KeyError:
            raise ValueError(f"unknown GGML type {name!r}") from None
        if qt not in _SCALE_FIELDS and qt not in _FLOAT_TYPES:
            supported = sorted(q.name for q in (*_SCALE_FIELDS, *_FLOAT_TYPES))
            raise ValueError(f"synthetic weights support {supported}, not {name}")
        out[role] = qt
    return out


def _tensor_plan(
    arch: str, n_layers: int, e: int, n_heads: int, n_kv: int, hd: int, n_ff: int, vocab: int,
    tied: bool,
) -> Iterator[tuple[str, str, tuple[int, ...]]]:  # fmt: skip
    """(name, role, numpy shape) of every tensor, in file order."""
    q, kv = n_heads * hd, n_kv * hd
    yield "token_embd.weight", "token_embd", (vocab, e)
    yield "output_norm.weight", "norm", (e,)
    if not tied:
        yield "output.weight", "output", (vocab, e)
    for i in range(n_layers):
        b = f"blk.{i}."
        yield b + "attn_norm.weight", "norm", (e,)
        yield b + "attn_q.weight", "attn_q", (q, e)
        yield b + "attn_k.weight", "attn_k", (kv, e)
        yield b + "attn_v.weight", "attn_v", (kv, e)
        if arch == "qwen2":
            yield b + "attn_q.bias", "bias", (q,)
            yield b + "attn_k.bias", "bias", (kv,)
            yield b + "attn_v.bias", "bias", (kv,)
        if arch == "qwen3":
            yield b + "attn_q_norm.weight", "norm", (hd,)
            yield b + "attn_k_norm.weight", "norm", (hd,)
        yield b + "attn_output.weight", "attn_output", (e, q)
        yield b + "ffn_norm.weight", "norm", (e,)
        yield b + "ffn_gate.weight", "ffn_gate", (n_ff, e)
        yield b + "ffn_up.weight", "ffn_up", (n_ff, e)
        yield b + "ffn_down.weight", "ffn_down", (e, n_ff)


def _nbytes(name: str, shape: tuple[int, ...], qt: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[qt]
    if shape[-1] % block:
        raise ValueError(
            f"{name}: rows of {shape[-1]} are not a multiple of the {qt.name} block size "
            f"{block}; choose dimensions divisible by {block} or another qtype"
        )
    return int(np.prod(shape)) // block * type_size


def _random_tensor(
    rng: np.random.Generator, role: str, shape: tuple[int, ...], qt: GGMLQuantizationType
) -> np.ndarray:
    if role == "norm":
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if role == "bias":
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if role == "rope_freqs":
        return rng.uniform(1.0, 8.0, shape).astype(np.float32)
    std = 1.0 / np.sqrt(shape[-1])
    if qt in _FLOAT_TYPES:
        x = (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        if qt == _Q.F16:
            return x.astype(np.float16)
        return x if qt == _Q.F32 else gguf_quants.quantize(x, _Q.BF16)
    block, type_size = GGML_QUANT_SIZES[qt]
    n_blocks = int(np.prod(shape)) // block
    n_bytes = n_blocks * type_size
    raw = rng.bit_generator.random_raw(-(-n_bytes // 8)).view(np.uint8)  # 4x rng.integers
    blocks = raw[:n_bytes].reshape(n_blocks, type_size)
    d = std / _unit_std(qt) * rng.uniform(0.5, 1.5, n_blocks)
    _set_scales(blocks, qt, d)
    return blocks.reshape(*shape[:-1], shape[-1] // block * type_size)


def _set_scales(blocks: np.ndarray, qt: GGMLQuantizationType, d: np.ndarray) -> None:
    for offset, ratio in _SCALE_FIELDS[qt]:
        field = (ratio * d).astype(np.float16).view(np.uint8).reshape(-1, 2)
        blocks[:, offset : offset + 2] = field


@cache
def _unit_std(qt: GGMLQuantizationType) -> float:
    """Std of dequantized random blocks whose scale d is 1 (min fields centred)."""
    type_size = GGML_QUANT_SIZES[qt][1]
    blocks = np.random.default_rng(0).integers(0, 256, (256, type_size), dtype=np.uint8)
    _set_scales(blocks, qt, np.ones(256))
    return float(gguf_quants.dequantize(blocks, qt).std())


# ---------------------------------------------------------------------------- vocabulary

_LETTERS = "etaoinshrdlucmfwypvbgkjqxz"


def _add_vocabulary(writer: GGUFWriter, vocab: int, chat: str,
                    merges: Sequence[tuple[str, str]] | None = None, pre: str | None = None) -> None:  # fmt: skip
    control, user_defined, bos, eos, add_bos, chat_pre, template = _CHAT[chat]
    pre = pre or chat_pre
    specials = control + user_defined
    byte_tokens = list(bytes_to_unicode().values())
    if merges is None:
        n_merges = vocab - len(specials) - len(byte_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab must be at least {len(specials) + 256}, not {vocab}")
        merges = _synthetic_merges(n_merges)
    merges = [(str(a), str(b)) for a, b in merges]  # the caller sized vocab for given merges
    tokens = [*specials, *byte_tokens, *(a + b for a, b in merges)]
    types = [TokenType.CONTROL] * len(control) + [TokenType.USER_DEFINED] * len(user_defined)
    types += [TokenType.NORMAL] * (vocab - len(specials))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges([f"{a} {b}" for a, b in merges])
    writer.add_bos_token_id(tokens.index(bos))
    writer.add_eos_token_id(tokens.index(eos))
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(template)


def _synthetic_merges(n: int) -> list[tuple[str, str]]:
    """n BPE merges building letter words breadth-first: 'Ġx', then 'xy', 'Ġxy', 'xyz', ...

    Every merge's parts exist before it, so ids in merge order are valid BPE ranks.
    """
    merges = [("Ġ", c) for c in _LETTERS][:n]
    words = ["Ġ" + c for c in _LETTERS] + list(_LETTERS)
    while len(merges) < n:
        longer = []
        for w in words:
            for c in _LETTERS:
                if len(merges) == n:
                    return merges
                merges.append((w, c))
                longer.append(w + c)
        words = longer
    return merges
