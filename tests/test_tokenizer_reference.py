"""Our SmolLM2 tokenization is llama.cpp's, string for string (the referee's answers are in
tests/data/reference_smollm2.json, written by scripts/make_reference.py)."""

from __future__ import annotations

import json

import pytest
from engine_fixtures import REFERENCE_SMOLLM2

from agentcore.model_cache import KNOWN_MODELS

pytestmark = pytest.mark.real_model

REFERENCE = json.loads(REFERENCE_SMOLLM2.read_text(encoding="utf-8"))
CORPUS = REFERENCE["tokenize"]
SPECIAL_CORPUS = REFERENCE["tokenize_special"]
# Bytes SmolLM2's vocabulary has no token for; llama.cpp (and we) drop them.
UNTOKENIZABLE = str.maketrans("", "", "\x04\x06\x13\x14\x16\x1d")


def test_reference_was_made_from_the_pinned_model():
    assert REFERENCE["model_sha256"] == KNOWN_MODELS["smollm2"].sha256
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: repr(c["text"][:24]))
def test_encode_matches_llama_cpp(smollm2_tokenizer, case):
    assert smollm2_tokenizer.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: repr(c["text"][:24]))
def test_decode_of_llama_cpp_ids_restores_the_text(smollm2_tokenizer, case):
    assert smollm2_tokenizer.decode(case["ids"]) == case["text"].translate(UNTOKENIZABLE)


@pytest.mark.parametrize("case", SPECIAL_CORPUS, ids=lambda c: repr(c["text"][:24]))
def test_encode_with_specials_matches_llama_cpp_special_parsing(smollm2_tokenizer, case):
    assert smollm2_tokenizer.encode_with_specials(case["text"]) == case["ids"]


@pytest.mark.parametrize("prompt", REFERENCE["prompts"], ids=lambda p: p["name"])
def test_reference_prompts_tokenize_as_llama_cpp_fed_them(smollm2_tokenizer, prompt):
    encode = (
        smollm2_tokenizer.encode_with_specials if prompt["special"] else smollm2_tokenizer.encode
    )
    assert encode(prompt["text"]) == prompt["ids"]
