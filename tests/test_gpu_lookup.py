"""Prompt-lookup drafts on the CUDA decoder (run on a GPU machine).

``CudaDecoder.verify`` feeds the last sampled token and its draft in one batch and draws after
each with the graph's own sampler kernel; ``rewind`` keeps the accepted prefix. Under it,
``CudaOps.multi_token_gemv`` runs a batch of up to GEMV_MAX_T rows as one ``gemv_q8_n`` launch
that reads each weight once. Both were written without a GPU (2026-12-08) and are off by
default (``CudaDecoder.verify_drafts``, ``CudaOps.multi_token_gemv``) until these tests pass on
one and an A/B shows the speed.

Bounds:
- gemv_q8_n: each row's y bit for bit what gemv_q8 writes for it (the same sums in the same
  order), and within the int8 bound (1e-2) of the float64 product.
- verify's rows against the graph's step logits of the same positions: rel < 2e-2 (the eager
  path's attention kernels against the graph's; both on int8 activations). A redraw from a
  rewound position is the verify's draw exactly (the sampler hashes (seed, position)).
- Greedy replies with drafts: every token within 3% of the logit range of the NumPy
  reference's argmax at its position (the bound test_gpu_local_engine.py holds the
  graph's replies to; near-ties of the random-weight model may flip).
"""

from __future__ import annotations

import anyio
import numpy as np
import pytest
from test_ops_cuda import INT8_TYPES, rel, weight

from agentcore.engine.backends import cuda as cu
from agentcore.engine.backends.cuda import GEMV_MAX_T, CudaOps, cuda_available
from agentcore.engine.backends.cuda_graph import CudaDecoder
from agentcore.engine.base import GenerationRequest, Sampling
from agentcore.engine.local import LocalEngine
from agentcore.engine.model.gguf import load_gguf
from agentcore.engine.model.transformer import Transformer
from agentcore.messages import SystemMessage, UserMessage
from agentcore.testing.synthetic import TINY, write_synthetic_gguf

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs CuPy and an NVIDIA GPU")]


