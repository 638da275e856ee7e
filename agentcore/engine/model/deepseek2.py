"""The deepseek2 architecture: hyperparameters, tensor shapes and forward pass.

deepseek2 is the GGUF architecture of DeepSeek-V2, V2-Lite, Coder-V2 and the V3 family. Two
things set it apart from llama: multi-head latent attention (MLA) and mixture-of-experts
FFNs after ``leading_dense_block_count`` dense blocks.

Invariants:
- Metadata and tensors are read as llama.cpp reads them (``src/models/deepseek2.cpp``, the
  generic hparams in ``llama-model.cpp``, the YaRN factors in ``llama-context.cpp``), so a file
  llama.cpp runs means the same model here. Both tensor layouts load: the split
  ``attn_k_b``/``attn_v_b`` (``key_length_mla``/``value_length_mla`` present) and the legacy
  ``attn_kv_b``, which is split into the same two per-head matrices at load.
- The live KV holds one latent row per token and layer: the normalised compressed KV
  (``kv_lora_rank`` values) then the rotated shared rope key (``rope.dimension_count``). The
  key/value up-projections are absorbed into the query and the output, so attention never
  decompresses the cache (prefill and decode run the same absorbed path).
- RoPE rotates adjacent pairs (llama.cpp's NORM mode) of the rope dims only. The YaRN
  magnitude factor that ggml folds into the rotated values is applied to the rope term of
  the scores instead (same scores; the cache holds pure rotations).
- Expert routing runs on the host in float32, identically on every backend: experts are
  selected on probabilities plus ``exp_probs_b`` (within the best groups when group-limited),
  weighted by the unbiased probabilities, then normalised and scaled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentcore.engine.model.gguf import (
    MAX_CONTEXT,
    MAX_DIM,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_VOCAB,
    GGUFModel,
    ModelSpec,
    WeightTensor,
)
from agentcore.engine.model.transformer import ChunkedForward, yarn_inv_freq
from agentcore.errors import ModelFormatError

__all__ = ["DeepSeek2", "MLAParams", "MoEParams", "build_spec", "expected_shapes", "route"]

Array = Any  # a backend array

# llama.cpp's enum llama_expert_gating_func_type (0 = unset: softmax, V2/V2.5 files)
_GATING = {0: "softmax", 1: "softmax", 2: "sigmoid"}
_YARN_BETA_FAST, _YARN_BETA_SLOW = 32.0, 1.0  # llama.cpp's defaults; deepseek2 reads no keys
_MIN_WEIGHT_SUM = 6.103515625e-5  # llama.cpp clamps the routing weight sum to the fp16 minimum


@dataclass(frozen=True)
class MLAParams:
    """Multi-head latent attention: per-head sizes and the score scales."""

    q_lora_rank: int  # 0: one attn_q matrix (V2-Lite); else attn_q_a -> norm -> attn_q_b
    kv_lora_rank: int
    qk_rope_dim: int  # rope.dimension_count
    qk_nope_dim: int
    v_head_dim: int
    split_kv_b: bool  # attn_k_b/attn_v_b in the file (else the legacy attn_kv_b)
    kq_scale: float  # mscale^2 / sqrt(qk_nope_dim + qk_rope_dim)
    rope_scale: float  # extra factor on the rope term of the scores (YaRN magnitude squared)

    @property
    def latent_dim(self) -> int:
        """Values cached per token and layer."""
        return self.kv_lora_rank + self.qk_rope_dim


@dataclass(frozen=True)
class MoEParams:
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_ff_exp: int
    n_dense_lead: int  # blocks [0, n_dense_lead) have a dense FFN
    gating: str  # "softmax" | "sigmoid"
    weights_norm: bool
    weights_scale: float  # 0 or 1: no scaling
    n_groups: int  # > 1: group-limited routing
    n_group_used: int
    selection_bias: bool  # blk.N.exp_probs_b.bias present
    fused_gate_up: bool  # blk.N.ffn_gate_up_exps instead of ffn_gate_exps + ffn_up_exps


# ---------------------------------------------------------------------------- spec


def build_spec(
    path: Path, md: dict[str, Any], tensors: dict[str, WeightTensor], key: Callable[..., Any]
) -> ModelSpec:
    """The ModelSpec of a deepseek2 file; ``key`` is gguf's validated metadata getter."""

    def fail(what: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: {what}; the file is corrupt or not a deepseek2 model")

    def optional_int(name: str, default: int = 0) -> int:
        v = md.get(f"deepseek2.{name}", default)
        if isinstance(v, list) and v and all(x == v[0] for x in v):
            v = v[0]  # per-layer arrays (get_key_or_arr) with one value
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_DIM:
            raise fail(f"metadata 'deepseek2.{name}'={v!r} must be an integer in [0, {MAX_DIM}]")
        return v

    n_layers = key("block_count", int, limit=MAX_LAYERS)
    n_embd = key("embedding_length", int, limit=MAX_DIM)
    n_heads = key("attention.head_count", int, limit=MAX_HEADS)
    n_kv_heads = key("attention.head_count_kv", int, n_heads, MAX_HEADS)
    key_length = key("attention.key_length", int, n_embd // n_heads or None, MAX_DIM)
    value_length = key("attention.value_length", int, key_length, MAX_DIM)
    n_rot = key("rope.dimension_count", int, key_length, MAX_HEAD_DIM)
    kv_lora = key("attention.kv_lora_rank", int, limit=MAX_DIM)
    q_lora = optional_int("attention.q_lora_rank")
    k_mla, v_mla = (
        optional_int("attention.key_length_mla"),
        optional_int("attention.value_length_mla"),
    )
    if bool(k_mla) != bool(v_mla):
        raise fail("key_length_mla and value_length_mla must be both present or both absent")
    split = bool(k_mla)
    if split:
        head_k, head_v = k_mla, v_mla
        if (key_length, value_length, n_kv_heads) != (kv_lora + n_rot, kv_lora, 1):
            raise fail(
                f"the split MLA layout needs key_length={kv_lora + n_rot}, value_length="
                f"{kv_lora}, head_count_kv=1; the file has {key_length}, {value_length}, "
                f"{n_kv_heads}"
            )
    else:
        head_k, head_v = key_length, value_length
    if head_k - n_rot < 1:
        raise fail(f"head size {head_k} leaves no non-rope dims beside {n_rot} rope dims")

    moe = _moe_params(path, md, tensors, key, optional_int, n_layers)
    n_ff = key("feed_forward_length", int, None if moe.n_dense_lead else 1, MAX_DIM)
    context_length = key("context_length", int, limit=MAX_CONTEXT)
    rope_base = key("rope.freq_base", float, 10000.0)
    rope_scaling, kq_scale, rope_scale = _rope(path, md, context_length, head_k)

    embd = tensors.get("token_embd.weight")
    if embd is None or len(embd.shape) != 2:
        raise ModelFormatError(f"{path}: tensor 'token_embd.weight' is missing or not a matrix")
    if embd.shape[0] > MAX_VOCAB:
        raise ModelFormatError(f"{path}: vocabulary of {embd.shape[0]} exceeds {MAX_VOCAB}")
    mla = MLAParams(
        q_lora_rank=q_lora,
        kv_lora_rank=kv_lora,
        qk_rope_dim=n_rot,
        qk_nope_dim=head_k - n_rot,
        v_head_dim=head_v,
        split_kv_b=split,
        kq_scale=kq_scale,
        rope_scale=rope_scale,
    )
    return ModelSpec(
        arch="deepseek2",
        name=str(md.get("general.name", path.stem)),
        n_layers=n_layers,
        n_embd=n_embd,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_k,
        n_ff=n_ff,
        vocab_size=embd.shape[0],
        context_length=context_length,
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        rms_eps=key("attention.layer_norm_rms_epsilon", float, limit=1.0),
        rope_neox=False,
        qkv_bias=False,
        qk_norm=False,
        tied_embeddings="output.weight" not in tensors,
        mla=mla,
        moe=moe,
    )


def _moe_params(
    path: Path,
    md: dict[str, Any],
    tensors: dict[str, WeightTensor],
    key: Callable[..., Any],
    optional_int: Callable[..., int],
    n_layers: int,
) -> MoEParams:
    n_expert = key("expert_count", int, limit=1 << 16)
    n_used = optional_int("expert_used_count")
    n_groups, n_group_used = (
        optional_int("expert_group_count"),
        optional_int("expert_group_used_count"),
    )
    n_dense = optional_int("leading_dense_block_count")
    n_ff_exp = optional_int("expert_feed_forward_length")
    problems = []
    if not n_ff_exp:
        problems.append("expert_feed_forward_length is missing or 0")
    if not 0 < n_used <= n_expert:
        problems.append(f"expert_used_count={n_used} must be in [1, expert_count={n_expert}]")
    if n_groups > 1 and (n_expert % n_groups or not 0 < n_group_used < n_groups):
        problems.append(
            f"expert_group_count={n_groups} must divide expert_count={n_expert} and "
            f"expert_group_used_count={n_group_used} must be in [1, {n_groups})"
        )
    if n_dense > n_layers:
        problems.append(f"leading_dense_block_count={n_dense} exceeds block_count={n_layers}")
    if problems:
        raise ModelFormatError(f"{path}: {'; '.join(problems)}")
    raw_gating = md.get("deepseek2.expert_gating_func", 0)
    if (
        raw_gating == 0
        and n_layers in (47, 48)
        and len(md.get("tokenizer.ggml.tokens", ())) == 154880
    ):
        raw_gating = 2  # llama.cpp: GLM 4.7 Lite files predate the key and use sigmoid
    if raw_gating not in _GATING:
        raise ModelFormatError(
            f"{path}: expert_gating_func={raw_gating!r} is not supported; supported: "
            "1 (softmax), 2 (sigmoid)"
        )
    scale = md.get("deepseek2.expert_weights_scale", 0.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ModelFormatError(f"{path}: expert_weights_scale={scale!r} must be a number")
    first_moe = f"blk.{n_dense}."
    return MoEParams(
        n_expert=n_expert,
        n_expert_used=n_used,
        n_expert_shared=optional_int("expert_shared_count"),
        n_ff_exp=n_ff_exp,
        n_dense_lead=n_dense,
        gating=_GATING[raw_gating],
        weights_norm=bool(md.get("deepseek2.expert_weights_norm", False)),
        weights_scale=float(scale),
        n_groups=n_groups,
        n_group_used=n_group_used,
        selection_bias=first_moe + "exp_probs_b.bias" in tensors,
        fused_gate_up=first_moe + "ffn_gate_up_exps.weight" in tensors,
    )


def _rope(
    path: Path, md: dict[str, Any], context_length: int, head_k: int
) -> tuple[dict | None, float, float]:
    """(rope_scaling, kq_scale, rope_scale) exactly as llama.cpp derives them.

    ggml's rope multiplies the rotated dims by ``attn_factor * (1 + 0.1 ln s)`` under YaRN;
    llama-context.cpp picks ``attn_factor`` to cancel that unless ``yarn_log_multiplier`` is
    absent, and deepseek2's graph puts ``mscale^2`` into the softmax scale.
    """
    kind = md.get("deepseek2.rope.scaling.type", "linear")
    factor = md.get("deepseek2.rope.scaling.factor", md.get("deepseek2.rope.scale_linear", 0.0))
    if kind not in ("none", "linear", "yarn") or not isinstance(factor, int | float) or factor < 0:
        raise ModelFormatError(
            f"{path}: rope scaling {kind!r} (factor {factor!r}) is not supported for deepseek2; "
            "supported: none, linear, yarn"
        )
    s = 1.0 if kind == "none" or factor in (0, 1) else float(factor)
    log_mul = md.get("deepseek2.rope.scaling.yarn_log_multiplier")
    log_mul = 0.0 if log_mul is None else float(log_mul) / 0.1  # undo the converter's 0.1
    rope_attn = float(md.get("deepseek2.rope.scaling.attn_factor", 1.0))
    ln_s = math.log(s)
    yarn = kind == "yarn"
    attn_factor = 1.0
    if yarn:
        attn_factor = (1.0 if log_mul else 1.0 + 0.1 * ln_s) / (1.0 + 0.1 * ln_s)
    attn_factor *= rope_attn
    rope_magnitude = attn_factor * (1.0 + 0.1 * ln_s if yarn else 1.0)
    mscale = attn_factor * (1.0 + 0.1 * ln_s) * (1.0 + 0.1 * log_mul * ln_s)
    kq_scale = mscale * mscale / math.sqrt(head_k)
    scaling = None
    if s != 1.0:
        orig = md.get("deepseek2.rope.scaling.original_context_length", context_length)
        scaling = {"type": kind, "factor": s, "original_context_length": int(orig)}
        if yarn:
            scaling |= {"beta_fast": _YARN_BETA_FAST, "beta_slow": _YARN_BETA_SLOW}
    return scaling, kq_scale, rope_magnitude * rope_magnitude


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every required tensor's numpy-order shape (GGUF ne reversed)."""
    m, f = spec.mla, spec.moe
    assert m is not None and f is not None
    e, h = spec.n_embd, spec.n_heads
    qk = m.qk_nope_dim + m.qk_rope_dim
    want: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (spec.vocab_size, e),
        "output_norm.weight": (e,),
    }
    if not spec.tied_embeddings:
        want["output.weight"] = (spec.vocab_size, e)
    for i in range(spec.n_layers):
        b = f"blk.{i}."
        want |= {
            b + "attn_norm.weight": (e,),
            b + "attn_kv_a_norm.weight": (m.kv_lora_rank,),
            b + "attn_kv_a_mqa.weight": (m.latent_dim, e),
            b + "attn_output.weight": (e, h * m.v_head_dim),
            b + "ffn_norm.weight": (e,),
        }
        if m.q_lora_rank:
            want |= {
                b + "attn_q_a_norm.weight": (m.q_lora_rank,),
                b + "attn_q_a.weight": (m.q_lora_rank, e),
                b + "attn_q_b.weight": (h * qk, m.q_lora_rank),
            }
        else:
            want[b + "attn_q.weight"] = (h * qk, e)
        if m.split_kv_b:
            want[b + "attn_k_b.weight"] = (h, m.kv_lora_rank, m.qk_nope_dim)
            want[b + "attn_v_b.weight"] = (h, m.v_head_dim, m.kv_lora_rank)
        else:
            want[b + "attn_kv_b.weight"] = (h * (m.qk_nope_dim + m.v_head_dim), m.kv_lora_rank)
        if i < f.n_dense_lead:
            want |= {
                b + "ffn_gate.weight": (spec.n_ff, e),
                b + "ffn_up.weight": (spec.n_ff, e),
                b + "ffn_down.weight": (e, spec.n_ff),
            }
            continue
        ne, ff = f.n_expert, f.n_ff_exp
        want[b + "ffn_gate_inp.weight"] = (ne, e)
        if f.selection_bias:
            want[b + "exp_probs_b.bias"] = (ne,)
        if f.fused_gate_up:
            want[b + "ffn_gate_up_exps.weight"] = (ne, 2 * ff, e)
        else:
            want[b + "ffn_gate_exps.weight"] = (ne, ff, e)
            want[b + "ffn_up_exps.weight"] = (ne, ff, e)
        want[b + "ffn_down_exps.weight"] = (ne, e, ff)
        if f.n_expert_shared:
            sh = ff * f.n_expert_shared
            want |= {
                b + "ffn_gate_shexp.weight": (sh, e),
                b + "ffn_up_shexp.weight": (sh, e),
                b + "ffn_down_shexp.weight": (e, sh),
            }
    return want


def rope_inv_freq(spec: ModelSpec) -> np.ndarray:
    """Inverse frequencies of the rope dims with linear or YaRN scaling folded in (float64).

    YaRN's angle is ``pos * inv_freq * (fs * (1 - ramp) + ramp)`` per frequency (ggml's
    rope_yarn with ext_factor 1), so it is a plain rotary table with scaled frequencies.
    """
    assert spec.mla is not None
    n = spec.mla.qk_rope_dim
    inv_freq = spec.rope_base ** (-np.arange(0, n, 2, dtype=np.float64) / n)
    scaling = spec.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling["type"] == "linear":
        return inv_freq * (1.0 / scaling["factor"])
    return yarn_inv_freq(inv_freq, scaling, spec.rope_base)


# ---------------------------------------------------------------------------- routing


def route(
    logits: np.ndarray, bias: np.ndarray | None, moe: MoEParams
) -> tuple[np.ndarray, np.ndarray]:
    """Router logits (T, n_expert) -> (expert ids, weights), each (T, n_expert_used)."""
    if moe.gating == "softmax":
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
    else:
        probs = 1.0 / (1.0 + np.exp(-logits))
    select = probs if bias is None else probs + bias
    if moe.n_groups > 1:
        t = len(select)
        groups = select.reshape(t, moe.n_groups, -1)
        group_score = np.sort(groups, axis=-1)[..., -2:].sum(axis=-1)  # top two per group
        best = np.argsort(-group_score, axis=-1, kind="stable")[:, : moe.n_group_used]
        keep = np.zeros((t, moe.n_groups), bool)
        np.put_along_axis(keep, best, True, axis=-1)
        select = np.where(keep[..., None], groups, -np.inf).reshape(t, -1)
    ids = np.argsort(-select, axis=-1, kind="stable")[:, : moe.n_expert_used]
    weights = np.take_along_axis(probs, ids, axis=-1)
    if moe.weights_norm:
        weights /= np.maximum(weights.sum(axis=-1, keepdims=True), _MIN_WEIGHT_SUM)
    if moe.weights_scale not in (0.0, 1.0):
        weights *= moe.weights_scale
    return ids, weights.astype(np.float32)


# ---------------------------------------------------------------------------- forward


@dataclass
class _Layer:
    attn_norm: Any
    q_kv_a: Any  # attn_q (or attn_q_a) fused with attn_kv_a_mqa: one matmul of the normed x
    q_a_norm: Any
    q_b: Any
    kv_a_norm: Any
    k_b: Any  # per head (kv_lora_rank, qk_nope): absorbs the key up-projection into q
    v_b: Any  # per head (v_head, kv_lora_rank): decompresses the attention output
    out: Any
    ffn_norm: Any
    gate_up: Any = None  # dense FFN, or the shared experts of an MoE block
    down: Any = None
    router: Any = None
    bias: np.ndarray | None = None  # exp_probs_b, host float32
    experts: Any = None


class DeepSeek2(ChunkedForward):
    """A deepseek2 model over an ops backend; same interface as ``Transformer``.

    Beyond the llama ops it needs ``prepare_heads``/``head_matmul`` (per-head matrices),
    ``latent_attention`` and ``prepare_experts``/``moe``; ``ops.new_kv`` must return a
    latent cache for a spec with ``mla`` set.
    """

    def __init__(self, model: GGUFModel, ops: Any, *, chunk: int | None = None) -> None:
        spec = model.spec
        missing = [
            op
            for op in ("prepare_heads", "head_matmul", "latent_attention", "prepare_experts", "moe")
            if not hasattr(ops, op)
        ]
        if spec.mla is None or spec.moe is None:
            raise ValueError(f"DeepSeek2 needs a deepseek2 model, not {spec.arch!r}")
        if missing:
            raise NotImplementedError(
                f"the {type(ops).__name__} backend cannot run deepseek2 yet (no "
                f"{', '.join(missing)}); use device='cpu'"
            )
        self._prepare_ends(model, ops, chunk)
        self.rope = ops.prepare_rope(rope_inv_freq(spec), False, spec.context_length)
        self.layers = [self._layer(model, i) for i in range(spec.n_layers)]

    def _layer(self, model: GGUFModel, i: int) -> _Layer:
        ops, t, m, f = self.ops, model.tensor, self.spec.mla, self.spec.moe
        p = f"blk.{i}."
        h, nope = self.spec.n_heads, m.qk_nope_dim
        if m.split_kv_b:
            k_b = t(p + "attn_k_b.weight").dequantize()
            v_b = t(p + "attn_v_b.weight").dequantize()
        else:
            kv_b = t(p + "attn_kv_b.weight").dequantize().reshape(h, nope + m.v_head_dim, -1)
            k_b = np.ascontiguousarray(kv_b[:, :nope].transpose(0, 2, 1))
            v_b = np.ascontiguousarray(kv_b[:, nope:])
        q_in = t(p + ("attn_q_a.weight" if m.q_lora_rank else "attn_q.weight"))
        layer = _Layer(
            attn_norm=ops.prepare_vector(t(p + "attn_norm.weight")),
            q_kv_a=ops.prepare_linear([q_in, t(p + "attn_kv_a_mqa.weight")]),
            q_a_norm=ops.prepare_vector(t(p + "attn_q_a_norm.weight")) if m.q_lora_rank else None,
            q_b=ops.prepare_linear([t(p + "attn_q_b.weight")]) if m.q_lora_rank else None,
            kv_a_norm=ops.prepare_vector(t(p + "attn_kv_a_norm.weight")),
            k_b=ops.prepare_heads(k_b),
            v_b=ops.prepare_heads(v_b),
            out=ops.prepare_linear([t(p + "attn_output.weight")]),
            ffn_norm=ops.prepare_vector(t(p + "ffn_norm.weight")),
        )
        if i < f.n_dense_lead:
            layer.gate_up = ops.prepare_linear([t(p + "ffn_gate.weight"), t(p + "ffn_up.weight")])
            layer.down = ops.prepare_linear([t(p + "ffn_down.weight")])
            return layer
        layer.router = ops.prepare_linear([t(p + "ffn_gate_inp.weight")])
        if f.selection_bias:
            layer.bias = t(p + "exp_probs_b.bias").dequantize()
        names = ("ffn_gate_up_exps",) if f.fused_gate_up else ("ffn_gate_exps", "ffn_up_exps")
        layer.experts = ops.prepare_experts(
            [t(p + n + ".weight") for n in names], t(p + "ffn_down_exps.weight")
        )
        if f.n_expert_shared:
            layer.gate_up = ops.prepare_linear(
                [t(p + "ffn_gate_shexp.weight"), t(p + "ffn_up_shexp.weight")]
            )
            layer.down = ops.prepare_linear([t(p + "ffn_down_shexp.weight")])
        return layer

    def _hidden(self, ids: Sequence[int], pos0: int, kv: Any) -> Array:
        ops, s, m = self.ops, self.spec, self.spec.mla
        t, h, eps = len(ids), s.n_heads, s.rms_eps
        nope, lora = m.qk_nope_dim, m.kv_lora_rank
        n_q = m.q_lora_rank or h * (nope + m.qk_rope_dim)
        x = ops.embed(self.embedding, ids)
        for layer, b in enumerate(self.layers):
            qkv = ops.matmul(ops.rmsnorm(x, b.attn_norm, eps), b.q_kv_a)
            q = qkv[:, :n_q]
            if m.q_lora_rank:
                q = ops.matmul(ops.rmsnorm(q, b.q_a_norm, eps), b.q_b)
            q = q.reshape(t, h, nope + m.qk_rope_dim)
            latent = ops.rmsnorm(qkv[:, n_q : n_q + lora], b.kv_a_norm, eps)
            k_pe = ops.rope(qkv[:, None, n_q + lora :], pos0, self.rope)
            kv.store(layer, pos0, latent, k_pe[:, 0])
            q_pe = ops.rope(q[:, :, nope:], pos0, self.rope)
            q_abs = ops.head_matmul(q[:, :, :nope], b.k_b)  # (T, H, kv_lora_rank)
            o = ops.latent_attention(q_abs, q_pe, kv, layer, pos0, m.kq_scale, m.rope_scale)
            o = ops.head_matmul(o, b.v_b).reshape(t, h * m.v_head_dim)
            x = ops.add(x, ops.matmul(o, b.out))
            x = ops.add(x, self._ffn(ops.rmsnorm(x, b.ffn_norm, eps), b))
        return x

    def _ffn(self, x: Array, b: _Layer) -> Array:
        ops = self.ops
        shared = None
        if b.down is not None:
            shared = ops.matmul(ops.swiglu(ops.matmul(x, b.gate_up)), b.down)
        if b.experts is None:
            return shared
        ids, weights = route(ops.logits(x, b.router), b.bias, self.spec.moe)
        y = ops.moe(x, b.experts, ids, weights)
        return y if shared is None else ops.add(y, shared)
