"""Synthetic deepseek2 GGUF models: random weights at tiny (or real) shapes.

The files carry the metadata and tensor names llama.cpp's converter writes for DeepSeek-V2,
V2-Lite and V3 (see ``model/deepseek2.py``), so llama.cpp loads them too: they are what the
referee (scripts/make_reference_deepseek2.py) and the deepseek2 tests run on.

Invariants: the same arguments give the same bytes; matrices are F32 unless ``qtype`` names
a block type (then every matrix but the router and the norms uses it, as llama-quantize
does); the vocabulary is the byte-level BPE one of ``synthetic.py`` with DeepSeek's special
tokens and ``tokenizer.ggml.pre = deepseek-v3``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    ExpertGatingFuncType,
    GGMLQuantizationType,
    GGUFWriter,
    RopeScalingType,
)

from agentcore.testing.synthetic import _add_vocabulary, _nbytes, _random_tensor

__all__ = ["PRESETS", "V2_LITE", "write_synthetic_deepseek2"]

_Q = GGMLQuantizationType

_TINY: dict[str, Any] = {
    "n_layers": 3, "n_dense_lead": 1, "n_embd": 64, "n_heads": 4, "kv_lora_rank": 32,
    "qk_rope_dim": 16, "qk_nope_dim": 32, "v_head_dim": 32, "n_ff": 128, "n_ff_exp": 32,
    "n_expert": 8, "n_expert_used": 2, "n_expert_shared": 1, "vocab": 512,
}  # fmt: skip
_V3_ROUTING: dict[str, Any] = {
    "q_lora_rank": 32, "gating": "sigmoid", "selection_bias": True, "n_groups": 4,
    "n_group_used": 2, "n_expert_used": 3, "weights_norm": True, "weights_scale": 2.5,
}  # fmt: skip
# Real V2-Lite / V3 YaRN settings: factor 40 from 4096 tokens, mscale_all_dim 0.707 or 1.0
# (the converter writes 0.1 * mscale_all_dim as yarn_log_multiplier). Tiny contexts keep the
# YaRN ramp inside the 8 rope frequencies.
_YARN_V2 = {"yarn": {"factor": 40.0, "original_context_length": 256, "log_multiplier": 0.0707}}
_YARN_V3 = {"yarn": {"factor": 40.0, "original_context_length": 256, "log_multiplier": 0.1}}

# name -> keyword arguments of write_synthetic_deepseek2
PRESETS: dict[str, dict[str, Any]] = {
    "v2lite": {**_TINY},
    "v3": {**_TINY, **_V3_ROUTING, **_YARN_V3},
    "yarn": {**_TINY, **_YARN_V2},
    # legacy attn_kv_b; YaRN without yarn_log_multiplier takes llama.cpp's other mscale branch
    "legacy": {
        **_TINY,
        "split_kv_b": False,
        "q_lora_rank": 32,
        "yarn": {"factor": 4.0, "original_context_length": 256},
    },
    "v3_q8_0": {**_TINY, **_V3_ROUTING, **_YARN_V3, "qtype": "Q8_0"},
}

# DeepSeek-V2-Lite's real shape (15.7B parameters, 2.4B active): the GPU benchmark's file.
V2_LITE: dict[str, Any] = {
    "n_layers": 27, "n_dense_lead": 1, "n_embd": 2048, "n_heads": 16, "q_lora_rank": 0,
    "kv_lora_rank": 512, "qk_rope_dim": 64, "qk_nope_dim": 128, "v_head_dim": 128,
    "n_ff": 10944, "n_ff_exp": 1408, "n_expert": 64, "n_expert_used": 6, "n_expert_shared": 2,
    "gating": "softmax", "weights_norm": False, "weights_scale": 1.0, "vocab": 102400,
    "yarn": {"factor": 40.0, "original_context_length": 4096, "log_multiplier": 0.0707},
    "context_length": 163840,
}  # fmt: skip


def write_synthetic_deepseek2(
    path: str | Path,
    *,
    n_layers: int = 3,
    n_dense_lead: int = 1,
    n_embd: int = 64,
    n_heads: int = 4,
    q_lora_rank: int = 0,
    kv_lora_rank: int = 32,
    qk_rope_dim: int = 16,
    qk_nope_dim: int = 32,
    v_head_dim: int = 32,
    n_ff: int = 128,
    n_ff_exp: int = 32,
    n_expert: int = 8,
    n_expert_used: int = 2,
    n_expert_shared: int = 1,
    gating: str = "softmax",
    selection_bias: bool = False,
    n_groups: int = 0,
    n_group_used: int = 0,
    weights_norm: bool = False,
    weights_scale: float = 1.0,
    split_kv_b: bool = True,
    yarn: dict[str, float] | None = None,
    vocab: int = 512,
    context_length: int = 1024,
    rope_base: float = 10000.0,
    qtype: str = "F32",
    seed: int = 0,
) -> Path:
    """Write a random-weight deepseek2 GGUF and return its path.

    ``yarn``: {"factor", "original_context_length", optional "log_multiplier"} for YaRN rope
    scaling. ``split_kv_b=False`` writes the legacy single ``attn_kv_b`` per layer.
    """
    if gating not in ("softmax", "sigmoid"):
        raise ValueError(f"gating must be softmax or sigmoid, not {gating!r}")
    path = Path(path)
    mat = _Q[qtype]
    w = GGUFWriter(path, "deepseek2")
    w.add_name(f"synthetic-deepseek2-{n_layers}L-{n_embd}d")
    w.add_block_count(n_layers)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_heads)
    qk = qk_nope_dim + qk_rope_dim
    if split_kv_b:  # MLA as MQA: one latent "head" of kv_lora_rank + rope dims
        w.add_head_count_kv(1)
        w.add_key_length(kv_lora_rank + qk_rope_dim)
        w.add_value_length(kv_lora_rank)
        w.add_key_length_mla(qk)
        w.add_value_length_mla(v_head_dim)
    else:
        w.add_head_count_kv(n_heads)
        w.add_key_length(qk)
        w.add_value_length(v_head_dim)
    w.add_rope_dimension_count(qk_rope_dim)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_q_lora_rank(q_lora_rank)
    w.add_kv_lora_rank(kv_lora_rank)
    w.add_leading_dense_block_count(n_dense_lead)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_expert_used)
    w.add_expert_shared_count(n_expert_shared)
    w.add_expert_weights_scale(weights_scale)
    w.add_expert_weights_norm(weights_norm)
    w.add_expert_gating_func(
        ExpertGatingFuncType.SIGMOID if gating == "sigmoid" else ExpertGatingFuncType.SOFTMAX
    )
    if n_groups:
        w.add_expert_group_count(n_groups)
        w.add_expert_group_used_count(n_group_used)
    if yarn:
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(yarn["factor"])
        w.add_rope_scaling_orig_ctx_len(int(yarn["original_context_length"]))
        if "log_multiplier" in yarn:
            w.add_rope_scaling_yarn_log_mul(yarn["log_multiplier"])
    _add_vocabulary(w, vocab, "deepseek")

    dims = {
        "e": n_embd, "h": n_heads, "ql": q_lora_rank, "kvl": kv_lora_rank, "rope": qk_rope_dim,
        "nope": qk_nope_dim, "v": v_head_dim, "ff": n_ff, "ffe": n_ff_exp, "ne": n_expert,
        "sh": n_expert_shared, "vocab": vocab,
    }  # fmt: skip
    plan = list(_tensor_plan(n_layers, n_dense_lead, split_kv_b, selection_bias, dims))
    types = [_Q.F32 if role in ("norm", "bias", "router") else _row_type(mat, shape) for _, role, shape in plan]
    for (name, _, shape), qt in zip(plan, types, strict=True):
        w.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(name, shape, qt), qt)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for index, ((_, role, shape), qt) in enumerate(zip(plan, types, strict=True)):
        rng = np.random.default_rng([seed, index])
        if role == "bias":  # exp_probs_b: large enough to change which experts win
            w.write_tensor_data((0.3 * rng.standard_normal(shape)).astype(np.float32))
        else:
            w.write_tensor_data(
                _random_tensor(rng, "norm" if role == "norm" else "matrix", shape, qt)
            )
    w.close()
    return path


def _row_type(qt: GGMLQuantizationType, shape: tuple[int, ...]) -> GGMLQuantizationType:
    """``qt``, or Q8_0 for rows its blocks do not divide (V2-Lite's 1408-wide expert and
    128-wide k_b rows under a K-quant), as llama-quantize falls back to another type."""
    return qt if shape[-1] % GGML_QUANT_SIZES[qt][0] == 0 else _Q.Q8_0


def _tensor_plan(
    n_layers: int, n_dense: int, split: bool, bias: bool, d: dict[str, int]
) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(name, role, numpy shape) of every tensor, in file order."""
    e, h = d["e"], d["h"]
    qk = d["nope"] + d["rope"]
    yield "token_embd.weight", "matrix", (d["vocab"], e)
    yield "output_norm.weight", "norm", (e,)
    yield "output.weight", "matrix", (d["vocab"], e)
    for i in range(n_layers):
        b = f"blk.{i}."
        yield b + "attn_norm.weight", "norm", (e,)
        if d["ql"]:
            yield b + "attn_q_a.weight", "matrix", (d["ql"], e)
            yield b + "attn_q_a_norm.weight", "norm", (d["ql"],)
            yield b + "attn_q_b.weight", "matrix", (h * qk, d["ql"])
        else:
            yield b + "attn_q.weight", "matrix", (h * qk, e)
        yield b + "attn_kv_a_mqa.weight", "matrix", (d["kvl"] + d["rope"], e)
        yield b + "attn_kv_a_norm.weight", "norm", (d["kvl"],)
        if split:
            yield b + "attn_k_b.weight", "matrix", (h, d["kvl"], d["nope"])
            yield b + "attn_v_b.weight", "matrix", (h, d["v"], d["kvl"])
        else:
            yield b + "attn_kv_b.weight", "matrix", (h * (d["nope"] + d["v"]), d["kvl"])
        yield b + "attn_output.weight", "matrix", (e, h * d["v"])
        yield b + "ffn_norm.weight", "norm", (e,)
        if i < n_dense:
            yield b + "ffn_gate.weight", "matrix", (d["ff"], e)
            yield b + "ffn_up.weight", "matrix", (d["ff"], e)
            yield b + "ffn_down.weight", "matrix", (e, d["ff"])
            continue
        yield b + "ffn_gate_inp.weight", "router", (d["ne"], e)
        if bias:
            yield b + "exp_probs_b.bias", "bias", (d["ne"],)
        yield b + "ffn_gate_exps.weight", "matrix", (d["ne"], d["ffe"], e)
        yield b + "ffn_up_exps.weight", "matrix", (d["ne"], d["ffe"], e)
        yield b + "ffn_down_exps.weight", "matrix", (d["ne"], e, d["ffe"])
        if d["sh"]:
            sh = d["ffe"] * d["sh"]
            yield b + "ffn_gate_shexp.weight", "matrix", (sh, e)
            yield b + "ffn_up_shexp.weight", "matrix", (sh, e)
            yield b + "ffn_down_shexp.weight", "matrix", (e, sh)
