"""LocalEngine on the GPU: same answers as the NumPy engine; checkpoints restore through fp16 KV."""

import numpy as np
import pytest

from agentcore.engine.backends.cuda import cuda_available
from agentcore.engine.base import GenerationRequest
from agentcore.engine.local import LocalEngine
from agentcore.messages import SystemMessage, UserMessage
from agentcore.testing.synthetic import write_synthetic_gguf

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a GPU")]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_synthetic_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf", arch="llama", qtype="Q8_0",
                                context_length=4096)


def request(n_user=3, max_tokens=12):
    msgs = [SystemMessage(content="synthetic system prompt " * 20)]
    msgs += [UserMessage(content=f"question number {i} about the cache") for i in range(n_user)]
    return GenerationRequest(session_id="g", messages=msgs, max_tokens=max_tokens)


async def generate(engine, req):
    async for item in engine.stream(req):
        done = item
    return done


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_engine_matches_numpy_logits_and_greedy_text(model_path, anyio_backend):
    cpu = LocalEngine.from_gguf(model_path, device="cpu")
    gpu = LocalEngine.from_gguf(model_path, device="cuda")
    assert gpu.device == "cuda"
    ids = cpu._prompt(request(), generation=True)[0]
    a, b = cpu.logits(ids), gpu.logits(ids)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.99
    assert np.abs(a - b).max() / np.abs(a).max() < 2e-2
    # Greedy decode on the GPU (int8 activations in its GEMVs) picks, at every step, the
    # NumPy argmax of the same sequence up to 3% of the logit range (near-ties may flip).
    g = await generate(gpu, request())
    assert len(g.token_ids) >= 8
    ref = cpu.logits(ids + g.token_ids)
    gaps = [(ref[len(ids) - 1 + i].max() - ref[len(ids) - 1 + i][t]) / np.ptp(ref[len(ids) - 1 + i])
            for i, t in enumerate(g.token_ids)]  # fmt: skip
    print(f"greedy: {sum(x == 0 for x in gaps)}/{len(gaps)} argmax, worst gap {max(gaps):.4f} of the range")
    assert max(gaps) <= 3e-2


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_checkpoint_restores_in_a_new_engine(model_path, tmp_path, anyio_backend):
    first = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    await first.checkpoint(request(4))
    base = await generate(first, request(5))
    second = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    again = await generate(second, request(5))
    assert again.usage.cache_source == "disk"
    assert again.usage.cached_tokens / again.usage.prompt_tokens >= 0.9
    assert again.token_ids == base.token_ids


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_restore_of_many_disk_blocks_holds_the_checkpointed_bytes(model_path, tmp_path, anyio_backend):
    # Blocks of 16 tokens: the store reads the next disk block into the host buffer of the one
    # it just handed over (CudaKV.write_span must have finished copying from it). Every
    # restored byte equals the checkpointed one, position by position.
    first = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=16)
    info = await first.checkpoint(request(6))
    saved = first.sessions["g"].kv.read_span(0, info.tokens)
    first.close()
    second = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=16)
    again = await generate(second, request(6))
    assert again.usage.cache_source == "disk" and again.usage.cached_tokens // 16 >= 8  # many blocks
    n = min(again.usage.cached_tokens, info.tokens)
    assert np.array_equal(second.sessions["g"].kv.read_span(0, n), saved[:, :, :n])


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_ram_tier_is_pinned_and_restores_a_dropped_session(model_path, tmp_path, anyio_backend):
    import cupy as cp

    eng = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    info = await eng.checkpoint(request(4))
    assert info.store_ms > 0 and info.bytes_written > 0
    base = await generate(eng, request(5))
    entries = [e for e in eng.store.ram.values() if e.data is not None]
    assert entries
    for e in entries:  # page-locked: the copies to and from the GPU run at full bandwidth
        attrs = cp.cuda.runtime.pointerGetAttributes(e.data.ctypes.data)
        assert attrs.type == cp.cuda.runtime.memoryTypeHost
    eng.forget("g")
    again = await generate(eng, request(5))
    assert again.usage.cache_source == "ram"
    assert again.usage.cached_tokens / again.usage.prompt_tokens >= 0.9
    assert again.token_ids == base.token_ids
    eng.close()
    fresh = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64,
                                  kv_ram_mb=0)  # fmt: skip
    third = await generate(fresh, request(5))
    assert third.usage.cache_source == "disk" and third.token_ids == base.token_ids


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_checkpoint_saved_behind_is_the_kv_at_checkpoint_time(model_path, tmp_path, anyio_backend):
    # The checkpoint returns after a device snapshot; the session then diverges at once and
    # rewrites every position. What lands in the store must be the KV of the checkpoint.
    eng = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    ref = LocalEngine.from_gguf(model_path, device="cuda", block_size=64)
    await ref.checkpoint(request(4))
    want = await generate(ref, request(4))  # the same split: prefix from the KV, then the rest
    info = await eng.checkpoint(request(4))
    other = request(4)
    other.messages[0] = SystemMessage(content="a different system prompt " * 20)
    await generate(eng, other)  # same session id: truncates to the common prefix, rewrites the rest
    eng.close()
    fresh = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    got = await generate(fresh, request(4))
    assert got.usage.cache_source == "disk" and got.usage.cached_tokens >= info.tokens - 64
    assert got.token_ids == want.token_ids


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_save_behind_through_the_stages_holds_the_checkpointed_bytes(model_path, tmp_path, anyio_backend):
    # No pinned block free (the store holds them all in a long run): every block of the save
    # crosses PCIe into one of the two stages in turn and is moved on to pageable memory
    # while the next one is copied. Many 16-token blocks, so each stage is reused often:
    # the RAM tier and the disk must hold exactly the KV of the checkpoint.
    eng = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=16)
    eng._pinned = None
    info = await eng.checkpoint(request(6))
    saved = eng.sessions["g"].kv.read_span(0, info.tokens)
    eng.flush()
    entries = [e for e in eng.store.ram.values() if e.data is not None]
    assert len(entries) >= 8
    assert not any(e.data.ctypes.data == st.ctypes.data for e in entries for st in eng._stages)
    eng.forget("g")
    again = await generate(eng, request(6))
    assert again.usage.cache_source == "ram" and again.usage.cached_tokens // 16 >= 8
    n = min(again.usage.cached_tokens, info.tokens)
    assert np.array_equal(eng.sessions["g"].kv.read_span(0, n), saved[:, :, :n])
    eng.close()
    fresh = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=16, kv_ram_mb=0)
    disk = await generate(fresh, request(6))
    assert disk.usage.cache_source == "disk"
    n = min(disk.usage.cached_tokens, info.tokens)
    assert np.array_equal(fresh.sessions["g"].kv.read_span(0, n), saved[:, :, :n])


