"""deepseek2 loader, routing and latent KV cache: behaviours that need no referee."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agentcore.engine.backends.cpu import LatentKV, NumpyOps
from agentcore.engine.kvstore.blocks import read_span, write_span
from agentcore.engine.model import build_model
from agentcore.engine.model.deepseek2 import DeepSeek2, MoEParams, route
from agentcore.engine.model.gguf import load_gguf
from agentcore.errors import ModelFormatError
from agentcore.testing.synthetic_deepseek2 import PRESETS, write_synthetic_deepseek2


def _moe(**kw) -> MoEParams:
    base = MoEParams(
        n_expert=8, n_expert_used=2, n_expert_shared=1, n_ff_exp=32, n_dense_lead=1,
        gating="sigmoid", weights_norm=False, weights_scale=0.0, n_groups=0, n_group_used=0,
        selection_bias=True, fused_gate_up=False,
    )  # fmt: skip
    return replace(base, **kw)


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    path = write_synthetic_deepseek2(tmp_path_factory.mktemp("ds2") / "v3.gguf", **PRESETS["v3"])
    return load_gguf(path)


def test_v3_metadata_is_read_as_llama_cpp_reads_it(v3):
    s = v3.spec
    assert (s.arch, s.n_kv_heads, s.head_dim, s.rope_neox) == ("deepseek2", 1, 48, False)
    assert (s.mla.q_lora_rank, s.mla.kv_lora_rank, s.mla.qk_rope_dim) == (32, 32, 16)
    assert s.mla.split_kv_b and s.mla.latent_dim == 48
    assert s.moe.gating == "sigmoid" and s.moe.selection_bias and s.moe.weights_norm
    assert (s.moe.n_groups, s.moe.n_group_used, s.moe.weights_scale) == (4, 2, 2.5)
    assert s.rope_scaling["type"] == "yarn" and s.rope_scaling["factor"] == 40.0
    # yarn_log_multiplier 0.1 (mscale_all_dim 1): mscale = 1 + 0.1 ln 40 enters the softmax
    assert s.mla.kq_scale == pytest.approx((1 + 0.1 * np.log(40)) ** 2 / np.sqrt(48))
    assert s.mla.rope_scale == pytest.approx(1.0)


def test_legacy_kv_b_layout_loads_with_n_heads_kv_heads(tmp_path):
    spec = load_gguf(write_synthetic_deepseek2(tmp_path / "m.gguf", **PRESETS["legacy"])).spec
    assert not spec.mla.split_kv_b and spec.n_kv_heads == spec.n_heads


def test_only_one_of_the_mla_head_lengths_is_a_format_error(tmp_path, monkeypatch):
    from gguf import GGUFWriter

    monkeypatch.setattr(GGUFWriter, "add_value_length_mla", lambda self, n: None)
    path = write_synthetic_deepseek2(tmp_path / "m.gguf")
    with pytest.raises(ModelFormatError, match="both present or both absent"):
        load_gguf(path)


def test_experts_are_selected_with_the_bias_but_weighted_without_it():
    logits = np.array([[2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0]], np.float32)
    bias = np.array([0, 0, 0, 0, 0, 0, 0, 10.0], np.float32)
    ids, weights = route(logits, bias, _moe())
    assert sorted(ids[0].tolist()) == [0, 7]
    sigmoid = 1 / (1 + np.exp(-logits[0]))
    assert weights[0].tolist() == pytest.approx([sigmoid[7], sigmoid[0]])


def test_routing_weights_are_normalised_then_scaled():
    logits = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    _, weights = route(logits, None, _moe(weights_norm=True, weights_scale=2.5))
    assert weights.sum(axis=1) == pytest.approx(np.full(5, 2.5))


def test_group_limited_routing_picks_experts_only_from_the_best_groups():
    # 4 groups of 2; group score = sum of its top two; groups 1 and 3 win
    logits = np.array([[0.0, 0.0, 1.0, 1.0, 1.5, -9.0, 0.9, 0.9]], np.float32)
    ids, _ = route(logits, None, _moe(gating="softmax", n_groups=4, n_group_used=2))
    assert set(ids[0].tolist()) <= {2, 3, 6, 7}
    assert 4 not in ids[0]  # the single best expert sits in a losing group


def test_latent_cache_holds_one_row_of_kv_lora_plus_rope_dims_per_token_and_layer(v3):
    kv = NumpyOps(threads=1).new_kv(v3.spec, 16)
    assert isinstance(kv, LatentKV)
    assert kv.data.shape == (3, 1, 16, 1, 48)
    assert kv.nbytes // 16 == 3 * 48 * 4  # float32


def test_prefill_in_chunks_and_decode_agree_with_one_prefill(v3):
    ops = NumpyOps(threads=1)
    ids = list(range(3, 40))
    whole = build_model(v3, ops).logits(ids)
    chunked = DeepSeek2(v3, ops, chunk=8)
    kv = ops.new_kv(v3.spec, 4)
    chunked.forward(ids[:30], 0, kv)
    last = [chunked.forward([i], pos, kv) for pos, i in enumerate(ids[30:], start=30)]
    np.testing.assert_allclose(np.stack(last), whole[30:], atol=1e-4)


def test_latent_blocks_round_trip_through_read_span_and_write_span(v3):
    ops = NumpyOps(threads=1)
    model = build_model(v3, ops)
    ids = list(range(5, 37))
    kv = ops.new_kv(v3.spec, 32)
    model.forward(ids[:24], 0, kv)
    restored = ops.new_kv(v3.spec, 1)
    for start in range(0, 24, 8):
        write_span(restored, start, read_span(kv, start, 8))
    restored.length = 24
    np.testing.assert_array_equal(
        model.forward(ids[24:], 24, restored), model.forward(ids[24:], 24, kv)
    )


def test_a_backend_without_the_mla_ops_is_refused_clearly(v3):
    with pytest.raises(NotImplementedError, match="latent_attention"):
        DeepSeek2(v3, object())
