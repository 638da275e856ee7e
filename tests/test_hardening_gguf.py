"""Hostile GGUF *values* (issue 17, item 9): non-finite or out-of-range hyperparameters,
NaN weights and malformed vocabularies fail with typed errors, never token 0 or a hang."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import TokenType
from test_gguf_errors import rewrite

from agentcore.engine.model.gguf import check_logits, load_gguf
from agentcore.engine.model.tokenizer import Tokenizer
from agentcore.errors import ModelFormatError, TokenizerError
from agentcore.testing.synthetic import write_synthetic_gguf


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_synthetic_gguf(tmp_path_factory.mktemp("good") / "good.gguf", vocab=300)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("llama.rope.freq_base", math.nan),
        ("llama.rope.freq_base", -10000.0),
        ("llama.rope.freq_base", 0.0),
        ("llama.rope.freq_base", math.inf),
        ("llama.attention.layer_norm_rms_epsilon", math.nan),
        ("llama.attention.layer_norm_rms_epsilon", -1e-5),
        ("llama.attention.layer_norm_rms_epsilon", math.inf),
    ],
)
def test_non_finite_or_out_of_range_hyperparameters_are_format_errors(tmp_path, good, key, value):
    bad = rewrite(good, tmp_path / "bad.gguf", kv={key: value})
    with pytest.raises(ModelFormatError, match=key.replace(".", r"\.")):
        load_gguf(bad)


@pytest.mark.parametrize("factor", [math.nan, math.inf, -2.0])
def test_a_non_finite_rope_scaling_factor_is_a_format_error(tmp_path, good, factor):
    bad = rewrite(
        good, tmp_path / "bad.gguf",
        kv={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": factor},
    )  # fmt: skip
    with pytest.raises(ModelFormatError, match="rope scaling"):
        load_gguf(bad)


@pytest.mark.parametrize("name", ["output_norm.weight", "blk.1.attn_norm.weight", "blk.0.ffn_norm.weight"])
@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_non_finite_norm_weights_are_a_format_error_at_load(tmp_path, good, name, poison):
    weights = np.ones(64, np.float32)
    weights[7] = poison
    bad = rewrite(good, tmp_path / "bad.gguf", tensors={name: (weights, Q.F32)})
    with pytest.raises(ModelFormatError, match=name.replace(".", r"\.")):
        load_gguf(bad)


def test_check_logits_refuses_non_finite_logits_naming_the_file():
    check_logits(np.zeros((1, 300), np.float32), "m.gguf")
    for poison in (math.nan, math.inf, -math.inf):
        logits = np.zeros((1, 300), np.float32)
        logits[0, 5] = poison
        with pytest.raises(ModelFormatError, match=r"m\.gguf.*not finite"):
            check_logits(logits, "m.gguf")


# ------------------------------------------------------------- vocabularies


@pytest.fixture(scope="module")
def metadata(good) -> dict:
    return dict(load_gguf(good).metadata)


def tokenizer_of(metadata: dict, **overrides) -> Tokenizer:
    return Tokenizer({**metadata, **overrides}, source="t.gguf")


def test_tokens_stored_as_integers_are_a_tokenizer_error(metadata):
    tokens = list(metadata["tokenizer.ggml.tokens"])
    tokens[40] = 12345
    with pytest.raises(TokenizerError, match="tokenizer.ggml.tokens"):
        tokenizer_of(metadata, **{"tokenizer.ggml.tokens": tokens})


def test_all_tokens_as_integers_are_a_tokenizer_error(metadata):
    tokens = list(range(len(metadata["tokenizer.ggml.tokens"])))
    with pytest.raises(TokenizerError):
        tokenizer_of(metadata, **{"tokenizer.ggml.tokens": tokens})


def test_token_types_that_are_not_integers_are_a_tokenizer_error(metadata):
    types = list(metadata["tokenizer.ggml.token_type"])
    types[3] = "normal"
    with pytest.raises(TokenizerError, match="token_type"):
        tokenizer_of(metadata, **{"tokenizer.ggml.token_type": types})


@pytest.mark.parametrize("pre", [["smollm"], 7, None, {"a": 1}])
def test_a_pre_tokenizer_that_is_not_a_string_is_a_tokenizer_error(metadata, pre):
    with pytest.raises(TokenizerError, match="pre-tokenizer"):
        tokenizer_of(metadata, **{"tokenizer.ggml.pre": pre})


@pytest.mark.parametrize("ttype", [TokenType.USER_DEFINED, TokenType.CONTROL, TokenType.NORMAL])
def test_an_empty_token_is_a_tokenizer_error_not_a_hang(metadata, ttype):
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = list(metadata["tokenizer.ggml.token_type"])
    tokens[290], types[290] = "", int(ttype)
    with pytest.raises(TokenizerError, match="empty"):
        tokenizer_of(metadata, **{"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types})