def _gate_saves(eng):
    """Hold every background ``store.save`` until the returned event is set (or 60 s pass)."""
    import threading

    gate, real, waited = threading.Event(), eng.store.save, []

    def save(*a, **k):
        waited.append(gate.wait(60))
        return real(*a, **k)

    eng.store.save = save
    return gate, waited


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_next_turn_does_not_wait_for_its_own_checkpoint_save(model_path, tmp_path, anyio_backend):
    # An agent checkpoints after a tool result, then generates from that same prompt: its live
    # KV holds all of it, so the turn must not wait for the checkpoint's copy to the host.
    # The save is held until the turn is done; had the turn waited, it would still be waiting.
    ref = LocalEngine.from_gguf(model_path, device="cuda", block_size=64)
    await ref.checkpoint(request(4))
    want = await generate(ref, request(4))
    eng = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    gate, waited = _gate_saves(eng)
    info = await eng.checkpoint(request(4))
    got = await generate(eng, request(4))
    assert not gate.is_set() and not eng._behind_last.done()  # the save is still held
    assert got.usage.cache_source == "live" and got.usage.cached_tokens == info.tokens
    assert got.token_ids == want.token_ids
    gate.set()
    eng.close()
    assert waited == [True]  # released by the test, not by the timeout
    fresh = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    again = await generate(fresh, request(4))  # the held save landed whole
    assert again.usage.cache_source == "disk" and again.usage.cached_tokens >= info.tokens - 64
    assert again.token_ids == want.token_ids


