"""Each byte-level pre-tokenizer we read splits as llama.cpp's does
(tests/data/reference_tokenizers.json, scripts/make_reference_tokenizers.py).

One synthetic vocabulary whose merges were learned with no pre-split (they join letters to
digits, spaces to punctuation, newlines to words, CJK to ASCII) is written once per
pre-tokenizer name; llama.cpp's ids for a stress corpus (contractions, digit runs, code,
whitespace runs, CRLF, accents, CJK, other scripts, emoji, URLs) must be ours exactly. The
names split differently (the recorded token counts differ), so a wrong split shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentcore.engine.model.gguf import load_gguf
from agentcore.engine.model.tokenizer import SUPPORTED_PRE_TOKENIZERS, Tokenizer
from agentcore.testing.synthetic import write_synthetic_gguf

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_tokenizers.json").read_text(encoding="utf-8"))
MERGES = [tuple(m) for m in REFERENCE["merges"]]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    return {pre: Tokenizer.from_gguf(load_gguf(write_synthetic_gguf(root / f"{pre}.gguf", n_layers=1,
                                                                    merges=MERGES, pre=pre)))
            for pre in REFERENCE["pre"]}  # fmt: skip


@pytest.mark.parametrize("pre", list(REFERENCE["pre"]))
def test_encode_matches_llama_cpp_for_every_text(tokenizers, pre):
    tok = tokenizers[pre]
    for text, want in zip(REFERENCE["texts"], REFERENCE["pre"][pre], strict=True):
        got = tok.encode(text)
        assert got == want, (pre, text[:40])
        assert tok.decode(got) == text  # byte-level BPE loses nothing


def test_the_reference_covers_the_pre_tokenizers_and_tells_them_apart():
    pres = set(REFERENCE["pre"])
    assert {"gpt-2", "llama-bpe", "qwen2", "deepseek-v3", "deepseek-r1-qwen", "smollm"} <= pres
    assert pres <= set(SUPPORTED_PRE_TOKENIZERS)
    counts = {pre: sum(map(len, ids)) for pre, ids in REFERENCE["pre"].items()}
    assert len(set(counts.values())) >= 4, counts  # the splits differ, so the test can fail
    assert max(len(a + b) for a, b in MERGES) > 4 and len(MERGES) > 500
