"""Loading GGUF files: the spec from metadata, tensors in numpy order, dequantization,
the fingerprint; on the real SmolLM2 file and on synthetic files of every architecture."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from agentcore.engine.model.gguf import SUPPORTED_ARCHS, SUPPORTED_QTYPES, load_gguf
from agentcore.errors import ModelFormatError, ModelNotFound
from agentcore.testing.synthetic import TINY, write_synthetic_gguf


@pytest.mark.real_model
def test_smollm2_spec_matches_its_published_hyperparameters(smollm2_model):
    s = smollm2_model.spec
    assert (s.arch, s.n_layers, s.n_embd, s.n_heads, s.n_kv_heads) == ("llama", 30, 576, 9, 3)
    assert (s.head_dim, s.n_ff, s.vocab_size, s.context_length) == (64, 1536, 49152, 8192)
    assert s.rope_base == 100000.0
    assert s.rms_eps == pytest.approx(1e-5)
    assert not s.rope_neox and not s.qkv_bias and not s.qk_norm
    assert s.rope_scaling is None


@pytest.mark.real_model
def test_smollm2_without_output_weight_has_tied_embeddings(smollm2_model):
    assert "output.weight" not in smollm2_model.tensors
    assert smollm2_model.spec.tied_embeddings


@pytest.mark.real_model
def test_matrices_have_numpy_order_shapes(smollm2_model):
    assert smollm2_model.tensor("blk.0.attn_k.weight").shape == (192, 576)
    assert smollm2_model.tensor("blk.0.ffn_down.weight").shape == (576, 1536)
    assert smollm2_model.tensor("token_embd.weight").shape == (49152, 576)


@pytest.mark.real_model
def test_quantized_raw_is_a_view_of_row_blocks(smollm2_model):
    t = smollm2_model.tensor("blk.0.attn_q.weight")
    assert t.qtype == Q.Q4_1
    assert t.raw.dtype == np.uint8
    assert t.raw.shape == (576, 576 // 32 * 20)
    assert (t.block_size, t.type_size) == (32, 20)
    assert t.nbytes == 576 * 576 // 32 * 20
    assert not t.raw.flags.writeable


@pytest.mark.real_model
def test_dequantize_rows_equals_the_rows_of_the_full_dequantization(smollm2_model):
    embd = smollm2_model.tensor("token_embd.weight")
    rows = np.array([0, 17, 49151, 17])
    np.testing.assert_array_equal(embd.dequantize_rows(rows), embd.dequantize()[rows])


@pytest.mark.real_model
def test_dequantize_rows_rejects_ids_outside_the_table(smollm2_model):
    with pytest.raises(IndexError, match="49152"):
        smollm2_model.tensor("token_embd.weight").dequantize_rows(np.array([49152]))


@pytest.mark.real_model
def test_metadata_values_are_plain_python(smollm2_model):
    md = smollm2_model.metadata
    assert md["general.architecture"] == "llama"
    assert type(md["llama.block_count"]) is int
    assert type(md["tokenizer.ggml.add_bos_token"]) is bool
    assert isinstance(md["tokenizer.ggml.tokens"], list)
    assert type(md["tokenizer.ggml.token_type"][0]) is int


@pytest.mark.real_model
def test_missing_tensor_error_names_file_and_tensor(smollm2_model):
    with pytest.raises(ModelFormatError, match=r"SmolLM2.*'blk\.99\.attn_q\.weight'"):
        smollm2_model.tensor("blk.99.attn_q.weight")


@pytest.mark.real_model
def test_fingerprint_is_stable_across_loads_and_paths(smollm2_model, smollm2_path, tmp_path):
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(smollm2_path, copy)
    assert load_gguf(copy).fingerprint == smollm2_model.fingerprint
    assert len(smollm2_model.fingerprint) == 64


def test_fingerprint_differs_for_different_weights_of_the_same_shape(tmp_path):
    a = load_gguf(write_synthetic_gguf(tmp_path / "a.gguf", seed=0))
    b = load_gguf(write_synthetic_gguf(tmp_path / "b.gguf", seed=1))
    assert a.spec == b.spec
    assert a.fingerprint != b.fingerprint


def test_fingerprint_sees_a_change_to_any_tensor(tmp_path):
    path = write_synthetic_gguf(tmp_path / "a.gguf", n_layers=4)
    model = load_gguf(path)
    head = model.tensor("blk.2.ffn_up.weight").raw.reshape(-1)[:16].tobytes()
    before = model.fingerprint
    del model
    data = bytearray(path.read_bytes())
    at = data.index(head)
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    assert load_gguf(path).fingerprint != before


@pytest.mark.parametrize("arch", [a for a in SUPPORTED_ARCHS if a != "deepseek2"])
def test_tiny_preset_of_every_arch_loads_with_its_flags(tmp_path, arch):
    # deepseek2 (MLA + MoE) has its own synthetic writer and tests (test_deepseek2.py).
    spec = load_gguf(write_synthetic_gguf(tmp_path / "m.gguf", **TINY[arch])).spec
    assert spec.arch == arch
    assert spec.rope_neox == (arch != "llama")
    assert spec.qkv_bias == (arch == "qwen2")
    assert spec.qk_norm == (arch == "qwen3")


def test_qwen3_head_dim_comes_from_key_length(tmp_path):
    spec = load_gguf(write_synthetic_gguf(tmp_path / "m.gguf", **TINY["qwen3"])).spec
    assert spec.head_dim == 32 != spec.n_embd // spec.n_heads


def test_qwen2_biases_are_float_vectors(tmp_path):
    model = load_gguf(write_synthetic_gguf(tmp_path / "m.gguf", **TINY["qwen2"]))
    bias = model.tensor("blk.1.attn_k.bias")
    assert bias.qtype == Q.F32 and bias.shape == (32,)


def test_load_of_a_missing_path_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="nope.gguf"):
        load_gguf(tmp_path / "nope.gguf")


def test_supported_qtypes_cover_the_common_gguf_types():
    names = {q.name for q in SUPPORTED_QTYPES}
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"} <= names
    assert {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"} <= names
