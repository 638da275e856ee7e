"""A restore that joins the checkpoint store and a checkpoint still being saved behind.

On CUDA ``LocalEngine`` saves a checkpoint behind the turn: its blocks sit in
``_behind_pending`` (the device snapshot, then the host copy) until the store has indexed
them, and another session with the same prefix reads them there instead of waiting
(``LocalEngine._restore``). The GPU tests hold a real save; here the same state is set up on
the CPU engine (a save that never lands), so the joining logic runs in every CI run: the
store's blocks first, the in-flight ones from where the store stops (mid-block after a
stored partial block), the same KV and tokens as a restore of the whole checkpoint from RAM.
"""

from concurrent.futures import Future

import numpy as np
import pytest

from agentcore.engine.base import GenerationRequest
from agentcore.engine.kvstore.blocks import block_hashes, read_span
from agentcore.engine.local import LocalEngine
from agentcore.messages import SystemMessage, UserMessage
from agentcore.testing.synthetic import write_synthetic_gguf

pytestmark = pytest.mark.anyio
BS = 64


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_synthetic_gguf(tmp_path_factory.mktemp("f") / "tiny.gguf", arch="llama", qtype="Q8_0",
                                context_length=4096)  # fmt: skip


def request(n_user, session="g", max_tokens=8):
    msgs = [SystemMessage(content="synthetic system prompt " * 20)]
    msgs += [UserMessage(content=f"question number {i} about the cache") for i in range(n_user)]
    return GenerationRequest(session_id=session, messages=msgs, max_tokens=max_tokens)


async def generate(engine, req):
    async for item in engine.stream(req):
        done = item
    return done


async def in_flight(eng, req):
    """Checkpoint ``req`` with the store's save withheld, then hand the blocks the store lacks
    to ``_behind_pending`` as the CUDA save behind does: a save still in flight. Returns the
    checkpoint's tokens and the pending save's future (set it to let it 'land')."""
    real = eng.store.save
    eng.store.save = lambda session_id, ids, hashes, read, tail, owned=False: (0, 0, tail)
    try:
        info = await eng.checkpoint(req)
    finally:
        eng.store.save = real
    ids = eng.sessions[req.session_id].ids
    assert len(ids) == info.tokens
    kv = eng.sessions[req.session_id].kv
    hashes = block_hashes(ids, eng.layout)
    starts = [(i * BS, BS) for i, key in enumerate(hashes) if not eng.store.has(key)]
    if len(ids) > len(hashes) * BS:
        starts.append((len(hashes) * BS, len(ids) - len(hashes) * BS))
    fut: Future[None] = Future()
    eng._behind_pending = {s: read_span(kv, s, n).copy() for s, n in starts}
    eng._behind_ids, eng._behind_last = list(ids), fut
    return info, fut


async def test_restore_reads_the_save_in_flight_where_the_store_stops(model_path):
    other = request(6, session="h")
    ref = LocalEngine.from_gguf(model_path, device="cpu", block_size=BS)
    await ref.checkpoint(request(3))
    await ref.checkpoint(request(6))
    want = await generate(ref, other)  # the whole checkpoint from RAM
    assert want.usage.cache_source == "ram"

    eng = LocalEngine.from_gguf(model_path, device="cpu", block_size=BS)
    first = await eng.checkpoint(request(3))
    info, fut = await in_flight(eng, request(6))
    assert first.tokens % BS and info.tokens - first.tokens > BS  # a stored partial block, then more
    got = await generate(eng, other)
    assert not fut.done()  # nothing waited for the save
    assert got.usage.cache_source == "ram" and got.usage.cached_tokens == info.tokens
    assert eng.turns[-1].snapshot == info.tokens - first.tokens  # the store gave the rest
    fut.set_result(None)  # stats() waits for the save in flight
    assert eng.stats()["turns"][-1]["snapshot"] == info.tokens - first.tokens
    assert got.token_ids == want.token_ids
    n = info.tokens
    assert np.array_equal(read_span(eng.sessions["h"].kv, 0, n), read_span(ref.sessions["h"].kv, 0, n))


async def test_restore_from_the_save_in_flight_alone_and_past_a_diverging_prompt(model_path):
    ref = LocalEngine.from_gguf(model_path, device="cpu", block_size=BS)
    await ref.checkpoint(request(4))
    want = await generate(ref, request(4, session="h"))

    eng = LocalEngine.from_gguf(model_path, device="cpu", block_size=BS)
    info, fut = await in_flight(eng, request(4))  # the store holds none of it
    got = await generate(eng, request(4, session="h"))
    assert got.usage.cache_source == "ram" and got.usage.cached_tokens == info.tokens
    assert eng.turns[-1].snapshot == info.tokens
    assert got.token_ids == want.token_ids
    # A prompt that shares only the system prompt takes only what it shares, never the
    # save's later positions (their tokens differ).
    diverged = request(4, session="k")
    diverged.messages[1] = UserMessage(content="a different first question entirely")
    shared = 0
    ids = eng._prompt(diverged, generation=True)[0]
    while ids[shared] == eng._behind_ids[shared]:
        shared += 1
    other = await generate(eng, diverged)
    assert 0 < shared < info.tokens
    assert other.usage.cached_tokens == eng.turns[-1].snapshot == shared
    plain = LocalEngine.from_gguf(model_path, device="cpu", block_size=BS)
    await generate(plain, diverged)
    n = other.usage.prompt_tokens - 1  # the KV the turn's prefill left: restored, then computed
    got_kv, want_kv = read_span(eng.sessions["k"].kv, 0, n), read_span(plain.sessions["k"].kv, 0, n)
    assert np.array_equal(got_kv[:, :, :shared], read_span(eng.sessions["g"].kv, 0, shared))
    assert np.allclose(got_kv, want_kv, rtol=1e-4, atol=1e-4)
    assert not fut.done()
    fut.set_result(None)


async def test_a_landed_save_is_read_from_the_store_not_the_pending_copy(model_path):
    eng = LocalEngine.from_gguf(model_path, device="cpu", block_size=BS)
    info, fut = await in_flight(eng, request(4))
    fut.set_result(None)  # landed (but not indexed here): the pending copy is no longer read
    got = await generate(eng, request(4, session="h"))
    assert eng.turns[-1].snapshot == 0 and got.usage.cached_tokens < info.tokens
