"""The transformer on tiny synthetic models of every architecture: splitting a sequence
across calls (prefill, chunks, decode, rollback) never changes the logits."""

import numpy as np
import pytest

from agentcore.engine.backends.cpu import DenseKV, NumpyOps
from agentcore.engine.model.gguf import load_gguf
from agentcore.engine.model.transformer import Transformer
from agentcore.testing.synthetic import TINY, write_synthetic_gguf

ARCHS = sorted(TINY)
IDS = [int(i) for i in np.random.default_rng(7).integers(0, 1024, 24)]


@pytest.fixture(scope="module", params=ARCHS)
def transformer(request, tmp_path_factory):
    path = write_synthetic_gguf(tmp_path_factory.mktemp("m") / "m.gguf", **TINY[request.param])
    return Transformer(load_gguf(path), NumpyOps(), chunk=8)


def test_logits_are_finite_and_vocab_sized(transformer):
    out = transformer.logits(IDS)
    assert out.shape == (len(IDS), transformer.spec.vocab_size)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_decode_token_by_token_matches_full_prefix(transformer):
    full = transformer.logits(IDS)  # 24 tokens in chunks of 8
    kv = DenseKV(transformer.spec, 4)
    prefill = transformer.forward(IDS[:5], 0, kv)
    np.testing.assert_allclose(prefill, full[4], atol=1e-4)
    for i in range(5, len(IDS)):
        step = transformer.forward(IDS[i : i + 1], kv.length, kv)
        np.testing.assert_allclose(step, full[i], atol=1e-4)
    assert kv.length == len(IDS)


def test_chunk_size_does_not_change_logits(transformer, monkeypatch):
    chunked = transformer.logits(IDS)
    monkeypatch.setattr(transformer, "chunk", 1000)
    np.testing.assert_allclose(transformer.logits(IDS), chunked, atol=1e-4)


def test_truncate_then_reforward_matches_a_fresh_run(transformer):
    kv = DenseKV(transformer.spec, 8)
    transformer.forward(IDS, 0, kv)
    kv.truncate(10)
    other = [3, 1, 4, 1, 5, 9, 2, 6]
    got = transformer.forward(other, 10, kv, all_logits=True)
    want = transformer.logits(IDS[:10] + other)[10:]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_forward_refuses_a_gap_in_the_cache(transformer):
    kv = DenseKV(transformer.spec, 8)
    transformer.forward(IDS[:4], 0, kv)
    with pytest.raises(ValueError, match="pos0"):
        transformer.forward(IDS[4:6], 5, kv)
    with pytest.raises(ValueError):
        transformer.forward([], 4, kv)
