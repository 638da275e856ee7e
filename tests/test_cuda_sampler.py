"""The on-device sampler (kernels/sample.cu) against the host sampler, its referee.

Greedy picks must be identical (mask and repetition penalty included); with temperature, the
device draws must stay inside the host chain's survivors (top-k, top-p, min-p) and follow
softmax(x / T) over them: total variation under 0.06 over 4,000 seeded draws.
"""

import numpy as np
import pytest

from agentcore.engine.backends.cuda import CudaOps, cuda_available
from agentcore.engine.base import Sampling
from agentcore.engine.decode.sampler import sample
from agentcore.engine.model.gguf import load_gguf
from agentcore.engine.model.transformer import Transformer
from agentcore.testing.synthetic import TINY, write_synthetic_gguf

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a GPU")]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    from agentcore.engine.backends.cuda_graph import CudaDecoder

    path = write_synthetic_gguf(tmp_path_factory.mktemp("s") / "tiny.gguf", **TINY["llama"])
    tr = Transformer(load_gguf(path), CudaOps())
    kv = tr.ops.new_kv(tr.spec, 64)
    dec = CudaDecoder(tr, kv)
    dec.prefill([1, 2, 3])
    return dec


def _set_logits(dec, x):
    dec._drop_ahead()  # a draw runs the next step ahead; the test replaces the logits
    with dec.stream:  # on the decoder's stream (non-blocking: the null stream would race it)
        dec.logits_dev[...] = dec.cp.asarray(x.astype(np.float32))
    dec.stream.synchronize()


def _survivors(x, s: Sampling):
    """The host chain's surviving ids and their probabilities (sampler.py semantics)."""
    ids = np.arange(len(x))
    if 0 < s.top_k < len(ids):
        ids = np.argsort(-x, kind="stable")[: s.top_k]
    if s.top_p < 1.0:
        order = ids[np.argsort(-x[ids], kind="stable")]
        p = np.exp(x[order] - x[order].max())
        p /= p.sum()
        keep = int(np.searchsorted(np.cumsum(p), s.top_p)) + 1
        ids = order[:keep]
    if s.min_p > 0:
        ids = ids[x[ids] >= x[ids].max() + np.log(s.min_p)]
    z = x[ids] / s.temperature
    p = np.exp(z - z.max())
    return ids, p / p.sum()


def test_greedy_matches_host_argmax_with_mask(decoder):
    rng = np.random.default_rng(0)
    v = decoder.model.spec.vocab_size
    decoder.start(None)
    for _ in range(20):
        x = rng.standard_normal(v) * 3
        mask = rng.random(v) < 0.1
        _set_logits(decoder, x)
        assert decoder.sample() == int(np.argmax(x))
        assert decoder.sample(mask) == int(np.argmax(np.where(mask, x, -np.inf)))


def test_repetition_penalty_matches_host(decoder):
    rng = np.random.default_rng(1)
    v = decoder.model.spec.vocab_size
    s = Sampling(temperature=0.0, repetition_penalty=1.8)
    decoder.kv.length = 3
    decoder.start(s)
    recent = [5, 9, 5, 11]
    decoder.feed(recent)  # generated tokens: the penalty looks at them
    for _ in range(10):
        x = rng.standard_normal(v)
        x[recent] += 4.0  # make the penalised ids the leaders
        x[11] = -x[11] - 4.0  # a negative logit is multiplied, not divided
        _set_logits(decoder, x)
        want = sample(x, s, np.random.default_rng(0), recent)
        assert decoder.sample() == want


@pytest.mark.parametrize(
    "s",
    [Sampling(temperature=0.8, top_k=8, seed=1), Sampling(temperature=1.0, top_p=0.7, seed=2),
     Sampling(temperature=1.2, min_p=0.2, seed=3),
     Sampling(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, seed=4)],
    ids=["top_k", "top_p", "min_p", "chain"],
)  # fmt: skip
def test_sampled_draws_follow_the_host_distribution(decoder, s):
    v = decoder.model.spec.vocab_size
    x = np.random.default_rng(7).standard_normal(v) * 2.5
    ids, p = _survivors(x, s)
    _set_logits(decoder, x)
    draws = []
    for seed in range(4000):
        decoder.start(s.model_copy(update={"seed": seed}))
        draws.append(decoder.sample())
    assert set(draws) <= set(ids.tolist())
    freq = np.array([draws.count(int(i)) for i in ids]) / len(draws)
    assert 0.5 * np.abs(freq - p).sum() < 0.06


def test_same_seed_same_draws(decoder):
    v = decoder.model.spec.vocab_size
    _set_logits(decoder, np.random.default_rng(3).standard_normal(v))
    s = Sampling(temperature=1.0, top_k=50, seed=123)
    decoder.start(s)
    a = decoder.sample()
    decoder.start(s)
    assert decoder.sample() == a
