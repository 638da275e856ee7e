"""The NumPy ops against direct formulas: RoPE pairings, rope scaling, GQA attention, KV cache."""

import math

import numpy as np
import pytest

from agentcore.engine.backends.cpu import DenseKV, Linear, NumpyOps
from agentcore.engine.model.gguf import ModelSpec
from agentcore.engine.model.transformer import llama3_inv_freq, rope_inv_freq

ops = NumpyOps()


def make_spec(**kw) -> ModelSpec:
    base = {
        "arch": "llama", "name": "t", "n_layers": 2, "n_embd": 64, "n_heads": 4,
        "n_kv_heads": 2, "head_dim": 16, "n_ff": 128, "vocab_size": 100, "context_length": 64,
        "rope_base": 10000.0, "rope_scaling": None, "rms_eps": 1e-5, "rope_neox": False,
        "qkv_bias": False, "qk_norm": False, "tied_embeddings": True,
    }  # fmt: skip
    return ModelSpec(**(base | kw))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def rotate_pair(a, b, angle):
    return a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_rotates_the_documented_pairs(neox):
    d, pos0 = 8, 5
    inv_freq = rope_inv_freq(make_spec(head_dim=d))
    x = rand(3, 2, d)
    y = ops.rope(x, pos0, ops.prepare_rope(inv_freq, neox, 16))
    want = np.empty_like(x)
    for t in range(3):
        for h in range(2):
            for i in range(d // 2):
                # NORM (llama): dims (2i, 2i+1); NEOX (qwen): dims (i, i + d/2).
                a, b = (i, i + d // 2) if neox else (2 * i, 2 * i + 1)
                want[t, h, a], want[t, h, b] = rotate_pair(
                    x[t, h, a], x[t, h, b], (pos0 + t) * inv_freq[i]
                )
    np.testing.assert_allclose(y, want, atol=1e-5)


def test_rope_pairings_differ():
    inv_freq = rope_inv_freq(make_spec(head_dim=8))
    x = rand(1, 1, 8)
    norm = ops.rope(x, 3, ops.prepare_rope(inv_freq, False, 8))
    neox = ops.rope(x, 3, ops.prepare_rope(inv_freq, True, 8))
    assert np.abs(norm - neox).max() > 0.1


def test_rope_beyond_the_table_extends_it():
    inv_freq = rope_inv_freq(make_spec(head_dim=8))
    x = rand(2, 1, 8)
    small = ops.rope(x, 30, ops.prepare_rope(inv_freq, False, 4))
    big = ops.rope(x, 30, ops.prepare_rope(inv_freq, False, 64))
    np.testing.assert_allclose(small, big, atol=1e-6)


def test_rope_inverse_frequencies_are_base_powers():
    spec = make_spec(head_dim=8, rope_base=500000.0)
    np.testing.assert_allclose(rope_inv_freq(spec), [500000.0 ** (-i / 8) for i in (0, 2, 4, 6)])


def test_llama3_scaling_matches_the_reference_formula():
    scaling = {
        "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_context_length": 8192,
    }  # fmt: skip
    spec = make_spec(head_dim=128, rope_base=500000.0, rope_scaling=scaling)
    base = rope_inv_freq(make_spec(head_dim=128, rope_base=500000.0))
    want = []
    # The loop from Meta's reference (llama/model.py apply_scaling), written out per frequency.
    low_wavelen, high_wavelen = 8192 / 1.0, 8192 / 4.0
    for f in base:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            want.append(f)
        elif wavelen > low_wavelen:
            want.append(f / 8.0)
        else:
            smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
            want.append((1 - smooth) * f / 8.0 + smooth * f)
    got = rope_inv_freq(spec)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(llama3_inv_freq(base, scaling), want, rtol=1e-12)
    assert got[0] == base[0] and got[-1] == pytest.approx(base[-1] / 8.0)


def test_linear_and_per_frequency_scaling_divide_the_frequencies():
    base = rope_inv_freq(make_spec(head_dim=8))
    linear = make_spec(head_dim=8, rope_scaling={"type": "linear", "factor": 4.0})
    np.testing.assert_allclose(rope_inv_freq(linear), base / 4.0)
    factors = np.array([1.0, 2.0, 4.0, 8.0])
    tensor = make_spec(head_dim=8, rope_scaling={"type": "freq_factors", "tensor": "rope_freqs"})
    np.testing.assert_allclose(rope_inv_freq(tensor, factors), base / factors)


def naive_attention(q, k, v, pos0):
    """Per query, per head, softmax over keys 0..pos0+i of the KV head it shares."""
    t, h, d = q.shape
    group = h // k.shape[1]
    out = np.zeros((t, h, d))
    for i in range(t):
        for head in range(h):
            keys = k[: pos0 + i + 1, head // group].astype(np.float64)
            s = keys @ q[i, head] / math.sqrt(d)
            w = np.exp(s - s.max())
            out[i, head] = (w / w.sum()) @ v[: pos0 + i + 1, head // group]
    return out.reshape(t, h * d)


def test_grouped_query_attention_equals_a_naive_loop():
    spec = make_spec(n_heads=6, n_kv_heads=2, head_dim=8)
    kv = DenseKV(spec, 4)
    k, v = rand(10, 2, 8, seed=1), rand(10, 2, 8, seed=2)
    kv.store(0, 0, k, v)  # grows past the initial capacity of 4
    q = rand(7, 6, 8, seed=3)
    got = ops.attention(q, kv, 0, 3)
    np.testing.assert_allclose(got, naive_attention(q, k, v, 3), atol=1e-5)


def test_attention_is_the_same_in_one_call_in_chunks_and_token_by_token():
    spec = make_spec(n_heads=4, n_kv_heads=2, head_dim=8)
    k, v, q = rand(12, 2, 8, seed=1), rand(12, 2, 8, seed=2), rand(12, 4, 8, seed=3)

    def run(splits):
        kv, outs, pos = DenseKV(spec, 2), [], 0
        for n in splits:
            kv.store(1, pos, k[pos : pos + n], v[pos : pos + n])
            outs.append(ops.attention(q[pos : pos + n], kv, 1, pos))
            pos += n
        return np.concatenate(outs)

    whole = run([12])
    np.testing.assert_allclose(run([5, 4, 3]), whole, atol=1e-6)
    np.testing.assert_allclose(run([1] * 12), whole, atol=1e-6)
    np.testing.assert_allclose(whole, naive_attention(q, k, v, 0), atol=1e-5)


def test_rmsnorm_normalises_each_row_and_each_head():
    x, w = rand(3, 4, 16), rand(16, seed=1)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(ops.rmsnorm(x, w, 1e-6), want, rtol=1e-5, atol=1e-6)


def test_swiglu_is_silu_of_gate_times_up():
    gu = rand(2, 10)
    gate, up = gu[:, :5].astype(np.float64), gu[:, 5:]
    np.testing.assert_allclose(ops.swiglu(gu), gate / (1 + np.exp(-gate)) * up, rtol=1e-5)


def test_kv_grows_keeping_stored_positions():
    kv = DenseKV(make_spec(), 2)
    first = rand(2, 2, 16)
    kv.store(0, 0, first, first + 1)
    kv.store(1, 0, first, first)
    kv.store(0, 2, rand(3, 2, 16, seed=1), rand(3, 2, 16, seed=2))
    assert kv.capacity >= 5
    k, v = kv.load(0, 2)
    np.testing.assert_array_equal(k, first)
    np.testing.assert_array_equal(v, first + 1)
    np.testing.assert_array_equal(kv.load(1, 2)[0], first)


def test_kv_truncate_only_rolls_back():
    kv = DenseKV(make_spec(), 8)
    kv.length = 5
    kv.truncate(3)
    assert kv.length == 3
    with pytest.raises(ValueError):
        kv.truncate(4)


def test_kv_export_import_round_trips():
    spec = make_spec()
    kv = DenseKV(spec, 8)
    for layer in range(spec.n_layers):
        kv.store(layer, 0, rand(6, 2, 16, seed=layer), rand(6, 2, 16, seed=layer + 10))
    kv.length = 6
    layers = kv.export(4)
    assert len(layers) == 2 and layers[0].shape == (2, 4, 2, 16) and layers[0].flags.c_contiguous
    other = DenseKV(spec, 1)
    other.import_(layers)
    assert other.length == 4
    for layer in range(spec.n_layers):
        for a, b in zip(other.load(layer, 4), kv.load(layer, 4), strict=True):
            np.testing.assert_array_equal(a, b)
    assert other.nbytes == other.data.nbytes


@pytest.mark.parametrize("pos0", [0, 50])
def test_threaded_row_splits_equal_the_single_thread_result(pos0):
    spec = make_spec(n_heads=4, n_kv_heads=2, head_dim=8)
    kv = DenseKV(spec, pos0 + 64)
    kv.store(0, 0, rand(pos0 + 64, 2, 8, seed=1), rand(pos0 + 64, 2, 8, seed=2))
    q = rand(64, 4, 8, seed=3)
    one, three = NumpyOps(threads=1), NumpyOps(threads=3)
    np.testing.assert_allclose(
        three.attention(q, kv, 0, pos0), one.attention(q, kv, 0, pos0), atol=1e-6
    )
    x, lin = rand(64, 32, seed=4), Linear(rand(48, 32, seed=5), rand(48, seed=6))
    np.testing.assert_allclose(three.matmul(x, lin), x @ lin.w.T + lin.bias, rtol=1e-5, atol=1e-5)