@pytest.mark.parametrize("name", INT8_TYPES)
@pytest.mark.parametrize("t", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_batched_int8_gemv_writes_each_rows_gemv_q8_result(monkeypatch, name, t, mode):
    import cupy as cp

    rows = 90 if mode == 2 else 91  # an odd row count: a warp's second row clamped to its first
    cols = 2304  # 36/72 units a row: the two-step loop and its tail
    out_rows = rows // 2 if mode == 2 else rows
    rng = np.random.default_rng(31)
    w = weight(name, rows, cols, 5)
    x = rng.standard_normal((t, cols)).astype(np.float32)
    base = rng.standard_normal((t, out_rows)).astype(np.float32)
    launched: list[str] = []
    kernel = cu._kernel
    monkeypatch.setattr(cu, "_kernel", lambda n: launched.append(n) or kernel(n))
    outs = []
    for batched in (False, True):
        ops = CudaOps(int8_min_bytes=0)
        ops.multi_token_gemv = batched
        part = ops.prepare_linear([w]).parts[0]
        assert ops.int8_ready(part)
        y = cp.asarray(base) if mode == 1 else cp.zeros((t, out_rows), cp.float32)
        launched.clear()
        ops.gemv(part, cp.asarray(x), y, t=t, y_stride=out_rows, mode=mode)
        assert any(k.startswith("gemv_q8_n<" if batched else "gemv_q8<") for k in launched), launched
        outs.append(y.get())
    assert np.array_equal(outs[0], outs[1])
    full = x.astype(np.float64) @ w.dequantize(np.float64).T
    if mode == 2:
        g, u = full[:, :out_rows], full[:, out_rows:]
        want = g / (1 + np.exp(-g)) * u
    else:
        want = full + (base if mode == 1 else 0.0)
    assert rel(outs[1], want) < 1e-2


def _decoders(tmp_path, n_prompt=50):
    path = write_synthetic_gguf(tmp_path / "m.gguf", **TINY["llama"])
    ops = CudaOps(int8_min_bytes=0)
    ops.multi_token_gemv = True
    gpu = Transformer(load_gguf(path), ops, chunk=64)
    ids = np.random.default_rng(33).integers(0, gpu.spec.vocab_size, n_prompt).tolist()
    return gpu, ids, [CudaDecoder(gpu, ops.new_kv(gpu.spec, 256)) for _ in range(2)]


@pytest.mark.parametrize(
    "sampling", [None, Sampling(temperature=0.8, top_p=0.9, repetition_penalty=1.3)], ids=["greedy", "sampled"]
)
def test_verify_draws_what_the_graph_sampler_draws_and_rewind_resumes_there(tmp_path, sampling):
    gpu, ids, (a, b) = _decoders(tmp_path)
    for d in (a, b):
        d.prefill(ids)
        d.start(sampling, seed=7, reserve=32)
    base = len(ids)
    t0 = a.sample()
    assert b.sample() == t0
    seq, held = [t0], []
    for _ in range(4):  # b: sequential graph steps; the held logits of positions base .. base+3
        seq.append(b.step(seq[-1]))
        b.settle()
        held.append(b.logits())
    wrong = (seq[3] + 1) % gpu.spec.vocab_size
    drawn = a.verify([t0, seq[1], seq[2], wrong])
    assert len(drawn) == 4 and a.kv.length == base + 4
    print(f"verify drew {drawn}, sequential steps {seq[1:5]}")
    # Keep t0, seq[1], seq[2]; drawn[2] (after seq[2]) is pending at base + 3.
    a.rewind(base + 3, drawn[2])
    assert a.kv.length == base + 3
    assert rel(a.logits(), held[2]) < 2e-2  # verify's row of position base + 2 against the graph's
    assert a.sample() == drawn[2]  # a redraw there: the same logits, position and history
    if sampling is None:
        assert drawn[:3] == seq[1:4]  # greedy over logits this close: the sequential tokens
    # Decoding on from the rewound state: graph steps again, at the right positions.
    nxt = a.step(drawn[2])
    a.settle()
    assert a.kv.length == base + 4
    if drawn[2] == seq[3]:
        assert rel(a.logits(), held[3]) < 2e-2
        if sampling is None:
            assert nxt == seq[4]
    with pytest.raises(ValueError, match="outside the last verify"):
        a.rewind(base + 10, 0)
    with pytest.raises(ValueError, match="verify takes"):
        a.verify(list(range(GEMV_MAX_T + 1)))


def _request(text, max_tokens):
    msgs = [SystemMessage(content="A synthetic system prompt that repeats. " * 6), UserMessage(content=text)]
    return GenerationRequest(session_id="s", messages=msgs, max_tokens=max_tokens)


async def _complete(eng, req):
    async for item in eng.stream(req):
        done = item
    return done


def test_greedy_replies_with_drafts_on_cuda_stay_greedy_and_keep_drafts(tmp_path, monkeypatch):
    path = write_synthetic_gguf(tmp_path / "tiny.gguf", arch="llama", qtype="Q8_0", context_length=8192)
    text = "repeat after me: the cache keeps the prefix, the cache keeps the prefix, the cache"
    monkeypatch.setattr(CudaDecoder, "verify_drafts", True)
    got = {}
    for k in (0, 8):
        eng = LocalEngine.from_gguf(path, device="cuda", context_length=2048, draft_tokens=k)
        eng.ops.multi_token_gemv = True
        got[k] = anyio.run(_complete, eng, _request(text, 96))
        session = eng.sessions["s"]
        with eng._compute:
            assert session.kv.length == len(session.ids)  # the ledger is the KV
    u = got[8].usage
    print(f"drafts: {u.draft_tokens} checked, {u.accepted_draft_tokens} kept; "
          f"same tokens as without: {got[8].token_ids == got[0].token_ids}")  # fmt: skip
    assert got[0].usage.draft_tokens == 0
    assert u.draft_tokens > 0 and u.accepted_draft_tokens > 0  # the random model loops: its n-grams predict it
    cpu = LocalEngine.from_gguf(path, device="cpu", context_length=2048)
    ids = cpu._prompt(_request(text, 96), generation=True)[0]
    toks = got[8].token_ids
    ref = cpu.logits(ids + toks)
    gaps = [(ref[len(ids) - 1 + i].max() - ref[len(ids) - 1 + i][t]) / np.ptp(ref[len(ids) - 1 + i])
            for i, t in enumerate(toks)]  # fmt: skip
    print(f"greedy with drafts: {sum(g == 0 for g in gaps)}/{len(gaps)} argmax, worst gap {max(gaps):.4f}")
    assert max(gaps) <= 3e-2