def _gate_copy(eng):
    """Hold the background save before its copy to the host (its KV is then only the device
    snapshot) until the returned event is set (or 60 s pass)."""
    import threading

    gate, real, waited = threading.Event(), eng._copy_behind, []

    def copy(*a, **k):
        waited.append(gate.wait(60))
        return real(*a, **k)

    eng._copy_behind = copy
    return gate, waited


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("held", ["device copy", "host copy"])
async def test_cuda_other_session_restores_from_the_save_in_flight_without_waiting(model_path, tmp_path,
                                                                                   anyio_backend, held):  # fmt: skip
    # A second session with the same prompt has no live KV and the store lacks it (the save
    # is held, before or after its copy to the host): it reads the save's device snapshot at
    # once, and answers with the tokens of a restore from RAM.
    other = request(4).model_copy(update={"session_id": "h"})
    ref = LocalEngine.from_gguf(model_path, device="cuda", block_size=64)
    await ref.checkpoint(request(4))
    ref.flush()
    want = await generate(ref, other)
    assert want.usage.cache_source == "ram"
    eng = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    gate, waited = (_gate_copy if held == "device copy" else _gate_saves)(eng)
    info = await eng.checkpoint(request(4))
    got = await generate(eng, other)
    assert not gate.is_set() and not eng._behind_last.done()  # still held: the turn did not wait
    assert got.usage.cache_source == "ram" and got.usage.cached_tokens == info.tokens
    assert eng.turns[-1].snapshot == info.tokens  # every token from the save in flight
    assert got.usage.cached_tokens == want.usage.cached_tokens
    assert got.token_ids == want.token_ids
    assert np.array_equal(eng.sessions["h"].kv.read_span(0, info.tokens), ref.sessions["h"].kv.read_span(0, info.tokens))
    gate.set()
    eng.close()
    assert waited == [True]  # released by the test, not by the timeout
    fresh = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    again = await generate(fresh, other)  # the held save landed whole
    assert again.usage.cache_source == "disk" and again.token_ids == want.token_ids


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_restore_joins_the_store_and_the_save_in_flight(model_path, tmp_path, anyio_backend):
    # The store holds the first checkpoint's blocks (and its partial last block); the second
    # checkpoint's new positions are only in the held save. Another session takes the first
    # from RAM and goes on, mid-block, from the save's snapshot.
    other = request(6).model_copy(update={"session_id": "h"})
    ref = LocalEngine.from_gguf(model_path, device="cuda", block_size=64)
    await ref.checkpoint(request(3))  # the same two prefills, so the same KV bytes
    await ref.checkpoint(request(6))
    ref.flush()
    want = await generate(ref, other)
    eng = LocalEngine.from_gguf(model_path, device="cuda", kv_dir=tmp_path, block_size=64)
    first = await eng.checkpoint(request(3))
    eng.flush()
    gate, waited = _gate_copy(eng)
    info = await eng.checkpoint(request(6))
    assert first.tokens % 64 and info.tokens - first.tokens > 64  # a partial block, then a whole one
    got = await generate(eng, other)
    assert not gate.is_set()
    assert got.usage.cache_source == "ram" and got.usage.cached_tokens == info.tokens
    assert eng.turns[-1].snapshot == info.tokens - first.tokens  # the rest from RAM
    assert got.token_ids == want.token_ids
    assert np.array_equal(eng.sessions["h"].kv.read_span(0, info.tokens), ref.sessions["h"].kv.read_span(0, info.tokens))
    gate.set()
    eng.close()
    assert waited == [True]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_constrained_tool_call_parses_like_the_cpu_one(model_path, anyio_backend):
    from agentcore.dsml import parse_completion
    from agentcore.messages import ToolSpec

    spec = ToolSpec(name="lookup", description="Look a key up.",
                    parameters={"type": "object", "properties": {"key": {"type": "string"}},
                                "required": ["key"]})  # fmt: skip
    req = request().model_copy(update={"tools": [spec], "tool_choice": "required", "max_tokens": 400})
    cpu = LocalEngine.from_gguf(model_path, device="cpu")
    gpu = LocalEngine.from_gguf(model_path, device="cuda")
    c, g = await generate(cpu, req), await generate(gpu, req)
    assert c.finish_reason == g.finish_reason == "tool_calls"
    calls = parse_completion(g.text, tools=[spec]).tool_calls
    assert [call.name for call in calls] == ["lookup"]
    # Forced spans and masked choices agree token for token until fp16 noise may flip a
    # free value token; the structure around the value is identical.
    assert g.token_ids[:6] == c.token_ids[:6]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_leaving_a_cuda_stream_early_leaves_the_engine_usable(model_path, anyio_backend):
    gpu = LocalEngine.from_gguf(model_path, device="cuda")
    async for _ in gpu.stream(request(max_tokens=64)):
        break
    done = await generate(gpu, request(max_tokens=4))
    assert done.usage.completion_tokens >= 1


