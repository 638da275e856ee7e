"""Synthetic GGUF models: deterministic, loadable, realistic weight statistics for every
supported weight type, and presets that mirror real models' tensor tables."""

from __future__ import annotations

import numpy as np
import pytest

from agentcore.engine.model.gguf import load_gguf
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.testing.synthetic import SMOLLM2_135M, write_synthetic_gguf

BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
FLOAT_TYPES = ["F32", "F16", "BF16"]
# K-quants need rows that are a multiple of 256.
WIDE = {"n_embd": 256, "n_heads": 4, "n_kv_heads": 2, "n_ff": 512, "n_layers": 1, "vocab": 512}


def test_same_arguments_write_identical_bytes(tmp_path):
    a = write_synthetic_gguf(tmp_path / "a.gguf", seed=3)
    b = write_synthetic_gguf(tmp_path / "b.gguf", seed=3)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("qtype", BLOCK_TYPES + FLOAT_TYPES)
def test_weights_of_every_type_are_finite_centred_and_scaled_to_fan_in(tmp_path, qtype):
    model = load_gguf(write_synthetic_gguf(tmp_path / "m.gguf", qtype=qtype, **WIDE))
    w = model.tensor("blk.0.ffn_down.weight")
    assert w.qtype.name == qtype
    x = w.dequantize()
    target = 1 / np.sqrt(512)
    assert np.isfinite(x).all()
    assert abs(x.mean()) < 0.15 * target
    assert 0.6 * target < x.std() < 1.5 * target


def test_block_scales_vary_so_a_wrong_block_index_is_visible(tmp_path):
    model = load_gguf(write_synthetic_gguf(tmp_path / "m.gguf", qtype="Q8_0"))
    scales = model.tensor("blk.0.attn_q.weight").raw.reshape(-1, 34)[:, :2].copy()
    assert len(np.unique(scales.view(np.float16))) > 100


def test_qtype_mapping_sets_each_role(tmp_path):
    qtype = {"default": "Q4_0", "token_embd": "Q8_0", "output": "F16", "ffn_down": "Q5_1"}
    model = load_gguf(write_synthetic_gguf(tmp_path / "m.gguf", qtype=qtype))
    types = {name: t.qtype.name for name, t in model.tensors.items()}
    assert types["token_embd.weight"] == "Q8_0"
    assert types["output.weight"] == "F16"
    assert types["blk.1.ffn_down.weight"] == "Q5_1"
    assert types["blk.1.attn_v.weight"] == "Q4_0"
    assert types["blk.1.ffn_norm.weight"] == "F32"


def test_unknown_qtype_role_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown qtype roles"):
        write_synthetic_gguf(tmp_path / "m.gguf", qtype={"attn_qkv": "Q8_0"})


def test_rows_that_do_not_fill_a_k_block_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of the Q4_K block size 256"):
        write_synthetic_gguf(tmp_path / "m.gguf", qtype="Q4_K")


def test_tied_model_has_no_output_weight(tmp_path):
    model = load_gguf(write_synthetic_gguf(tmp_path / "m.gguf", tied=True))
    assert model.spec.tied_embeddings and "output.weight" not in model.tensors


def test_vocabulary_is_a_working_byte_level_bpe(tmp_path):
    model = load_gguf(write_synthetic_gguf(tmp_path / "m.gguf", vocab=3000))
    tok = Tokenizer.from_gguf(model)
    text = "the quick brown fox, 42 times!\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < 0.7 * len(text.encode())  # merges are used
    assert tok.vocab_size == model.spec.vocab_size == 3000


def test_vocab_smaller_than_the_byte_alphabet_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="vocab must be at least 259"):
        write_synthetic_gguf(tmp_path / "m.gguf", vocab=100)


def test_model_without_tokenizer_still_loads(tmp_path):
    model = load_gguf(write_synthetic_gguf(tmp_path / "m.gguf", tokenizer=None))
    assert "tokenizer.ggml.tokens" not in model.metadata


@pytest.mark.real_model
def test_smollm2_preset_has_the_real_models_tensor_table(tmp_path, smollm2_model):
    synthetic = load_gguf(write_synthetic_gguf(tmp_path / "s.gguf", **SMOLLM2_135M))
    table = {n: (t.qtype, t.shape) for n, t in synthetic.tensors.items()}
    assert table == {n: (t.qtype, t.shape) for n, t in smollm2_model.tensors.items()}
    real = smollm2_model.spec
    assert synthetic.spec == type(real)(**{**real.__dict__, "name": synthetic.spec.name})