def test_cuda_kv_dtypes_it_cannot_hold_are_clear_errors(model_path):
    with pytest.raises(ValueError, match="not supported on cuda"):
        LocalEngine.from_gguf(model_path, device="cuda", kv_dtype="float32")
    with pytest.raises(ValueError, match="needs head_dim in"):  # this file's head_dim is 16
        LocalEngine.from_gguf(model_path, device="cuda", kv_dtype="q8_0")


@pytest.fixture(scope="module")
def q8_model_path(tmp_path_factory):  # head_dim 64: a q8_0 KV row is two Q8_0 blocks
    return write_synthetic_gguf(tmp_path_factory.mktemp("q8") / "hd64.gguf", arch="llama", qtype="Q8_0",
                                n_embd=256, n_heads=4, n_kv_heads=2, n_ff=512, context_length=4096)  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cuda_q8_0_checkpoints_hold_half_the_bytes_and_restore_on_either_device(
    q8_model_path, tmp_path, anyio_backend
):
    first = LocalEngine.from_gguf(q8_model_path, device="cuda", kv_dir=tmp_path, block_size=64, kv_dtype="q8_0")
    f16 = LocalEngine.from_gguf(q8_model_path, device="cuda", block_size=64)
    assert first.layout.bytes_per_token() * 1.8 < f16.layout.bytes_per_token()  # 34 vs 64 bytes per 32
    info = await first.checkpoint(request(4))
    assert info.bytes_written == info.tokens * first.layout.bytes_per_token()
    base = await generate(first, request(5))
    first.close()
    second = LocalEngine.from_gguf(q8_model_path, device="cuda", kv_dir=tmp_path, block_size=64, kv_dtype="q8_0")
    again = await generate(second, request(5))
    assert again.usage.cache_source == "disk"
    assert again.usage.cached_tokens / again.usage.prompt_tokens >= 0.9
    assert again.token_ids == base.token_ids
    # The blocks are the CPU's Q8_0 layout under the same identity: a CPU engine on the
    # kv_dir restores them, and its KV holds the GPU's bytes.
    cpu = LocalEngine.from_gguf(q8_model_path, device="cpu", kv_dir=tmp_path, block_size=64, kv_dtype="q8_0")
    on_cpu = await generate(cpu, request(5))
    assert on_cpu.usage.cache_source == "disk" and on_cpu.usage.cached_tokens == again.usage.cached_tokens
    n = again.usage.cached_tokens
    gpu_bytes = second.sessions["g"].kv.read_span(0, n)
    assert np.array_equal(cpu.sessions["g"].kv.data[:, :, :n], gpu_bytes)
    # A float16 engine on the same kv_dir misses: the dtype is part of a block's identity.
    cold = await generate(LocalEngine.from_gguf(q8_model_path, device="cuda", kv_dir=tmp_path, block_size=64),
                          request(5))  # fmt: skip
    assert cold.usage.cached_tokens == 0
